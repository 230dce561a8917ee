/*
 * offers.c - cross-sell (rules between apps, offers with discount, priority and validity),
 * offers and their conversion statistics, recommendation history, the user graph and
 * feedback.
 *
 * Cross-sell rules (seed 003) are fixed: web -> marketplace, web -> booking, marketplace ->
 * gamification, booking -> marketplace. A rule's candidates are the items of its target app:
 * COMPLEMENTS of the context item first, then (with personalization consent) the guest's
 * category affinities, then popularity. The best active, valid offer of the rule's apps that
 * covers the item (by id or category) is attached. Conversion statistics per offer and rule
 * come from feedback (impressions, clicks, conversions).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/auth.h"
#include "hospitality/events/v1/recommender_events.pb-c.h"
#include "recommend.h"

#define APP(x)     HOSPITALITY__COMMON__V1__APP__APP_##x
#define S(x)       HOSPITALITY__COMMON__V1__RECOMMENDATION_STRATEGY__RECOMMENDATION_STRATEGY_##x
#define TS_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

typedef struct rule {
    const char *id;
    int source, target;
} rule_t;

static const rule_t rules[] = {
    {"web-to-marketplace", APP(WEB), APP(MARKETPLACE)},
    {"web-to-booking", APP(WEB), APP(BOOKING)},
    {"marketplace-to-gamification", APP(MARKETPLACE), APP(GAMIFICATION)},
    {"booking-to-marketplace", APP(BOOKING), APP(MARKETPLACE)},
};

static const hm_stmt_t st_xs_cands = {
    "rc_xs_cands",
    "SELECT i.item_id, coalesce(r.weight, 0) * 3 + coalesce(af.s, 0) + 0.5 * "
    "coalesce(exp(p.ln_score - "
    "max(p.ln_score) OVER ()), 0), i.category, i.name, coalesce(r.weight, 0) > 0, coalesce(af.s, "
    "0) > 0 FROM rc_items i LEFT JOIN rc_item_relations r ON r.item_id = $2 AND r.related_id = "
    "i.item_id AND r.type = 1 LEFT JOIN rc_popularity p ON p.item_id = i.item_id LEFT JOIN "
    "(SELECT substr(key, 10) cat, max(score) s FROM rc_affinity WHERE guest_id = $3::uuid AND "
    "key LIKE 'category:%' GROUP BY 1) af ON af.cat = i.category WHERE i.app = $1::smallint AND "
    "NOT i.hidden AND i.item_id <> $2 ORDER BY 2 DESC, 1 LIMIT $4::int",
    4};
static const hm_stmt_t st_xs_offers = {
    "rc_xs_offers",
    "SELECT offer_id::text, item_ids, categories, offer, version, " TS_US("created_at") ", " TS_US(
        "updated_at") " FROM rc_offers WHERE active AND source_app = $1::smallint AND target_app "
                      "= $2::smallint AND (valid_from IS NULL OR valid_from <= now()) AND "
                      "(valid_until IS NULL OR valid_until > now()) ORDER BY priority DESC, "
                      "created_at",
    2};

static Hospitality__Recommender__V1__Offer *offer_from_row(hm_arena_t *a, PGresult *r, int i)
{
    unsigned char *blob;
    size_t len;
    if (hm_db_get_bytea(r, i, 3, a, &blob, &len) != 0)
        return NULL;
    Hospitality__Recommender__V1__Offer *o = (void *)protobuf_c_message_unpack(
        &hospitality__recommender__v1__offer__descriptor, hm_arena_pb(a), len, blob);
    if (!o)
        return NULL;
    o->offer_id = hm_arena_strdup(a, rec_str(r, i, 0));
    o->version = rec_i64(r, i, 4);
    o->created_at = hm_timestamp_from_us(a, rec_i64(r, i, 5));
    o->updated_at = hm_timestamp_from_us(a, rec_i64(r, i, 6));
    return o;
}

REC_HANDLER(rec_recommend_cross_sell)
{
    const Hospitality__Recommender__V1__RecommendCrossSellRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if ((int)req->source_app <= 0 || (int)req->source_app > APP(GAMIFICATION))
        return hm_call_invalid(call, "source_app", "the app the guest is using is required");
    if ((int)req->target_app < 0 || (int)req->target_app > APP(GAMIFICATION))
        return hm_call_invalid(call, "target_app", "unknown app");
    if (req->context_item_id[0] && !rec_valid_item_id(req->context_item_id))
        return hm_call_invalid(call, "context_item_id", "bad item id");
    if (req->limit < 0 || req->limit > 50)
        return hm_call_invalid(call, "limit", "limit must be within 0..50");
    int limit = req->limit ? req->limit : 5;
    bool personal = rec_consent(call, req->guest_id) == 1;
    const char *ctx_name = req->context_item_id;
    if (req->context_item_id[0]) {
        cands_t one;
        cands_init(&one, a, 2);
        cands_get(&one, req->context_item_id);
        if (load_meta(call, &one, NULL, 0, NULL) == 0 && one.v[0].known && one.v[0].name[0])
            ctx_name = one.v[0].name;
    }
    Hospitality__Recommender__V1__RecommendCrossSellResponse *resp =
        hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__recommend_cross_sell_response__init(resp);
    resp->suggestions = hm_arena_alloc(a, ((size_t)limit * 4 + 1) * sizeof(void *));
    Hospitality__Recommender__V1__RecommendedItem **items =
        hm_arena_alloc(a, ((size_t)limit * 4 + 1) * sizeof *items);
    char **pairs = hm_arena_alloc(a, ((size_t)limit * 4 + 1) * sizeof *pairs);
    history_t hist = {0};
    if (personal && load_history(call, req->guest_id, &hist) != 0)
        personal = false;
    filter_t f = {.history = personal ? &hist : NULL};
    const char *rule_used = "";
    Hospitality__Events__V1__RecommendationCrossSellSuggested ev =
        HOSPITALITY__EVENTS__V1__RECOMMENDATION_CROSS_SELL_SUGGESTED__INIT;
    ev.offer_ids = hm_arena_alloc(a, ((size_t)limit * 4 + 1) * sizeof(char *));
    ev.item_ids = hm_arena_alloc(a, ((size_t)limit * 4 + 1) * sizeof(char *));
    for (size_t ri = 0; ri < sizeof rules / sizeof rules[0]; ri++) {
        const rule_t *ru = &rules[ri];
        if (ru->source != (int)req->source_app ||
            (req->target_app && ru->target != (int)req->target_app))
            continue;
        const char *p[4] = {rec_p64(a, ru->target), req->context_item_id,
                            personal ? req->guest_id : NULL, rec_p64(a, limit * 4)};
        PGresult *r, *o;
        int rc = hm_db_exec_arena(call->db, a, &st_xs_cands, p, NULL, NULL, &r);
        const char *op[2] = {rec_p64(a, ru->source), rec_p64(a, ru->target)};
        if (rc == 0)
            rc = hm_db_exec_arena(call->db, a, &st_xs_offers, op, NULL, NULL, &o);
        if (rc != 0)
            return hm_call_fail(call, rc, "cross-sell candidates");
        int taken = 0;
        for (int i = 0; i < PQntuples(r) && taken < limit; i++) {
            const char *id = rec_str(r, i, 0), *cat = rec_str(r, i, 2);
            bool skip = false;
            for (size_t x = 0; personal && x < hist.n; x++)
                skip = skip || (hist.items[x].consumed && strcmp(hist.items[x].id, id) == 0);
            for (size_t x = 0; personal && x < hist.ndismissed; x++)
                skip = skip || strcmp(hist.dismissed[x], id) == 0;
            if (skip)
                continue;
            (void)f;
            Hospitality__Recommender__V1__CrossSellSuggestion *sg = hm_arena_alloc(a, sizeof *sg);
            hospitality__recommender__v1__cross_sell_suggestion__init(sg);
            Hospitality__Recommender__V1__RecommendedItem *it = hm_arena_alloc(a, sizeof *it);
            hospitality__recommender__v1__recommended_item__init(it);
            it->item_id = hm_arena_strdup(a, id);
            it->score = rec_f64(r, i, 1);
            it->category = hm_arena_strdup(a, cat);
            it->strategy = S(CROSS_SELL);
            it->reason = strcmp(rec_str(r, i, 4), "t") == 0
                             ? hm_arena_printf(a, "goes well with %s", ctx_name)
                         : strcmp(rec_str(r, i, 5), "t") == 0
                             ? hm_arena_printf(a, "matches your interest in %s", cat)
                             : hm_arena_printf(a, "popular in %s", cat[0] ? cat : "this app");
            it->position = (int32_t)resp->n_suggestions;
            sg->item = it;
            sg->target_app = ru->target;
            sg->rule_id = (char *)ru->id;
            for (int k = 0; k < PQntuples(o) && !sg->offer; k++) {
                size_t ni, nc;
                char **ids = rec_parse_array(a, rec_str(o, k, 1), &ni);
                char **cats = rec_parse_array(a, rec_str(o, k, 2), &nc);
                bool match = ni == 0 && nc == 0;
                for (size_t x = 0; x < ni; x++)
                    match = match || strcmp(ids[x], id) == 0;
                for (size_t x = 0; x < nc; x++)
                    match = match || strcmp(cats[x], cat) == 0;
                if (match)
                    sg->offer = offer_from_row(a, o, k);
            }
            if (sg->offer)
                ev.offer_ids[ev.n_offer_ids++] = sg->offer->offer_id;
            ev.item_ids[ev.n_item_ids++] = it->item_id;
            pairs[resp->n_suggestions] = hm_arena_printf(a, "%s=%s", id, ru->id);
            items[resp->n_suggestions] = it;
            resp->suggestions[resp->n_suggestions++] = sg;
            rule_used = ru->id;
            taken++;
        }
    }
    resp->personalized = personal;
    resp->recommendation_id = new_id(a);
    ev.recommendation_id = resp->recommendation_id;
    ev.guest_id = req->guest_id;
    ev.source_app = req->source_app;
    ev.target_app = req->target_app;
    ev.rule_id = (char *)rule_used;
    int rc =
        save_list(call, resp->recommendation_id, req->guest_id,
                  HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_CROSS_SELL,
                  S(CROSS_SELL), "", personal, req->source_app, items, resp->n_suggestions,
                  rec_text_array(a, pairs, resp->n_suggestions),
                  "recommendation.cross_sell.suggested", &ev.base);
    if (rc != 0)
        return hm_call_fail(call, rc, "record cross-sell");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- offers ---- */

