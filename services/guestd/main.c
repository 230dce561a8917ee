/*
 * guestd - guest profiles, identity, preferences, interactions and personalization context.
 *
 * main.c holds the daemon's method tables, its consumer and tasks, and start-up. Handlers live
 * in one .c per group of RPCs (profile.c, identity.c, apps.c, prefs.c, interactions.c,
 * context.c, subject.c, ingest.c); SQL for profiles in store.c, the rest next to its handlers
 * and in the migrations' SQL functions.
 */
#include <stdlib.h>

#include "guestd.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

extern const hm_migration_t guestd_migrations[];
extern const size_t guestd_nmigrations;

#define GUEST_METHOD(rpc, snake, fn, ...)                                                          \
    {                                                                                              \
        "/hospitality.guest.v1.GuestService/" #rpc,                                                \
            &hospitality__guest__v1__##snake##_request__descriptor,                                \
            &hospitality__guest__v1__##snake##_response__descriptor, fn, __VA_ARGS__               \
    }

/* Guests act on themselves; staff, admin and services on anyone. */
#define SELF                                                                                       \
    {                                                                                              \
        .roles = HM_ROLES_ANY, .self_field = "guest_id"                                            \
    }
#define ANY                                                                                        \
    {                                                                                              \
        .roles = HM_ROLES_ANY                                                                      \
    }
/* Identity resolution and merges decide who is who: services (sign-up flows, the gateway's
 * back end) and staff, never a guest token. */
#define TRUSTED                                                                                    \
    {                                                                                              \
        .roles = HM_ROLE_STAFF | HM_ROLE_SERVICE                                                   \
    }

static const hm_method_t guest_methods[] = {
    GUEST_METHOD(CreateGuest, create_guest, guest_create_guest, ANY),
    GUEST_METHOD(GetMyProfile, get_my_profile, guest_get_my_profile, ANY),
    GUEST_METHOD(GetProfile, get_profile, guest_get_profile, SELF),
    GUEST_METHOD(UpdateProfile, update_profile, guest_update_profile, SELF),
    GUEST_METHOD(ListProfileHistory, list_profile_history, guest_list_profile_history, SELF),
    GUEST_METHOD(ResolveIdentity, resolve_identity, guest_resolve_identity, TRUSTED),
    GUEST_METHOD(LinkIdentity, link_identity, guest_link_identity, SELF),
    GUEST_METHOD(MergeGuests, merge_guests, guest_merge_guests, TRUSTED),
    GUEST_METHOD(ExplainIdentity, explain_identity, guest_explain_identity, TRUSTED),
    GUEST_METHOD(GetAppProfile, get_app_profile, guest_get_app_profile, SELF),
    GUEST_METHOD(UpdateAppProfile, update_app_profile, guest_update_app_profile, SELF),
    GUEST_METHOD(SyncAppProfiles, sync_app_profiles, guest_sync_app_profiles, SELF),
    GUEST_METHOD(GetPreferences, get_preferences, guest_get_preferences, SELF),
    GUEST_METHOD(UpdatePreferences, update_preferences, guest_update_preferences, SELF),
    GUEST_METHOD(ListPreferenceHistory, list_preference_history, guest_list_preference_history,
                 SELF),
    GUEST_METHOD(RecordInteraction, record_interaction, guest_record_interaction, SELF),
    GUEST_METHOD(RecordInteractions, record_interactions, guest_record_interactions, SELF),
    GUEST_METHOD(ListInteractions, list_interactions, guest_list_interactions, SELF),
    GUEST_METHOD(GetSegments, get_segments, guest_get_segments, SELF),
    GUEST_METHOD(GetBehaviorSignals, get_behavior_signals, guest_get_behavior_signals, SELF),
    GUEST_METHOD(GetPersonalizationContext, get_personalization_context,
                 guest_get_personalization_context, SELF),
};

static const hm_service_t guest_service = {"hospitality.guest.v1.GuestService", guest_methods,
                                           sizeof(guest_methods) / sizeof(guest_methods[0])};
/* Events from producers outside the mesh: service callers only (admin is always allowed). */
static const hm_method_t ingest_methods[] = {
    {"/hospitality.guest.v1.EventIngestService/PublishEvents",
     &hospitality__guest__v1__publish_events_request__descriptor,
     &hospitality__guest__v1__publish_events_response__descriptor,
     guest_publish_events,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t ingest_service = {"hospitality.guest.v1.EventIngestService",
                                            ingest_methods, 1};
/* privacyd's data-subject interface: service callers only. */
static const hm_method_t subject_methods[] = {
    {"/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
     &hospitality__privacy__v1__export_subject_data_request__descriptor,
     &hospitality__privacy__v1__export_subject_data_response__descriptor,
     guest_export_subject,
     {.roles = HM_ROLE_SERVICE}},
    {"/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
     &hospitality__privacy__v1__erase_subject_data_request__descriptor,
     &hospitality__privacy__v1__erase_subject_data_response__descriptor,
     guest_erase_subject,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t subject_service = {"hospitality.privacy.v1.DataSubjectService",
                                             subject_methods, 2};

static const hm_service_t *const services[] = {&guest_service, &ingest_service, &subject_service};

/* Events that become interactions, consent as privacyd publishes it, app accounts. */
static const char *const streams[] = {
    "hm:events:booking",        "hm:events:feedback",    "hm:events:marketing",
    "hm:events:order",          "hm:events:marketplace", "hm:events:notification",
    "hm:events:recommendation", "hm:events:guest",       "hm:events:user",
};
static const char *const types[] = {
    "booking.created",
    "booking.cancelled",
    "booking.completed",
    "feedback.review.submitted",
    "feedback.rating.submitted",
    "marketing.campaign.clicked",
    "marketing.email.opened",
    "marketing.promotion.used",
    "order.created",
    "order.items.selected",
    "marketplace.purchase.completed",
    "marketplace.listing.created",
    "notification.read",
    "recommendation.clicked",
    "guest.consent.updated",
    "user.created",
    "user.updated",
    "user.deleted",
};
static const hm_daemon_consumer_t consumer = {streams,
                                              sizeof streams / sizeof *streams,
                                              types,
                                              sizeof types / sizeof *types,
                                              guest_handle_event,
                                              true};

static const hm_task_t tasks[] = {
    {"app_sync", 2000, guest_task_app_sync},
    {"segments", 60000, guest_task_segments},
    {"retention", 3600000, guest_task_retention},
};

static gd_app_t the_app;

static int init(const hm_common_config_t *common, void **app)
{
    char err[256];
    the_app.crypto = hm_crypto_create(common->pii_keys, common->pii_index_key, err, sizeof err);
    if (!the_app.crypto) {
        HM_ERROR("guestd: %s", err);
        return HM_EINVAL;
    }
    *app = &the_app;
    return 0;
}

static void fini(void *app)
{
    gd_app_t *g = app;
    hm_crypto_destroy(g->crypto);
    g->crypto = NULL;
}

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "guestd",
        .description = "guest profiles, identity, preferences, interactions and personalization "
                       "context",
        .default_grpc_addr = "0.0.0.0:50051",
        .default_admin_addr = "0.0.0.0:9101",
        .services = services,
        .nservices = sizeof services / sizeof *services,
        .migrations = guestd_migrations,
        .nmigrations = guestd_nmigrations,
        .needs_crypto = true,
        .init = init,
        .fini = fini,
        .consumer = &consumer,
        .tasks = tasks,
        .ntasks = sizeof tasks / sizeof *tasks,
        .data_subject = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
