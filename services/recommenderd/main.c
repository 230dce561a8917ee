/*
 * recommenderd - event tracking, features, recommendations and cross-sell (docs/recommender.md).
 *
 * main.c holds the daemon's configuration, its method tables, the event consumer's declaration
 * and start-up (the model file is loaded here when configured).
 */
#include <stdlib.h>
#include <string.h>

#include "hm/log.h"
#include "hm/migrate.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "marketing.h"
#include "rec.h"

extern const hm_migration_t recommenderd_migrations[];
extern const size_t recommenderd_nmigrations;

rec_config_t rec_cfg;
double rec_weights[REC_NW];

static const hm_cfg_var_t config_vars[] = {
    HM_CFG_VAR(rec_config_t, model_path, "HM_REC_MODEL", HM_CFG_STR, "", 0, 0, NULL, 0,
               "model file (tools/rectrain) loaded at start and by ReloadModel; empty: none"),
    HM_CFG_VAR(rec_config_t, weights, "HM_REC_WEIGHTS", HM_CFG_STR,
               "popularity=0.15,item_item=1,matrix_factorization=0.5,content=0.3,graph=0.3", 0, 0,
               NULL, 0, "hybrid blend weights by strategy (the model's when it has them)"),
    HM_CFG_VAR(rec_config_t, diversity, "HM_REC_DIVERSITY", HM_CFG_INT, "20", 0, 100, NULL, 0,
               "default MMR diversity trade-off in percent (0 = pure relevance)"),
    HM_CFG_VAR(rec_config_t, cache_ttl_ms, "HM_REC_CACHE_TTL", HM_CFG_DURATION, "60s", 0, 86400000,
               NULL, 0, "served lists cached per guest and request (0: off)"),
    HM_CFG_VAR(rec_config_t, consent_ttl_ms, "HM_REC_CONSENT_TTL", HM_CFG_DURATION, "30s", 1,
               3600000, NULL, 0, "privacyd's consent answers cached this long"),
    HM_CFG_VAR(rec_config_t, half_life_ms, "HM_REC_HALF_LIFE", HM_CFG_DURATION, "336h", 3600000,
               31536000000LL, NULL, 0, "half-life of popularity and affinity decay"),
    HM_CFG_VAR(rec_config_t, mkt_unsubscribe_key, "HM_MKT_UNSUBSCRIBE_KEY", HM_CFG_STR, "", 0, 0,
               NULL, HM_CFG_SECRET,
               "64 hex digits: HMAC key of unsubscribe links (empty: GenerateEmail refuses)"),
    HM_CFG_VAR(rec_config_t, mkt_site_url, "HM_MKT_SITE_URL", HM_CFG_STR,
               "https://hospitality.example", 0, 0, NULL, 0,
               "base URL of item and unsubscribe links in marketing email"),
    HM_CFG_VAR(rec_config_t, mkt_sender_name, "HM_MKT_SENDER_NAME", HM_CFG_STR, "Hospitality Mesh",
               0, 0, NULL, 0, "sender named in marketing email ({{hotel_name}})"),
    HM_CFG_VAR(rec_config_t, asset_dir, "HM_REC_ASSET_DIR", HM_CFG_STR, "", 0, 0, NULL, 0,
               "folder of the catalogue's image_file images (vision boards; empty: none)"),
};

/* "name=w,..." with strategy names as in the enum, lower case, without the prefix. */
static int parse_weights(const char *s)
{
    static const char *const names[REC_NW] = {
        "", "popularity", "item_item", "matrix_factorization", "content", "graph", "", ""};
    memset(rec_weights, 0, sizeof rec_weights);
    while (s && *s) {
        const char *eq = strchr(s, '='), *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        if (!eq || eq > end)
            return -1;
        int k = -1;
        for (int i = 1; i < 6; i++)
            if ((size_t)(eq - s) == strlen(names[i]) && strncmp(s, names[i], (size_t)(eq - s)) == 0)
                k = i;
        char *e;
        double w = strtod(eq + 1, &e);
        if (k < 0 || e != end || w < 0 || w > 100)
            return -1;
        rec_weights[k] = w;
        s = *end ? end + 1 : end;
    }
    return 0;
}

static int init(const hm_common_config_t *common, void **app)
{
    (void)common;
    (void)app;
    if (parse_weights(rec_cfg.weights) != 0) {
        HM_ERROR("HM_REC_WEIGHTS: expected name=weight pairs (popularity, item_item, "
                 "matrix_factorization, content, graph), got \"%s\"",
                 rec_cfg.weights);
        return HM_EINVAL;
    }
    if (rec_cfg.model_path && *rec_cfg.model_path) {
        char err[256];
        bool changed;
        if (rec_model_reload(rec_cfg.model_path, &changed, err, sizeof err) != 0)
            HM_WARN("model not loaded, serving without one: %s", err);
    }
    return mkt_init();
}

static void fini(void *app)
{
    (void)app;
    rec_history_shutdown();
    rec_model_shutdown();
    mkt_board_shutdown();
}

#define RC(rpc, snake, fn, ...)                                                                    \
    {                                                                                              \
        "/hospitality.recommender.v1.RecommenderService/" #rpc,                                    \
            &hospitality__recommender__v1__##snake##_request__descriptor,                          \
            &hospitality__recommender__v1__##snake##_response__descriptor, fn, __VA_ARGS__         \
    }