static const hm_stmt_t st_offer_get = {
    "rc_offer_get", "SELECT version FROM rc_offers WHERE offer_id = $1::uuid FOR UPDATE", 1};
static const hm_stmt_t st_offer_put = {
    "rc_offer_put",
    "INSERT INTO rc_offers AS o (offer_id, source_app, target_app, priority, active, valid_from, "
    "valid_until, item_ids, categories, offer) VALUES ($1::uuid, $2::smallint, $3::smallint, "
    "$4::int, $5::boolean, to_timestamp($6::bigint / 1e6), to_timestamp($7::bigint / 1e6), "
    "$8::text[], $9::text[], $10) ON CONFLICT (offer_id) DO UPDATE SET source_app = "
    "excluded.source_app, target_app = excluded.target_app, priority = excluded.priority, active "
    "= excluded.active, valid_from = excluded.valid_from, valid_until = excluded.valid_until, "
    "item_ids = excluded.item_ids, categories = excluded.categories, offer = excluded.offer, "
    "version = o.version + 1, updated_at = now()",
    10};
#define OFFER_SELECT                                                                               \
    "SELECT o.offer_id::text, o.item_ids, o.categories, o.offer, o.version, " TS_US(               \
        "o.created_at") ", " TS_US("o.updated_at") ", count(f.*) FILTER (WHERE f.type = 1), "      \
                                                   "count(f.*) FILTER (WHERE f.type = 2), "        \
                                                   "count(f.*) FILTER (WHERE f.type = 4) FROM "    \
                                                   "rc_offers o LEFT JOIN rc_feedback f ON "       \
                                                   "f.offer_id = o.offer_id::text "
static const hm_stmt_t st_offer_load = {
    "rc_offer_load", OFFER_SELECT "WHERE o.offer_id = $1::uuid GROUP BY o.offer_id", 1};
static const hm_stmt_t st_offer_list = {
    "rc_offer_list",
    OFFER_SELECT "WHERE ($1::smallint = 0 OR o.source_app = $1::smallint) AND ($2::smallint = 0 "
                 "OR o.target_app = $2::smallint) AND ($3::boolean OR (o.active AND "
                 "(o.valid_from IS NULL OR o.valid_from <= now()) AND (o.valid_until IS NULL OR "
                 "o.valid_until > now()))) GROUP BY o.offer_id ORDER BY o.priority DESC, "
                 "o.created_at, o.offer_id LIMIT $4::int OFFSET $5::int",
    5};

static Hospitality__Recommender__V1__Offer *offer_with_stats(hm_arena_t *a, PGresult *r, int i)
{
    Hospitality__Recommender__V1__Offer *o = offer_from_row(a, r, i);
    if (!o)
        return NULL;
    o->stats = hm_arena_alloc(a, sizeof *o->stats);
    hospitality__recommender__v1__conversion_stats__init(o->stats);
    o->stats->impressions = rec_i64(r, i, 7);
    o->stats->clicks = rec_i64(r, i, 8);
    o->stats->conversions = rec_i64(r, i, 9);
    if (o->stats->impressions)
        o->stats->conversion_rate = (double)o->stats->conversions / (double)o->stats->impressions;
    return o;
}

typedef struct offer_tx {
    hm_call_t *call;
    Hospitality__Recommender__V1__Offer *o;
    int64_t expected;
    bool conflict;
} offer_tx_t;

static int offer_fn(hm_db_t *db, void *arg)
{
    offer_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    Hospitality__Recommender__V1__Offer *o = t->o;
    const char *gp[1] = {o->offer_id};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_offer_get, gp, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    t->conflict = false;
    if (t->expected && (PQntuples(r) == 0 || rec_i64(r, 0, 0) != t->expected)) {
        t->conflict = true;
        return HM_ECONFLICT;
    }
    /* the stored blob carries only the input fields */
    Hospitality__Recommender__V1__Offer copy = *o;
    copy.stats = NULL;
    copy.version = 0;
    copy.created_at = copy.updated_at = NULL;
    size_t n = protobuf_c_message_get_packed_size(&copy.base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&copy.base, buf);
    const char *p[10] = {o->offer_id,
                         rec_p64(a, o->source_app),
                         rec_p64(a, o->target_app),
                         rec_p64(a, o->priority),
                         hm_db_param_bool(o->active),
                         o->valid_from ? rec_p64(a, hm_timestamp_to_us(o->valid_from)) : NULL,
                         o->valid_until ? rec_p64(a, hm_timestamp_to_us(o->valid_until)) : NULL,
                         rec_text_array(a, o->item_ids, o->n_item_ids),
                         rec_text_array(a, o->categories, o->n_categories),
                         (const char *)buf};
    int lens[10] = {0}, fmts[10] = {0};
    lens[9] = (int)n;
    fmts[9] = 1;
    return hm_db_exec(db, &st_offer_put, p, lens, fmts, NULL);
}