#define SELF                                                                                       \
    {                                                                                              \
        .roles = HM_ROLES_ANY, .self_field = "guest_id"                                            \
    }
#define ANY                                                                                        \
    {                                                                                              \
        .roles = HM_ROLES_ANY                                                                      \
    }
#define STAFF                                                                                      \
    {                                                                                              \
        .roles = HM_ROLE_STAFF                                                                     \
    }
#define ADMIN                                                                                      \
    {                                                                                              \
        .roles = HM_ROLE_ADMIN                                                                     \
    }

static const hm_method_t methods[] = {
    RC(TrackWatch, track_watch, rec_track_watch, SELF),
    RC(TrackSearch, track_search, rec_track_search, SELF),
    RC(TrackRating, track_rating, rec_track_rating, SELF),
    RC(TrackFavorite, track_favorite, rec_track_favorite, SELF),
    RC(TrackEvents, track_events, rec_track_events, STAFF),
    RC(IngestUserData, ingest_user_data, rec_ingest_user_data, STAFF),
    RC(UpsertItems, upsert_items, rec_upsert_items, STAFF),
    RC(GetItem, get_item, rec_get_item, ANY),
    RC(Recommend, recommend, rec_recommend, SELF),
    RC(RecommendSimilarItems, recommend_similar_items, rec_recommend_similar, ANY),
    RC(RecommendCrossSell, recommend_cross_sell, rec_recommend_cross_sell, SELF),
    RC(ListRecommendationHistory, list_recommendation_history, rec_list_history, SELF),
    RC(GetUserGraph, get_user_graph, rec_get_user_graph, STAFF),
    RC(UpsertOffer, upsert_offer, rec_upsert_offer, STAFF),
    RC(ListOffers, list_offers, rec_list_offers, STAFF),
    RC(GetFeatures, get_features, rec_get_features, SELF),
    RC(RefreshFeatures, refresh_features, rec_refresh_features, STAFF),
    RC(SubmitFeedback, submit_feedback, rec_submit_feedback, ANY),
    RC(GetModelInfo, get_model_info, rec_get_model_info, STAFF),
    RC(ReloadModel, reload_model, rec_reload_model, ADMIN),
};
static const hm_service_t service = {"hospitality.recommender.v1.RecommenderService", methods,
                                     sizeof methods / sizeof methods[0]};

static const hm_method_t subject_methods[] = {
    {"/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
     &hospitality__privacy__v1__export_subject_data_request__descriptor,
     &hospitality__privacy__v1__export_subject_data_response__descriptor,
     rec_export_subject,
     {.roles = HM_ROLE_SERVICE}},
    {"/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
     &hospitality__privacy__v1__erase_subject_data_request__descriptor,
     &hospitality__privacy__v1__erase_subject_data_response__descriptor,
     rec_erase_subject,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t subject_service = {"hospitality.privacy.v1.DataSubjectService",
                                             subject_methods, 2};
#define MK(rpc, snake, fn, ...)                                                                    \
    {                                                                                              \
        "/hospitality.marketing.v1.MarketingService/" #rpc,                                        \
            &hospitality__marketing__v1__##snake##_request__descriptor,                            \
            &hospitality__marketing__v1__##snake##_response__descriptor, fn, __VA_ARGS__           \
    }
static const hm_method_t marketing_methods[] = {
    MK(GenerateEmail, generate_email, mkt_generate_email, SELF),
    MK(UpsertEmailTemplate, upsert_email_template, mkt_upsert_email_template, STAFF),
    MK(ListEmailTemplates, list_email_templates, mkt_list_email_templates, STAFF),
    MK(GetVisionBoard, get_vision_board, mkt_get_vision_board, SELF),
    /* the token is the credential (a link in an email) */
    MK(Unsubscribe, unsubscribe, mkt_unsubscribe, {.open = true}),
};
static const hm_service_t marketing_service = {
    "hospitality.marketing.v1.MarketingService", marketing_methods,
    sizeof marketing_methods / sizeof marketing_methods[0]};
static const hm_service_t *const services[] = {&service, &subject_service, &marketing_service};

static const char *const streams[] = {"hm:events:booking", "hm:events:order",
                                      "hm:events:marketplace", "hm:events:guest"};
static const char *const types[] = {"booking.confirmed",
                                    "booking.completed",
                                    "order.created",
                                    "marketplace.purchase.completed",
                                    "guest.interaction.recorded",
                                    "guest.consent.updated",
                                    "guest.preferences.updated"};
static const hm_daemon_consumer_t consumer = {streams,
                                              sizeof streams / sizeof streams[0],
                                              types,
                                              sizeof types / sizeof types[0],
                                              rec_handle_event,
                                              true};

static const hm_task_t tasks[] = {{"history-flush", 50, rec_task_flush}};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "recommenderd",
        .description = "event tracking, features, recommendations and cross-sell",
        .default_grpc_addr = "0.0.0.0:50053",
        .default_admin_addr = "0.0.0.0:9103",
        .services = services,
        .nservices = sizeof services / sizeof services[0],
        .config_vars = config_vars,
        .nconfig_vars = sizeof config_vars / sizeof config_vars[0],
        .config = &rec_cfg,
        .migrations = recommenderd_migrations,
        .nmigrations = recommenderd_nmigrations,
        .init = init,
        .fini = fini,
        .consumer = &consumer,
        .tasks = tasks,
        .ntasks = 1,
        .data_subject = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