REC_HANDLER(rec_upsert_offer)
{
    const Hospitality__Recommender__V1__UpsertOfferRequest *req = (const void *)in;
    Hospitality__Recommender__V1__Offer *o = req->offer;
    hm_arena_t *a = &call->arena;
    if (!o)
        return hm_call_invalid(call, "offer", "the offer is required");
    if (o->offer_id[0] && !hm_uuid_valid(o->offer_id))
        return hm_call_invalid(call, "offer.offer_id", "offer_id must be a UUID or empty");
    if (!o->title[0] || strlen(o->title) > 200 || !hm_utf8_valid(o->title))
        return hm_call_invalid(call, "offer.title", "title required (<= 200 bytes)");
    if (strlen(o->description) > 2000 || !hm_utf8_valid(o->description))
        return hm_call_invalid(call, "offer.description", "at most 2000 bytes of UTF-8");
    if ((int)o->source_app <= 0 || (int)o->source_app > APP(GAMIFICATION) ||
        (int)o->target_app <= 0 || (int)o->target_app > APP(GAMIFICATION) ||
        o->source_app == o->target_app)
        return hm_call_invalid(call, "offer.target_app", "two different apps are required");
    const Hospitality__Recommender__V1__Discount *d = o->discount;
    if (!d || d->kind_case == HOSPITALITY__RECOMMENDER__V1__DISCOUNT__KIND__NOT_SET ||
        (d->kind_case == HOSPITALITY__RECOMMENDER__V1__DISCOUNT__KIND_PERCENT_OFF_BPS &&
         (d->percent_off_bps <= 0 || d->percent_off_bps > 10000)) ||
        (d->kind_case == HOSPITALITY__RECOMMENDER__V1__DISCOUNT__KIND_AMOUNT_OFF &&
         (!d->amount_off || d->amount_off->amount_minor <= 0 ||
          strlen(d->amount_off->currency) != 3)) ||
        (d->kind_case == HOSPITALITY__RECOMMENDER__V1__DISCOUNT__KIND_BONUS_POINTS &&
         d->bonus_points <= 0))
        return hm_call_invalid(call, "offer.discount",
                               "a discount: 1..10000 bps, a positive amount or bonus points");
    if (o->valid_from && o->valid_until &&
        hm_timestamp_to_us(o->valid_from) >= hm_timestamp_to_us(o->valid_until))
        return hm_call_invalid(call, "offer.valid_until", "valid_until must follow valid_from");
    if (o->n_item_ids > 500 || o->n_categories > 100)
        return hm_call_invalid(call, "offer.item_ids", "at most 500 items and 100 categories");
    for (size_t i = 0; i < o->n_item_ids; i++)
        if (!rec_valid_item_id(o->item_ids[i]))
            return hm_call_invalid(call, "offer.item_ids", "bad item id at %zu", i);
    for (size_t i = 0; i < o->n_categories; i++)
        if (!o->categories[i][0] || strlen(o->categories[i]) > 64)
            return hm_call_invalid(call, "offer.categories", "bad category at %zu", i);
    if (!o->offer_id[0]) {
        if (req->expected_version)
            return hm_call_invalid(call, "expected_version", "a new offer has no version");
        o->offer_id = new_id(a);
    }
    offer_tx_t t = {call, o, req->expected_version, false};
    int rc = hm_db_tx(call->db, offer_fn, &t, HM_DB_READ_COMMITTED);
    if (t.conflict)
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                             "offer %s is not at version %lld", o->offer_id,
                             (long long)req->expected_version);
    if (rc != 0)
        return hm_call_fail(call, rc, "upsert offer");
    const char *p[1] = {o->offer_id};
    PGresult *r;
    if ((rc = hm_db_exec_arena(call->db, a, &st_offer_load, p, NULL, NULL, &r)) != 0)
        return hm_call_fail(call, rc, "load offer");
    Hospitality__Recommender__V1__UpsertOfferResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__upsert_offer_response__init(resp);
    resp->offer = offer_with_stats(a, r, 0);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* Page size and offset from a PageRequest (token: the decimal offset). */
static int paging(hm_call_t *call, const Hospitality__Common__V1__PageRequest *pg, int *size,
                  int *offset)
{
    *size = pg && pg->page_size ? pg->page_size : 20;
    *offset = 0;
    if (*size < 0 || *size > 100)
        return -1;
    if (pg && pg->page_token && pg->page_token[0]) {
        char *e;
        long v = strtol(pg->page_token, &e, 10);
        if (*e || v < 0 || v > 1000000)
            return -2;
        *offset = (int)v;
    }
    (void)call;
    return 0;
}

static Hospitality__Common__V1__PageResponse *page_resp(hm_arena_t *a, int n, int size, int offset)
{
    Hospitality__Common__V1__PageResponse *p = hm_arena_alloc(a, sizeof *p);
    hospitality__common__v1__page_response__init(p);
    p->next_page_token = n > size ? hm_arena_printf(a, "%d", offset + size) : "";
    return p;
}

REC_HANDLER(rec_list_offers)
{
    const Hospitality__Recommender__V1__ListOffersRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    int size, offset, prc = paging(call, req->page, &size, &offset);
    if (prc != 0)
        return hm_call_invalid(call, prc == -1 ? "page.page_size" : "page.page_token",
                               "page size 0..100 and a token from a previous page");
    const char *p[5] = {rec_p64(a, req->source_app), rec_p64(a, req->target_app),
                        hm_db_param_bool(req->include_inactive), rec_p64(a, size + 1),
                        rec_p64(a, offset)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_offer_list, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list offers");
    Hospitality__Recommender__V1__ListOffersResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__list_offers_response__init(resp);
    int n = PQntuples(r);
    resp->offers = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(void *));
    for (int i = 0; i < n && i < size; i++) {
        Hospitality__Recommender__V1__Offer *o = offer_with_stats(a, r, i);
        if (o)
            resp->offers[resp->n_offers++] = o;
    }
    resp->page = page_resp(a, n, size, offset);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- history ---- */

static const hm_stmt_t st_hist_list = {
    "rc_hist_list",
    "SELECT record FROM rc_recommendations WHERE guest_id = $1::uuid AND ($2::smallint = 0 OR "
    "kind = $2::smallint) AND ($3::bigint IS NULL OR served_at >= to_timestamp($3::bigint / "
    "1e6)) AND ($4::bigint IS NULL OR served_at < to_timestamp($4::bigint / 1e6)) ORDER BY "
    "served_at DESC, recommendation_id DESC LIMIT $5::int OFFSET $6::int",
    6};

REC_HANDLER(rec_list_history)
{
    const Hospitality__Recommender__V1__ListRecommendationHistoryRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if ((int)req->kind < 0 || (int)req->kind > 3)
        return hm_call_invalid(call, "kind", "unknown kind");
    int size, offset, prc = paging(call, req->page, &size, &offset);
    if (prc != 0)
        return hm_call_invalid(call, prc == -1 ? "page.page_size" : "page.page_token",
                               "page size 0..100 and a token from a previous page");
    rec_history_flush(call, call->db, a, true); /* lists still queued are history too */
    const Hospitality__Common__V1__TimeRange *tr = req->time_range;
    const char *p[6] = {req->guest_id,
                        rec_p64(a, req->kind),
                        tr && tr->start_time ? rec_p64(a, hm_timestamp_to_us(tr->start_time))
                                             : NULL,
                        tr && tr->end_time ? rec_p64(a, hm_timestamp_to_us(tr->end_time)) : NULL,
                        rec_p64(a, size + 1),
                        rec_p64(a, offset)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_hist_list, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list history");
    Hospitality__Recommender__V1__ListRecommendationHistoryResponse *resp =
        hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__list_recommendation_history_response__init(resp);
    int n = PQntuples(r);
    resp->records = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(void *));
    for (int i = 0; i < n && i < size; i++) {
        unsigned char *blob;
        size_t len;
        if (hm_db_get_bytea(r, i, 0, a, &blob, &len) != 0)
            continue;
        void *m = protobuf_c_message_unpack(
            &hospitality__recommender__v1__recommendation_record__descriptor, hm_arena_pb(a), len,
            blob);
        if (m)
            resp->records[resp->n_records++] = m;
    }
    resp->page = page_resp(a, n, size, offset);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- the user graph ---- */

static const hm_stmt_t st_graph_user = {
    "rc_graph_user",
    "SELECT target, type, w, us FROM (SELECT item_id target, 1 AS type, sum(weight * "
    "exp(-extract(epoch FROM now() - occurred_at) / (86400.0 * 90))) w, " TS_US(
        "max(occurred_at)") " us FROM rc_events WHERE guest_id = $1::uuid AND type IN (6, 7, 8) "
                            "AND item_id <> '' GROUP BY item_id UNION ALL SELECT 'interest:' || "
                            "category || ':' || value, 2, confidence, " TS_US(
                                "updated_at") " FROM rc_interests WHERE guest_id = $1::uuid) x "
                                              "ORDER BY w DESC, target LIMIT $2::int",
    2};
static const hm_stmt_t st_graph_items = {
    "rc_graph_items",
    "SELECT source, target, type, w, us FROM (SELECT item_id source, 'category:' || category "
    "target, 3 AS type, 1.0::float8 w, " TS_US("updated_at") " us FROM rc_items WHERE item_id = "
                                                             "ANY($1::text[]) AND category <> '' "
                                                             "UNION ALL SELECT item_id, "
                                                             "related_id, CASE type WHEN 1 THEN 4 "
                                                             "ELSE 5 END, weight, " TS_US(
                                                                 "updated_at") " FROM "
                                                                               "rc_item_relations "
                                                                               "WHERE item_id = "
                                                                               "ANY($1::text[])) "
                                                                               "x ORDER BY w "
                                                                               "DESC, source, "
                                                                               "target LIMIT "
                                                                               "$2::int",
    2};
/* Cosine over sets of bought items and interests, among the 200 guests sharing the most. */
static const hm_stmt_t st_similar_users = {
    "rc_similar_users",
    "WITH mine AS (SELECT DISTINCT item_id k FROM rc_events WHERE guest_id = $1::uuid AND type IN "
    "(6, 7, 8) AND item_id <> '' UNION SELECT 'interest:' || category || ':' || value FROM "
    "rc_interests WHERE guest_id = $1::uuid), other AS (SELECT DISTINCT e.guest_id g, e.item_id "
    "k FROM mine m JOIN rc_events e ON e.item_id = m.k AND e.type IN (6, 7, 8) AND e.item_id <> "
    "'' WHERE e.guest_id <> $1::uuid UNION SELECT guest_id, 'interest:' || category || ':' || "
    "value FROM rc_interests WHERE 'interest:' || category || ':' || value IN (SELECT k FROM "
    "mine) AND guest_id <> $1::uuid), common AS (SELECT g, count(*) c, array_agg(substr(k, 10) "
    "ORDER BY k) FILTER (WHERE k LIKE 'interest:%') ci FROM other GROUP BY g ORDER BY 2 DESC, 1 "
    "LIMIT 200) SELECT g::text, c / sqrt((SELECT count(*) FROM mine) * ((SELECT count(DISTINCT "
    "item_id) FROM rc_events WHERE guest_id = common.g AND type IN (6, 7, 8) AND item_id <> '') + "
    "(SELECT count(*) FROM rc_interests WHERE guest_id = common.g))), coalesce(ci, '{}') FROM "
    "common ORDER BY 2 DESC, 1 LIMIT $2::int",
    2};

static Hospitality__Recommender__V1__GraphNode *node(hm_arena_t *a, const char *id, int type,
                                                     const char *label)
{
    Hospitality__Recommender__V1__GraphNode *n = hm_arena_alloc(a, sizeof *n);
    hospitality__recommender__v1__graph_node__init(n);
    n->node_id = hm_arena_strdup(a, id);
    n->type = type;
    n->label = hm_arena_strdup(a, label ? label : "");
    return n;
}

static int node_type(const char *id)
{
    return strncmp(id, "interest:", 9) == 0 ? 4 : strncmp(id, "category:", 9) == 0 ? 3 : 2;
}

REC_HANDLER(rec_get_user_graph)
{
    const Hospitality__Recommender__V1__GetUserGraphRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->depth < 0 || req->depth > 2)
        return hm_call_invalid(call, "depth", "depth must be within 0..2");
    if (req->max_edges < 0 || req->max_edges > 1000)
        return hm_call_invalid(call, "max_edges", "max_edges must be within 0..1000");
    if (req->max_similar_users < 0 || req->max_similar_users > 100)
        return hm_call_invalid(call, "max_similar_users", "must be within 0..100");
    int depth = req->depth ? req->depth : 1, maxe = req->max_edges ? req->max_edges : 200;
    int maxu = req->max_similar_users ? req->max_similar_users : 10;
    const char *p[2] = {req->guest_id, rec_p64(a, maxe)};
    PGresult *r, *r2 = NULL, *su;
    int rc = hm_db_exec_arena(call->db, a, &st_graph_user, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "graph");
    int n1 = PQntuples(r);
    char **items = hm_arena_alloc(a, ((size_t)n1 + 1) * sizeof *items);
    size_t nitems = 0;
    for (int i = 0; i < n1; i++)
        if (rec_i64(r, i, 1) == 1)
            items[nitems++] = (char *)rec_str(r, i, 0);
    if (depth == 2 && nitems) {
        const char *p2[2] = {rec_text_array(a, items, nitems), rec_p64(a, maxe)};
        if ((rc = hm_db_exec_arena(call->db, a, &st_graph_items, p2, NULL, NULL, &r2)) != 0)
            return hm_call_fail(call, rc, "graph");
    }
    const char *p3[2] = {req->guest_id, rec_p64(a, maxu)};
    if ((rc = hm_db_exec_arena(call->db, a, &st_similar_users, p3, NULL, NULL, &su)) != 0)
        return hm_call_fail(call, rc, "similar users");
    Hospitality__Recommender__V1__GetUserGraphResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__get_user_graph_response__init(resp);
    int n2 = r2 ? PQntuples(r2) : 0;
    size_t cap = (size_t)(n1 + n2) + 2;
    resp->edges = hm_arena_alloc(a, cap * sizeof(void *));
    resp->nodes = hm_arena_alloc(a, 2 * cap * sizeof(void *));
    cands_t seen;
    cands_init(&seen, a, 2 * cap);
    resp->nodes[resp->n_nodes++] = node(a, req->guest_id, 1, "");
    cands_get(&seen, req->guest_id);
    for (int pass = 0; pass < 2; pass++) {
        PGresult *x = pass ? r2 : r;
        int n = pass ? n2 : n1;
        for (int i = 0; i < n && (int)resp->n_edges < maxe; i++) {
            Hospitality__Recommender__V1__GraphEdge *e = hm_arena_alloc(a, sizeof *e);
            hospitality__recommender__v1__graph_edge__init(e);
            int off = pass ? 1 : 0;
            e->source_id = pass ? hm_arena_strdup(a, rec_str(x, i, 0)) : req->guest_id;
            e->target_id = hm_arena_strdup(a, rec_str(x, i, off));
            e->type = (int)rec_i64(x, i, off + 1);
            e->weight = rec_f64(x, i, off + 2);
            e->updated_at = hm_timestamp_from_us(a, rec_i64(x, i, off + 3));
            resp->edges[resp->n_edges++] = e;
            const char *ends[2] = {e->source_id, e->target_id};
            for (int k = 0; k < 2; k++)
                if (!cands_find(&seen, ends[k]) && cands_get(&seen, ends[k]))
                    resp->nodes[resp->n_nodes++] = node(a, ends[k], node_type(ends[k]), NULL);
        }
    }
    /* labels: item names, category names */
    cands_t meta;
    cands_init(&meta, a, resp->n_nodes + 1);
    for (size_t i = 1; i < resp->n_nodes; i++)
        if (resp->nodes[i]->type == 2)
            cands_get(&meta, resp->nodes[i]->node_id);
    if (meta.n && load_meta(call, &meta, NULL, 0, NULL) == 0)
        for (size_t i = 1; i < resp->n_nodes; i++) {
            const cand_t *m = cands_find(&meta, resp->nodes[i]->node_id);
            if (m && m->known)
                resp->nodes[i]->label = (char *)m->name;
        }
    for (size_t i = 1; i < resp->n_nodes; i++)
        if (resp->nodes[i]->type != 2)
            resp->nodes[i]->label = strchr(resp->nodes[i]->node_id, ':') + 1;
    resp->similar_users = hm_arena_alloc(a, ((size_t)PQntuples(su) + 1) * sizeof(void *));
    for (int i = 0; i < PQntuples(su); i++) {
        Hospitality__Recommender__V1__SimilarUser *u = hm_arena_alloc(a, sizeof *u);
        hospitality__recommender__v1__similar_user__init(u);
        u->guest_id = hm_arena_strdup(a, rec_str(su, i, 0));
        u->similarity = fmin(1.0, rec_f64(su, i, 1));
        u->common_interests = rec_parse_array(a, rec_str(su, i, 2), &u->n_common_interests);
        resp->similar_users[resp->n_similar_users++] = u;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- feedback ---- */

static const hm_stmt_t st_fb_rec = {
    "rc_fb_rec",
    "SELECT coalesce(guest_id::text, ''), model_version, record, rules FROM rc_recommendations "
    "WHERE recommendation_id = $1::uuid",
    1};
static const hm_stmt_t st_fb_ins = {
    "rc_fb_ins",
    "INSERT INTO rc_feedback (feedback_id, recommendation_id, guest_id, item_id, type, position, "
    "offer_id, rule_id, strategy, model_version, value_minor, currency, occurred_at) VALUES "
    "($1::uuid, $2::uuid, $3::uuid, $4, $5::smallint, $6::int, $7, $8, $9::smallint, $10, "
    "$11::bigint, $12, to_timestamp($13::bigint / 1e6)) ON CONFLICT (feedback_id) DO NOTHING "
    "RETURNING 1",
    13};
static const hm_stmt_t st_fb_get = {
    "rc_fb_get",
    "SELECT recommendation_id::text, coalesce(guest_id::text, ''), item_id, type, position, "
    "offer_id, value_minor, currency, " TS_US("occurred_at") " FROM rc_feedback WHERE "
                                                             "feedback_id = $1::uuid",
    1};

typedef struct fb_tx {
    hm_call_t *call;
    Hospitality__Recommender__V1__Feedback *fb;
    int strategy;
    const char *version, *rule;
    bool dup;
} fb_tx_t;

static int fb_fn(hm_db_t *db, void *arg)
{
    fb_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    Hospitality__Recommender__V1__Feedback *fb = t->fb;
    const char *p[13] = {fb->feedback_id,
                         fb->recommendation_id,
                         fb->guest_id,
                         fb->item_id,
                         rec_p64(a, fb->type),
                         rec_p64(a, fb->position),
                         fb->offer_id,
                         t->rule,
                         rec_p64(a, t->strategy),
                         t->version,
                         rec_p64(a, fb->conversion_value ? fb->conversion_value->amount_minor : 0),
                         fb->conversion_value ? fb->conversion_value->currency : "",
                         rec_p64(a, hm_timestamp_to_us(fb->occurred_at))};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_fb_ins, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    t->dup = PQntuples(r) == 0;
    if (t->dup)
        return 0;
    Hospitality__Events__V1__RecommenderFeedbackRecorded ev =
        HOSPITALITY__EVENTS__V1__RECOMMENDER_FEEDBACK_RECORDED__INIT;
    ev.feedback_id = fb->feedback_id;
    ev.recommendation_id = fb->recommendation_id;
    ev.guest_id = fb->guest_id;
    ev.item_id = fb->item_id;
    ev.type = fb->type;
    ev.strategy = t->strategy;
    ev.model_version = (char *)t->version;
    ev.position = fb->position;
    ev.offer_id = fb->offer_id;
    if ((rc = hm_call_publish(t->call, db, "recommender.feedback.recorded", fb->guest_id,
                              &ev.base)) != 0)
        return rc;
    if (fb->type ==
        HOSPITALITY__COMMON__V1__RECOMMENDATION_FEEDBACK_TYPE__RECOMMENDATION_FEEDBACK_TYPE_CLICK) {
        Hospitality__Events__V1__RecommendationClicked ck =
            HOSPITALITY__EVENTS__V1__RECOMMENDATION_CLICKED__INIT;
        ck.recommendation_id = fb->recommendation_id;
        ck.guest_id = fb->guest_id;
        ck.item_id = fb->item_id;
        ck.position = fb->position;
        rc = hm_call_publish(t->call, db, "recommendation.clicked", fb->guest_id, &ck.base);
    }
    return rc;
}

REC_HANDLER(rec_submit_feedback)
{
    const Hospitality__Recommender__V1__SubmitFeedbackRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    Hospitality__Recommender__V1__Feedback *fb = req->feedback;
    if (!fb)
        return hm_call_invalid(call, "feedback", "feedback is required");
    if (!hm_uuid_valid(fb->guest_id))
        return hm_call_invalid(call, "feedback.guest_id", "guest_id must be a UUID");
    if (fb->feedback_id[0] && !hm_uuid_valid(fb->feedback_id))
        return hm_call_invalid(call, "feedback.feedback_id", "feedback_id must be a UUID or empty");
    if (!hm_uuid_valid(fb->recommendation_id))
        return hm_call_invalid(call, "feedback.recommendation_id", "must be a UUID");
    if (!rec_valid_item_id(fb->item_id))
        return hm_call_invalid(call, "feedback.item_id", "bad item id");
    if ((int)fb->type < 1 || (int)fb->type > 4)
        return hm_call_invalid(call, "feedback.type", "IMPRESSION, CLICK, DISMISS or CONVERSION");
    if (fb->position < 0)
        return hm_call_invalid(call, "feedback.position", "position must not be negative");
    if (fb->offer_id[0] && !hm_uuid_valid(fb->offer_id))
        return hm_call_invalid(call, "feedback.offer_id", "offer_id must be a UUID or empty");
    if (fb->conversion_value &&
        (fb->conversion_value->amount_minor < 0 || strlen(fb->conversion_value->currency) != 3))
        return hm_call_invalid(call, "feedback.conversion_value", "amount >= 0 and a currency");
    /* a guest caller may only give feedback as itself (the method policy's self_field covers
     * top-level request fields only) */
    if (call->principal &&
        (call->principal->roles & (HM_ROLE_STAFF | HM_ROLE_ADMIN | HM_ROLE_SERVICE)) == 0 &&
        strcmp(call->principal->subject, fb->guest_id) != 0)
        return hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                             "a guest may only give feedback as itself");
    const char *p[1] = {fb->recommendation_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_fb_rec, p, NULL, NULL, &r);
    if (rc == 0 && PQntuples(r) == 0 && rec_history_flush(call, call->db, a, true) == 0)
        rc = hm_db_exec_arena(call->db, a, &st_fb_rec, p, NULL, NULL, &r); /* was queued */
    if (rc != 0)
        return hm_call_fail(call, rc, "load recommendation");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no recommendation %s",
                             fb->recommendation_id);
    if (strcmp(rec_str(r, 0, 0), fb->guest_id) != 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "recommendation %s was not served to this guest",
                             fb->recommendation_id);
    unsigned char *blob;
    size_t len;
    Hospitality__Recommender__V1__RecommendationRecord *rec = NULL;
    if (hm_db_get_bytea(r, 0, 2, a, &blob, &len) == 0)
        rec = (void *)protobuf_c_message_unpack(
            &hospitality__recommender__v1__recommendation_record__descriptor, hm_arena_pb(a), len,
            blob);
    if (!rec)
        return hm_call_fail(call, HM_EINTERNAL, "decode recommendation");
    int strategy = -1;
    for (size_t i = 0; i < rec->n_items; i++)
        if (strcmp(rec->items[i]->item_id, fb->item_id) == 0)
            strategy = rec->items[i]->strategy;
    if (strategy < 0)
        return hm_call_invalid(call, "feedback.item_id", "item %s was not in the list",
                               fb->item_id);
    const char *rule = "";
    size_t nr;
    char **pairs = rec_parse_array(a, rec_str(r, 0, 3), &nr);
    size_t il = strlen(fb->item_id);
    for (size_t i = 0; i < nr; i++)
        if (strncmp(pairs[i], fb->item_id, il) == 0 && pairs[i][il] == '=')
            rule = pairs[i] + il + 1;
    if (!fb->feedback_id[0])
        fb->feedback_id = new_id(a);
    if (!fb->occurred_at)
        fb->occurred_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    fb_tx_t t = {call, fb, strategy, hm_arena_strdup(a, rec_str(r, 0, 1)), rule, false};
    rc = hm_db_tx(call->db, fb_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "record feedback");
    if (!t.dup &&
        fb->type ==
            HOSPITALITY__COMMON__V1__RECOMMENDATION_FEEDBACK_TYPE__RECOMMENDATION_FEEDBACK_TYPE_DISMISS)
        rec_forget_cache(call->cache, a, fb->guest_id); /* cached lists still hold the item */
    Hospitality__Recommender__V1__SubmitFeedbackResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__submit_feedback_response__init(resp);
    if (t.dup) { /* the earlier feedback under this id */
        const char *gp[1] = {fb->feedback_id};
        PGresult *g;
        if ((rc = hm_db_exec_arena(call->db, a, &st_fb_get, gp, NULL, NULL, &g)) != 0 ||
            PQntuples(g) == 0)
            return hm_call_fail(call, rc ? rc : HM_EINTERNAL, "load feedback");
        Hospitality__Recommender__V1__Feedback *e = hm_arena_alloc(a, sizeof *e);
        hospitality__recommender__v1__feedback__init(e);
        e->feedback_id = fb->feedback_id;
        e->recommendation_id = hm_arena_strdup(a, rec_str(g, 0, 0));
        e->guest_id = hm_arena_strdup(a, rec_str(g, 0, 1));
        e->item_id = hm_arena_strdup(a, rec_str(g, 0, 2));
        e->type = (int)rec_i64(g, 0, 3);
        e->position = (int)rec_i64(g, 0, 4);
        e->offer_id = hm_arena_strdup(a, rec_str(g, 0, 5));
        if (rec_i64(g, 0, 6) || rec_str(g, 0, 7)[0]) {
            e->conversion_value = hm_arena_alloc(a, sizeof *e->conversion_value);
            hospitality__common__v1__money__init(e->conversion_value);
            e->conversion_value->amount_minor = rec_i64(g, 0, 6);
            e->conversion_value->currency = hm_arena_strdup(a, rec_str(g, 0, 7));
        }
        e->occurred_at = hm_timestamp_from_us(a, rec_i64(g, 0, 8));
        resp->feedback = e;
    } else {
        resp->feedback = fb;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}
