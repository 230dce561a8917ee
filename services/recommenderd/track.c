/*
 * track.c - tracking (Track*, TrackEvents, IngestUserData), the catalogue (UpsertItems,
 * GetItem), features (GetFeatures, RefreshFeatures) and the event consumer of recommenderd.
 *
 * Every event, from the API or the bus, goes through rec_store_event in the caller's
 * transaction: the row in rc_events (deduplicated by event id), the item's time-decayed
 * popularity and the guest's feature state (counts, ratings, decayed category and attribute
 * affinities) are updated together. Invalid events are refused with the field and reason, and
 * copied to the dead-letter stream hm:dlq:recommenderd.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/log.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/events/v1/external_events.pb-c.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "hospitality/events/v1/privacy_events.pb-c.h"
#include "hospitality/events/v1/recommender_events.pb-c.h"
#include "rec.h"

#define T(x)       HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT_TYPE__TRACKED_EVENT_TYPE_##x
#define TS_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
static int item_keys(hm_db_t *db, hm_arena_t *a, const char *item);

/* Popularity's reference epoch (2026-01-01T00:00:00Z), seconds. */
#define REC_T0 1767225600.0

int64_t rec_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    hm_db_get_int64(r, row, col, &v);
    return v;
}

double rec_f64(const PGresult *r, int row, int col)
{
    const char *s = hm_db_get(r, row, col);
    return s ? strtod(s, NULL) : 0;
}

const char *rec_p64(hm_arena_t *a, int64_t v)
{
    return hm_db_param_int64(a, v);
}

const char *rec_pf(hm_arena_t *a, double v)
{
    return hm_arena_printf(a, "%.17g", v);
}

bool rec_valid_item_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= REC_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == '"' || s[i] == '\\' || s[i] == ',' ||
            s[i] == '{' || s[i] == '}' || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

const char *rec_text_array(hm_arena_t *a, char *const *v, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += 3 + 2 * strlen(v[i]);
    char *s = hm_arena_alloc(a, len), *p = s;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *c = v[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *p++ = '\\';
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    return s;
}

char **rec_parse_array(hm_arena_t *a, const char *s, size_t *n)
{
    *n = 0;
    if (!s || s[0] != '{')
        return NULL;
    size_t cap = 1;
    for (const char *c = s; *c; c++)
        cap += *c == ',';
    char **v = hm_arena_alloc(a, cap * sizeof *v);
    const char *p = s + 1;
    char *buf = hm_arena_alloc(a, strlen(s) + 1);
    while (*p && *p != '}') {
        char *o = buf;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                *o++ = *p;
            }
            if (*p)
                p++;
        } else {
            while (*p && *p != ',' && *p != '}')
                *o++ = *p++;
        }
        *o = 0;
        v[(*n)++] = hm_arena_strdup(a, buf);
        if (*p == ',')
            p++;
    }
    return v;
}

const char *rec_strategy_name(int s)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &hospitality__common__v1__recommendation_strategy__descriptor, s);
    return v ? v->name : "";
}

/* ---- validation and storage ---- */

const char *rec_validate_event(const Hospitality__Recommender__V1__TrackedEvent *e,
                               const char **field)
{
    typedef Hospitality__Recommender__V1__TrackedEvent__DetailsCase dc_t;
    dc_t want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS__NOT_SET;
    *field = "guest_id";
    if (!e->guest_id || !hm_uuid_valid(e->guest_id))
        return "guest_id must be a UUID";
    *field = "event_id";
    if (e->event_id && e->event_id[0] && !hm_uuid_valid(e->event_id))
        return "event_id must be a UUID when set";
    *field = "type";
    switch (e->type) {
    case T(VIEW):
        break;
    case T(WATCH):
        want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_WATCH;
        break;
    case T(SEARCH):
        want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_SEARCH;
        break;
    case T(RATING):
        want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_RATING;
        break;
    case T(FAVORITE):
        want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_FAVORITE;
        break;
    case T(PURCHASE):
    case T(BOOKING):
    case T(ORDER):
        want = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_TRANSACTION;
        break;
    default:
        return "type must be one of VIEW..ORDER";
    }
    *field = "item_id";
    if (e->type != T(SEARCH) && !rec_valid_item_id(e->item_id))
        return "item_id is required: 1..63 printable characters without quotes, commas, braces";
    if (e->type == T(SEARCH) && e->item_id && e->item_id[0])
        return "a search names no item";
    if (e->details_case != want &&
        !(want == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_TRANSACTION &&
          e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS__NOT_SET) &&
        !(want == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_WATCH &&
          e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS__NOT_SET)) {
        *field = "details";
        return "the details set does not match the event type";
    }
    if (e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_WATCH) {
        *field = "watch.progress";
        if (!(e->watch->progress >= 0 && e->watch->progress <= 1))
            return "progress must be within 0..1";
        *field = "watch.watched";
        if (e->watch->watched && e->watch->watched->seconds < 0)
            return "watched must not be negative";
    }
    if (e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_RATING) {
        double r = e->rating->rating;
        *field = "rating.rating";
        if (!(r >= 0.5 && r <= 5.0) || fabs(r * 2 - round(r * 2)) > 1e-9)
            return "rating must be 0.5..5.0 in steps of 0.5";
    }
    if (e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_SEARCH) {
        *field = "search.query";
        if (!e->search->query || !hm_utf8_valid(e->search->query) ||
            strlen(e->search->query) > 1000)
            return "query must be valid UTF-8 of at most 1000 bytes";
        *field = "search.clicked_item_ids";
        for (size_t i = 0; i < e->search->n_clicked_item_ids; i++)
            if (!rec_valid_item_id(e->search->clicked_item_ids[i]))
                return "clicked item ids must be valid item ids";
    }
    if (e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_TRANSACTION) {
        *field = "transaction.quantity";
        if (e->transaction->quantity < 0)
            return "quantity must not be negative";
    }
    *field = "occurred_at";
    if (e->occurred_at &&
        (e->occurred_at->seconds < 946684800 ||
         hm_timestamp_to_us(e->occurred_at) > (hm_now_ms() + 5 * 60 * 1000) * 1000))
        return "occurred_at must be after 2000 and not in the future";
    *field = "session_id";
    if (e->session_id && (strlen(e->session_id) > 128 || !hm_utf8_valid(e->session_id)))
        return "session_id: at most 128 bytes of UTF-8";
    *field = "venue_id";
    if (e->venue_id && (strlen(e->venue_id) > 128 || !hm_utf8_valid(e->venue_id)))
        return "venue_id: at most 128 bytes of UTF-8";
    *field = "attributes";
    if (e->n_attributes > 32)
        return "at most 32 attributes";
    for (size_t i = 0; i < e->n_attributes; i++)
        if (!hm_utf8_valid(e->attributes[i]->key) || !hm_utf8_valid(e->attributes[i]->value) ||
            strlen(e->attributes[i]->key) > 64 || strlen(e->attributes[i]->value) > 256)
            return "attribute keys (<= 64 bytes) and values (<= 256 bytes) must be UTF-8";
    return NULL;
}

/* Interaction strength of an event for popularity, features and training. */
static double event_weight(const Hospitality__Recommender__V1__TrackedEvent *e)
{
    switch (e->type) {
    case T(VIEW):
        return 1;
    case T(WATCH):
        return 1 + 2 * (e->watch ? e->watch->progress : 0.5);
    case T(RATING):
        return e->rating->rating >= 3 ? e->rating->rating - 1.5 : 0;
    case T(FAVORITE):
        return e->favorite->favorited ? 3 : 0;
    case T(PURCHASE):
    case T(BOOKING):
        return 5;
    case T(ORDER):
        return 4;
    default:
        return 0;
    }
}

static const hm_stmt_t st_event_ins = {
    "rc_event_ins",
    "INSERT INTO rc_events (event_id, guest_id, type, item_id, occurred_at, rating, weight, "
    "source, event) VALUES ($1::uuid, $2::uuid, $3::smallint, $4, to_timestamp($5::bigint / "
    "1e6), $6::float8, $7::float8, $8, $9) ON CONFLICT (event_id) DO NOTHING RETURNING 1",
    9};
static const hm_stmt_t st_pop_add = {
    "rc_pop_add",
    "INSERT INTO rc_popularity AS p (item_id, ln_score, events) VALUES ($1, ln($2::float8) + "
    "($3::float8 - 1767225600) / $4::float8, 1) ON CONFLICT (item_id) DO UPDATE SET ln_score = "
    "greatest(p.ln_score, excluded.ln_score) + ln(1 + exp(-abs(p.ln_score - "
    "excluded.ln_score))), events = p.events + 1",
    4};
static const hm_stmt_t st_feat_add = {
    "rc_feat_add",
    "INSERT INTO rc_features AS f (guest_id, version, counts, last_event, rating_sum, "
    "rating_count) VALUES ($1::uuid, 1, jsonb_build_object($2::text, 1), "
    "to_timestamp($3::bigint / 1e6), coalesce($4::float8, 0), CASE WHEN $4::float8 IS NULL THEN "
    "0 ELSE 1 END) ON CONFLICT (guest_id) DO UPDATE SET version = f.version + 1, computed_at = "
    "now(), counts = f.counts || jsonb_build_object($2::text, coalesce((f.counts ->> "
    "$2::text)::bigint, 0) + 1), last_event = greatest(f.last_event, excluded.last_event), "
    "rating_sum = f.rating_sum + excluded.rating_sum, rating_count = f.rating_count + "
    "excluded.rating_count",
    4};
/* The item's category, tags and attributes become the guest's decayed affinities. */
static const hm_stmt_t st_aff_add = {
    "rc_aff_add",
    "INSERT INTO rc_affinity AS a (guest_id, key, score) SELECT $1::uuid, key, $3::float8 FROM "
    "rc_item_keys WHERE item_id = $2 ORDER BY key ON CONFLICT (guest_id, key) DO UPDATE SET score "
    "= a.score * "
    "exp(-extract(epoch FROM now() - a.updated_at) / $4::float8) + excluded.score, updated_at = "
    "now()",
    4};

static double tau_s(void)
{
    return (double)rec_cfg.half_life_ms / 1000.0 / log(2.0);
}

#define IID(e) ((e)->item_id ? (e)->item_id : "")
static const Hospitality__Recommender__V1__TrackedEvent *const *sort_ev;
static int cmp_by_item(const void *x, const void *y)
{
    const Hospitality__Recommender__V1__TrackedEvent *a = sort_ev[*(const size_t *)x],
                                                     *b = sort_ev[*(const size_t *)y];
    int c = strcmp(IID(a), IID(b));
    return c ? c : strcmp(a->guest_id, b->guest_id);
}
static int cmp_by_guest(const void *x, const void *y)
{
    const Hospitality__Recommender__V1__TrackedEvent *a = sort_ev[*(const size_t *)x],
                                                     *b = sort_ev[*(const size_t *)y];
    int c = strcmp(a->guest_id, b->guest_id);
    return c ? c : strcmp(IID(a), IID(b));
}

/*
 * Stores events in the open transaction in three phases, each in a fixed order, so that
 * concurrent batches take their row locks in the same order (no deadlocks between batches of
 * different guests): the events themselves, then the items' popularity (by item id), then the
 * guests' affinities and features (by guest id).
 */
int rec_store_events(hm_db_t *db, hm_arena_t *a,
                     Hospitality__Recommender__V1__TrackedEvent *const *ev, size_t n,
                     const char *source, bool *dup)
{
    size_t *order = hm_arena_alloc(a, (n + 1) * sizeof *order), nn = 0;
    int rc;
    for (size_t i = 0; i < n; i++) {
        const Hospitality__Recommender__V1__TrackedEvent *e = ev[i];
        int64_t at = e->occurred_at ? hm_timestamp_to_us(e->occurred_at) : hm_now_ms() * 1000;
        size_t len = protobuf_c_message_get_packed_size(&e->base);
        uint8_t *buf = hm_arena_alloc(a, len + 1);
        protobuf_c_message_pack(&e->base, buf);
        const char *rating =
            e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_RATING
                ? rec_pf(a, e->rating->rating)
                : NULL;
        const char *p[9] = {e->event_id,      e->guest_id, rec_p64(a, e->type),        IID(e),
                            rec_p64(a, at),   rating,      rec_pf(a, event_weight(e)), source,
                            (const char *)buf};
        int lens[9] = {0, 0, 0, 0, 0, 0, 0, 0, (int)len}, fmts[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
        PGresult *r;
        if ((rc = hm_db_exec_arena(db, a, &st_event_ins, p, lens, fmts, &r)) != 0)
            return rc;
        dup[i] = PQntuples(r) == 0;
        if (!dup[i])
            order[nn++] = i;
    }
    sort_ev = (const Hospitality__Recommender__V1__TrackedEvent *const *)ev;
    static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&sort_lock); /* qsort has no context argument in C17 */
    sort_ev = (const Hospitality__Recommender__V1__TrackedEvent *const *)ev;
    qsort(order, nn, sizeof *order, cmp_by_item);
    pthread_mutex_unlock(&sort_lock);
    for (size_t k = 0; k < nn; k++) {
        const Hospitality__Recommender__V1__TrackedEvent *e = ev[order[k]];
        double w = event_weight(e);
        if (!(w > 0) || !IID(e)[0])
            continue;
        int64_t at = e->occurred_at ? hm_timestamp_to_us(e->occurred_at) : hm_now_ms() * 1000;
        const char *pp[4] = {e->item_id, rec_pf(a, w), rec_pf(a, (double)at / 1e6),
                             rec_pf(a, tau_s())};
        if ((rc = hm_db_exec_arena(db, a, &st_pop_add, pp, NULL, NULL, NULL)) != 0)
            return rc;
    }
    pthread_mutex_lock(&sort_lock);
    sort_ev = (const Hospitality__Recommender__V1__TrackedEvent *const *)ev;
    qsort(order, nn, sizeof *order, cmp_by_guest);
    pthread_mutex_unlock(&sort_lock);
    for (size_t k = 0; k < nn; k++) {
        const Hospitality__Recommender__V1__TrackedEvent *e = ev[order[k]];
        double w = event_weight(e);
        int64_t at = e->occurred_at ? hm_timestamp_to_us(e->occurred_at) : hm_now_ms() * 1000;
        if (w > 0 && IID(e)[0]) {
            const char *ap[4] = {e->guest_id, e->item_id, rec_pf(a, w / 5.0), rec_pf(a, tau_s())};
            if ((rc = hm_db_exec_arena(db, a, &st_aff_add, ap, NULL, NULL, NULL)) != 0)
                return rc;
        }
        const char *rating =
            e->details_case == HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_RATING
                ? rec_pf(a, e->rating->rating)
                : NULL;
        const char *fp[4] = {e->guest_id, hm_arena_printf(a, "%d", e->type), rec_p64(a, at),
                             rating};
        if ((rc = hm_db_exec_arena(db, a, &st_feat_add, fp, NULL, NULL, NULL)) != 0)
            return rc;
    }
    return 0;
}

int rec_store_event(hm_db_t *db, hm_arena_t *a, const Hospitality__Recommender__V1__TrackedEvent *e,
                    const char *source, bool *dup)
{
    Hospitality__Recommender__V1__TrackedEvent *one[1] = {
        (Hospitality__Recommender__V1__TrackedEvent *)e};
    return rec_store_events(db, a, one, 1, source, dup);
}

/* Copies a refused event to the dead-letter stream with the reason (best effort). */
static void dead_letter(hm_call_t *call, const Hospitality__Recommender__V1__TrackedEvent *e,
                        const char *field, const char *reason)
{
    size_t n = protobuf_c_message_get_packed_size(&e->base);
    uint8_t *buf = hm_arena_alloc(&call->arena, n + 1);
    protobuf_c_message_pack(&e->base, buf);
    const char *why = hm_arena_printf(&call->arena, "%s: %s", field, reason);
    const char *argv[16] = {"XADD",   "hm:dlq:recommenderd",
                            "MAXLEN", "~",
                            "100000", "*",
                            "stream", "api:TrackEvents",
                            "id",     e->event_id ? e->event_id : "",
                            "type",   "recommender.tracked_event",
                            "env",    (const char *)buf,
                            "error",  why};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = i == 13 ? n : strlen(argv[i]);
    hm_cache_command_argv(call->cache, &call->arena, 16, argv, lens);
}

typedef struct track_tx {
    hm_call_t *call;
    Hospitality__Recommender__V1__TrackedEvent **ev;
    size_t n;
    bool *dup;
} track_tx_t;

static int track_fn(hm_db_t *db, void *arg)
{
    track_tx_t *t = arg;
    return rec_store_events(db, &t->call->arena, t->ev, t->n, "api", t->dup);
}

/* Fills defaults (id, time), stores the events in one transaction and drops the guests'
 * cached lists and features. */
static int store_events(hm_call_t *call, Hospitality__Recommender__V1__TrackedEvent **ev, size_t n,
                        bool *dup)
{
    for (size_t i = 0; i < n; i++) {
        if (!ev[i]->event_id || !ev[i]->event_id[0]) {
            ev[i]->event_id = hm_arena_alloc(&call->arena, HM_UUID_LEN + 1);
            hm_uuid_v7(ev[i]->event_id);
        }
        if (!ev[i]->occurred_at)
            ev[i]->occurred_at = hm_timestamp_from_us(&call->arena, hm_now_ms() * 1000);
        ev[i]->received_at = hm_timestamp_from_us(&call->arena, hm_now_ms() * 1000);
    }
    track_tx_t t = {call, ev, n, dup};
    int rc = n ? hm_db_tx(call->db, track_fn, &t, HM_DB_READ_COMMITTED) : 0;
    if (rc == 0)
        for (size_t i = 0; i < n; i++)
            if (!dup[i] && (i == 0 || strcmp(ev[i]->guest_id, ev[i - 1]->guest_id) != 0))
                rec_forget_cache(call->cache, &call->arena, ev[i]->guest_id);
    return rc;
}

/* Builds a TrackedEvent from a Track* request's common parts. */
static Hospitality__Recommender__V1__TrackedEvent *
from_context(hm_call_t *call, const char *guest, int type, const char *item,
             const Hospitality__Recommender__V1__EventContext *ctx)
{
    Hospitality__Recommender__V1__TrackedEvent *e = hm_arena_alloc(&call->arena, sizeof *e);
    hospitality__recommender__v1__tracked_event__init(e);
    e->guest_id = (char *)guest;
    e->type = type;
    e->item_id = (char *)(item ? item : "");
    if (ctx) {
        e->event_id = ctx->event_id;
        e->occurred_at = ctx->occurred_at;
        e->session_id = ctx->session_id;
        e->app = ctx->app;
        e->venue_id = ctx->venue_id;
        e->n_attributes = ctx->n_attributes;
        e->attributes =
            (Hospitality__Recommender__V1__TrackedEvent__AttributesEntry **)ctx->attributes;
    }
    return e;
}

/* Validates, stores and answers one event from a Track* call; *stored gets the event. */
static hm_status_t track_one(hm_call_t *call, Hospitality__Recommender__V1__TrackedEvent *e)
{
    const char *field, *why = rec_validate_event(e, &field);
    if (why) {
        if (strcmp(field, "details") == 0)
            field = "watch";
        return hm_call_invalid(call, field, "%s", why);
    }
    bool dup;
    int rc = store_events(call, &e, 1, &dup);
    if (rc != 0)
        return hm_call_fail(call, rc, "track event");
    return HM_STATUS_OK;
}

#define TRACK_RESP(snake, Camel)                                                                   \
    Hospitality__Recommender__V1__##Camel##Response *resp =                                        \
        hm_arena_alloc(&call->arena, sizeof *resp);                                                \
    hospitality__recommender__v1__##snake##_response__init(resp);                                  \
    resp->event = e;                                                                               \
    *out = &resp->base

REC_HANDLER(rec_track_watch)
{
    const Hospitality__Recommender__V1__TrackWatchRequest *req = (const void *)in;
    Hospitality__Recommender__V1__TrackedEvent *e =
        from_context(call, req->guest_id, T(WATCH), req->item_id, req->context);
    if (req->watch) {
        e->details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_WATCH;
        e->watch = req->watch;
    }
    hm_status_t st = track_one(call, e);
    if (st.code != HM_CODE_OK)
        return st;
    TRACK_RESP(track_watch, TrackWatch);
    return HM_STATUS_OK;
}

REC_HANDLER(rec_track_search)
{
    const Hospitality__Recommender__V1__TrackSearchRequest *req = (const void *)in;
    Hospitality__Recommender__V1__TrackedEvent *e =
        from_context(call, req->guest_id, T(SEARCH), "", req->context);
    if (!req->search)
        return hm_call_invalid(call, "search", "search details are required");
    e->details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_SEARCH;
    e->search = req->search;
    hm_status_t st = track_one(call, e);
    if (st.code != HM_CODE_OK)
        return st;
    TRACK_RESP(track_search, TrackSearch);
    return HM_STATUS_OK;
}

REC_HANDLER(rec_track_rating)
{
    const Hospitality__Recommender__V1__TrackRatingRequest *req = (const void *)in;
    Hospitality__Recommender__V1__TrackedEvent *e =
        from_context(call, req->guest_id, T(RATING), req->item_id, req->context);
    if (!req->rating)
        return hm_call_invalid(call, "rating", "rating details are required");
    e->details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_RATING;
    e->rating = req->rating;
    hm_status_t st = track_one(call, e);
    if (st.code != HM_CODE_OK)
        return st;
    TRACK_RESP(track_rating, TrackRating);
    return HM_STATUS_OK;
}

REC_HANDLER(rec_track_favorite)
{
    const Hospitality__Recommender__V1__TrackFavoriteRequest *req = (const void *)in;
    Hospitality__Recommender__V1__TrackedEvent *e =
        from_context(call, req->guest_id, T(FAVORITE), req->item_id, req->context);
    if (!req->favorite)
        return hm_call_invalid(call, "favorite", "favorite details are required");
    e->details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_FAVORITE;
    e->favorite = req->favorite;
    hm_status_t st = track_one(call, e);
    if (st.code != HM_CODE_OK)
        return st;
    TRACK_RESP(track_favorite, TrackFavorite);
    return HM_STATUS_OK;
}

REC_HANDLER(rec_track_events)
{
    const Hospitality__Recommender__V1__TrackEventsRequest *req = (const void *)in;
    if (req->n_events > 500)
        return hm_call_invalid(call, "events", "at most 500 events per batch");
    Hospitality__Recommender__V1__TrackEventsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__track_events_response__init(resp);
    resp->rejected = hm_arena_alloc(&call->arena, (req->n_events + 1) * sizeof(void *));
    Hospitality__Recommender__V1__TrackedEvent **ok =
        hm_arena_alloc(&call->arena, (req->n_events + 1) * sizeof *ok);
    size_t nok = 0;
    for (size_t i = 0; i < req->n_events; i++) {
        const char *field, *why = rec_validate_event(req->events[i], &field);
        if (!why) {
            ok[nok++] = req->events[i];
            continue;
        }
        Hospitality__Recommender__V1__RejectedEvent *rj = hm_arena_alloc(&call->arena, sizeof *rj);
        hospitality__recommender__v1__rejected_event__init(rj);
        rj->index = (int32_t)i;
        rj->event_id = req->events[i]->event_id;
        rj->field = (char *)field;
        rj->reason = (char *)why;
        resp->rejected[resp->n_rejected++] = rj;
        dead_letter(call, req->events[i], field, why);
    }
    bool *dup = hm_arena_zalloc(&call->arena, nok + 1);
    int rc = store_events(call, ok, nok, dup);
    if (rc != 0)
        return hm_call_fail(call, rc, "track events");
    for (size_t i = 0; i < nok; i++) {
        if (dup[i])
            resp->duplicate_count++;
        else
            resp->accepted_count++;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- IngestUserData ---- */

/* A UUID derived from a string (FNV-1a, two seeds; version 8 layout): purchases keep one
 * event id however often they are ingested. */
static char *derived_uuid(hm_arena_t *a, const char *what)
{
    uint64_t h1 = rec_fnv1a(what, strlen(what));
    char *salted = hm_arena_printf(a, "rc:%s", what);
    uint64_t h2 = rec_fnv1a(salted, strlen(salted));
    h1 = (h1 & ~0xf000ull) | 0x8000ull;
    h2 = (h2 & 0x3fffffffffffffffull) | 0x8000000000000000ull;
    return hm_arena_printf(a, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(h1 >> 32),
                           (unsigned)((h1 >> 16) & 0xffff), (unsigned)(h1 & 0xffff),
                           (unsigned)(h2 >> 48), (unsigned long long)(h2 & 0xffffffffffffull));
}

static const hm_stmt_t st_item_stub = {
    "rc_item_stub",
    "INSERT INTO rc_items (item_id, category) VALUES ($1, $2) ON CONFLICT (item_id) DO UPDATE "
    "SET category = excluded.category WHERE rc_items.category = '' AND excluded.category <> ''",
    2};
static const hm_stmt_t st_interest = {
    "rc_interest",
    "INSERT INTO rc_interests (guest_id, category, value, confidence, source) VALUES ($1::uuid, "
    "$2, $3, $4::float8, $5::smallint) ON CONFLICT (guest_id, category, value) DO UPDATE SET "
    "confidence = excluded.confidence, source = excluded.source, updated_at = now()",
    5};
static const hm_stmt_t st_interest_aff = {
    "rc_interest_aff",
    "INSERT INTO rc_affinity (guest_id, key, score) SELECT $1::uuid, k, $3::float8 FROM "
    "unnest(ARRAY[$2, 'category:' || $4, 'tag:' || $4]) k ON CONFLICT (guest_id, key) DO UPDATE "
    "SET score = greatest(rc_affinity.score, excluded.score), updated_at = now()",
    4};

typedef struct ingest_tx {
    hm_call_t *call;
    const Hospitality__Recommender__V1__IngestUserDataRequest *req;
    Hospitality__Recommender__V1__IngestUserDataResponse *resp;
} ingest_tx_t;

static int ingest_fn(hm_db_t *db, void *arg)
{
    ingest_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    const Hospitality__Recommender__V1__IngestUserDataRequest *req = t->req;
    t->resp->purchases_ingested = t->resp->purchases_duplicate = t->resp->interests_ingested = 0;
    int rc;
    for (size_t i = 0; i < req->n_purchases; i++) {
        const Hospitality__Recommender__V1__Purchase *p = req->purchases[i];
        const char *sp[2] = {p->item_id, p->category ? p->category : ""};
        if ((rc = hm_db_exec_arena(db, a, &st_item_stub, sp, NULL, NULL, NULL)) != 0 ||
            (rc = item_keys(db, a, p->item_id)) != 0)
            return rc;
        Hospitality__Recommender__V1__TrackedEvent e =
            HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__INIT;
        Hospitality__Recommender__V1__TransactionDetails td =
            HOSPITALITY__RECOMMENDER__V1__TRANSACTION_DETAILS__INIT;
        td.transaction_id = p->purchase_id;
        td.quantity = 1;
        td.amount = p->amount;
        e.event_id =
            derived_uuid(a, hm_arena_printf(a, "purchase:%s:%s", req->guest_id, p->purchase_id));
        e.guest_id = req->guest_id;
        e.type = T(PURCHASE);
        e.item_id = p->item_id;
        e.occurred_at =
            p->purchased_at ? p->purchased_at : hm_timestamp_from_us(a, hm_now_ms() * 1000);
        e.received_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
        e.details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_TRANSACTION;
        e.transaction = &td;
        bool dup;
        if ((rc = rec_store_event(db, a, &e, "ingest", &dup)) != 0)
            return rc;
        if (dup)
            t->resp->purchases_duplicate++;
        else
            t->resp->purchases_ingested++;
    }
    for (size_t i = 0; i < req->n_interests; i++) {
        const Hospitality__Recommender__V1__UserInterest *u = req->interests[i];
        const char *ip[5] = {req->guest_id, u->interest_category, u->interest_value,
                             rec_pf(a, u->confidence_score), rec_p64(a, u->source)};
        if ((rc = hm_db_exec_arena(db, a, &st_interest, ip, NULL, NULL, NULL)) != 0)
            return rc;
        const char *ap[4] = {req->guest_id,
                             hm_arena_printf(a, "%s:%s", u->interest_category, u->interest_value),
                             rec_pf(a, u->confidence_score), u->interest_value};
        if ((rc = hm_db_exec_arena(db, a, &st_interest_aff, ap, NULL, NULL, NULL)) != 0)
            return rc;
        t->resp->interests_ingested++;
    }
    return 0;
}

static bool short_text(const char *s, size_t max)
{
    return s && s[0] && strlen(s) <= max && hm_utf8_valid(s);
}

REC_HANDLER(rec_ingest_user_data)
{
    const Hospitality__Recommender__V1__IngestUserDataRequest *req = (const void *)in;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->n_purchases + req->n_interests > 1000)
        return hm_call_invalid(call, "purchases", "at most 1000 purchases and interests");
    for (size_t i = 0; i < req->n_purchases; i++) {
        const Hospitality__Recommender__V1__Purchase *p = req->purchases[i];
        if (!short_text(p->purchase_id, 128))
            return hm_call_invalid(call, "purchases.purchase_id", "purchase %zu: id required", i);
        if (!rec_valid_item_id(p->item_id))
            return hm_call_invalid(call, "purchases.item_id", "purchase %zu: bad item id", i);
        if (p->category && (strlen(p->category) > 64 || !hm_utf8_valid(p->category)))
            return hm_call_invalid(call, "purchases.category", "purchase %zu: bad category", i);
        if (p->amount && p->amount->amount_minor < 0)
            return hm_call_invalid(call, "purchases.amount", "purchase %zu: negative amount", i);
    }
    for (size_t i = 0; i < req->n_interests; i++) {
        const Hospitality__Recommender__V1__UserInterest *u = req->interests[i];
        if (!short_text(u->interest_category, 64) || !short_text(u->interest_value, 128))
            return hm_call_invalid(call, "interests.interest_category",
                                   "interest %zu: category and value are required", i);
        if (!(u->confidence_score >= 0 && u->confidence_score <= 1))
            return hm_call_invalid(call, "interests.confidence_score",
                                   "interest %zu: confidence must be within 0..1", i);
    }
    Hospitality__Recommender__V1__IngestUserDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__ingest_user_data_response__init(resp);
    ingest_tx_t t = {call, req, resp};
    int rc = hm_db_tx(call->db, ingest_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "ingest user data");
    rec_forget_cache(call->cache, &call->arena, req->guest_id);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- catalogue ---- */

#define ITEM_COLS                                                                                  \
    "item_id, name, kind, category, subcategories, description, price_minor, currency, "           \
    "image_url, image_file, tags, dietary_labels, attributes::text, app, venue_id, venue_type, "   \
    "hidden, " TS_US("created_at") ", " TS_US("updated_at")

static const hm_stmt_t st_item_up = {
    "rc_item_up",
    "INSERT INTO rc_items AS i (item_id, name, kind, category, subcategories, description, "
    "price_minor, currency, image_url, image_file, tags, dietary_labels, attributes, app, "
    "venue_id, venue_type, hidden) VALUES ($1, $2, $3::smallint, $4, $5::text[], $6, "
    "$7::bigint, $8, $9, $10, $11::text[], $12::text[], $13::jsonb, $14::smallint, $15, "
    "$16::smallint, $17::boolean) ON CONFLICT (item_id) DO UPDATE SET name = excluded.name, kind "
    "= excluded.kind, category = excluded.category, subcategories = excluded.subcategories, "
    "description = excluded.description, price_minor = excluded.price_minor, currency = "
    "excluded.currency, image_url = excluded.image_url, image_file = excluded.image_file, tags = "
    "excluded.tags, dietary_labels = excluded.dietary_labels, attributes = excluded.attributes, "
    "app = excluded.app, venue_id = excluded.venue_id, venue_type = excluded.venue_type, hidden "
    "= excluded.hidden, updated_at = now() RETURNING (xmax = 0)",
    17};
static const hm_stmt_t st_keys_clear = {"rc_keys_clear",
                                        "DELETE FROM rc_item_keys WHERE item_id = $1", 1};
static const hm_stmt_t st_keys_add = {
    "rc_keys_add",
    "INSERT INTO rc_item_keys (key, item_id) SELECT k, $1 FROM (SELECT 'category:' || category k "
    "FROM rc_items WHERE item_id = $1 AND category <> '' UNION SELECT 'tag:' || unnest(tags) FROM "
    "rc_items WHERE item_id = $1 UNION SELECT e.key || ':' || e.value FROM rc_items, "
    "jsonb_each_text(attributes) e WHERE item_id = $1) keys ON CONFLICT DO NOTHING",
    1};

/* Rewrites an item's content keys from its row. */
static int item_keys(hm_db_t *db, hm_arena_t *a, const char *item)
{
    const char *p[1] = {item};
    int rc = hm_db_exec_arena(db, a, &st_keys_clear, p, NULL, NULL, NULL);
    return rc ? rc : hm_db_exec_arena(db, a, &st_keys_add, p, NULL, NULL, NULL);
}

static const hm_stmt_t st_rel_clear = {"rc_rel_clear",
                                       "DELETE FROM rc_item_relations WHERE item_id = $1", 1};
static const hm_stmt_t st_rel_add = {
    "rc_rel_add",
    "INSERT INTO rc_item_relations (item_id, related_id, type, weight) VALUES ($1, $2, "
    "$3::smallint, $4::float8) ON CONFLICT (item_id, type, related_id) DO UPDATE SET weight = "
    "excluded.weight, updated_at = now()",
    4};

/* A JSON object of string attributes (escaped), in the arena. */
static const char *attrs_json(hm_arena_t *a,
                              Hospitality__Recommender__V1__Item__AttributesEntry **e, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += 6 + 6 * (strlen(e[i]->key) + strlen(e[i]->value));
    char *s = hm_arena_alloc(a, len), *p = s;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        const char *kv[2] = {e[i]->key, e[i]->value};
        if (i)
            *p++ = ',';
        for (int k = 0; k < 2; k++) {
            *p++ = '"';
            for (const unsigned char *c = (const unsigned char *)kv[k]; *c; c++) {
                if (*c == '"' || *c == '\\') {
                    *p++ = '\\';
                    *p++ = (char)*c;
                } else if (*c < 0x20) {
                    p += sprintf(p, "\\u%04x", *c);
                } else {
                    *p++ = (char)*c;
                }
            }
            *p++ = '"';
            if (k == 0)
                *p++ = ':';
        }
    }
    *p++ = '}';
    *p = 0;
    return s;
}

typedef struct items_tx {
    hm_call_t *call;
    const Hospitality__Recommender__V1__UpsertItemsRequest *req;
    int created, updated;
} items_tx_t;

static int items_fn(hm_db_t *db, void *arg)
{
    items_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    t->created = t->updated = 0;
    for (size_t i = 0; i < t->req->n_items; i++) {
        const Hospitality__Recommender__V1__Item *it = t->req->items[i];
        const char *p[17] = {it->item_id,
                             it->name,
                             rec_p64(a, it->kind),
                             it->category,
                             rec_text_array(a, it->subcategories, it->n_subcategories),
                             it->description,
                             it->price ? rec_p64(a, it->price->amount_minor) : NULL,
                             it->price ? it->price->currency : "",
                             it->image_url,
                             it->image_file,
                             rec_text_array(a, it->tags, it->n_tags),
                             rec_text_array(a, it->dietary_labels, it->n_dietary_labels),
                             attrs_json(a, it->attributes, it->n_attributes),
                             rec_p64(a, it->app),
                             it->venue_id,
                             rec_p64(a, it->venue_type),
                             hm_db_param_bool(it->hidden)};
        PGresult *r;
        int rc = hm_db_exec_arena(db, a, &st_item_up, p, NULL, NULL, &r);
        if (rc != 0)
            return rc;
        if (strcmp(rec_str(r, 0, 0), "t") == 0)
            t->created++;
        else
            t->updated++;
        const char *cp[1] = {it->item_id};
        if ((rc = item_keys(db, a, it->item_id)) != 0 ||
            (rc = hm_db_exec_arena(db, a, &st_rel_clear, cp, NULL, NULL, NULL)) != 0)
            return rc;
        for (size_t k = 0; k < it->n_relations; k++) {
            const char *rp[4] = {it->item_id, it->relations[k]->item_id,
                                 rec_p64(a, it->relations[k]->type),
                                 rec_pf(a, it->relations[k]->weight)};
            if ((rc = hm_db_exec_arena(db, a, &st_rel_add, rp, NULL, NULL, NULL)) != 0)
                return rc;
        }
    }
    return 0;
}

static bool strs_ok(char **v, size_t n, size_t maxn, size_t maxlen)
{
    if (n > maxn)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!short_text(v[i], maxlen))
            return false;
    return true;
}

REC_HANDLER(rec_upsert_items)
{
    const Hospitality__Recommender__V1__UpsertItemsRequest *req = (const void *)in;
    if (req->n_items == 0 || req->n_items > 1000)
        return hm_call_invalid(call, "items", "1..1000 items per call");
    for (size_t i = 0; i < req->n_items; i++) {
        const Hospitality__Recommender__V1__Item *it = req->items[i];
        if (!rec_valid_item_id(it->item_id))
            return hm_call_invalid(call, "items.item_id", "item %zu: bad item id", i);
        if (!short_text(it->name, 256))
            return hm_call_invalid(call, "items.name", "item %zu: name required (<= 256)", i);
        if (!it->category || strlen(it->category) > 64 || !hm_utf8_valid(it->category))
            return hm_call_invalid(call, "items.category", "item %zu: bad category", i);
        if (!hm_utf8_valid(it->description) || strlen(it->description) > 4000 ||
            !hm_utf8_valid(it->image_url) || !hm_utf8_valid(it->image_file) ||
            !hm_utf8_valid(it->venue_id))
            return hm_call_invalid(call, "items.description", "item %zu: bad text field", i);
        if (it->price && (it->price->amount_minor < 0 || strlen(it->price->currency) != 3))
            return hm_call_invalid(call, "items.price",
                                   "item %zu: price needs an amount >= 0 "
                                   "and a 3-letter currency",
                                   i);
        if (!strs_ok(it->tags, it->n_tags, 64, 64) ||
            !strs_ok(it->subcategories, it->n_subcategories, 32, 64) ||
            !strs_ok(it->dietary_labels, it->n_dietary_labels, 32, 64))
            return hm_call_invalid(call, "items.tags",
                                   "item %zu: tags, subcategories and "
                                   "dietary labels: at most 64 non-empty strings",
                                   i);
        if (it->n_attributes > 64)
            return hm_call_invalid(call, "items.attributes", "item %zu: at most 64", i);
        for (size_t k = 0; k < it->n_attributes; k++)
            if (!short_text(it->attributes[k]->key, 64) ||
                !hm_utf8_valid(it->attributes[k]->value) || strlen(it->attributes[k]->value) > 256)
                return hm_call_invalid(call, "items.attributes", "item %zu: bad attribute", i);
        if (it->n_relations > 200)
            return hm_call_invalid(call, "items.relations", "item %zu: at most 200", i);
        for (size_t k = 0; k < it->n_relations; k++) {
            const Hospitality__Recommender__V1__ItemRelation *r = it->relations[k];
            if (!rec_valid_item_id(r->item_id) || strcmp(r->item_id, it->item_id) == 0 ||
                (r->type != 1 && r->type != 2) || !(r->weight >= 0 && r->weight <= 1))
                return hm_call_invalid(call, "items.relations",
                                       "item %zu relation %zu: needs "
                                       "another item, a type and a weight in 0..1",
                                       i, k);
        }
    }
    items_tx_t t = {call, req, 0, 0};
    int rc = hm_db_tx(call->db, items_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "upsert items");
    /* cached lists were filtered against the old catalogue (hidden items, prices) */
    const char *gk[1] = {hm_cache_key(&call->arena, "recommenderd", "gen", "catalogue")};
    hm_cache_del(call->cache, gk, 1);
    Hospitality__Recommender__V1__UpsertItemsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__upsert_items_response__init(resp);
    resp->created_count = t.created;
    resp->updated_count = t.updated;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_item_get = {"rc_item_get",
                                      "SELECT " ITEM_COLS " FROM rc_items WHERE item_id = $1", 1};
static const hm_stmt_t st_rel_get = {
    "rc_rel_get",
    "SELECT related_id, type, weight FROM rc_item_relations WHERE item_id = $1 ORDER BY type, "
    "weight DESC, related_id",
    1};

/* Flat string-map entries from a JSON object of strings (as stored). */
static void parse_attrs(hm_arena_t *a, const char *json, Hospitality__Recommender__V1__Item *it)
{
    size_t cap = 1;
    for (const char *c = json; *c; c++)
        cap += *c == ':';
    it->attributes = hm_arena_alloc(a, cap * sizeof *it->attributes);
    const char *p = json;
    for (;;) {
        char *kv[2];
        for (int k = 0; k < 2; k++) {
            p = strchr(p, '"');
            if (!p)
                return;
            char *buf = hm_arena_alloc(a, strlen(p) + 1), *o = buf;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1]) {
                    p++;
                    if (*p == 'u') {
                        *o++ = (char)strtol(hm_arena_strndup(a, p + 1, 4), NULL, 16);
                        p += 4;
                        continue;
                    }
                    *o++ = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
                    continue;
                }
                *o++ = *p;
            }
            *o = 0;
            if (*p)
                p++;
            kv[k] = buf;
        }
        Hospitality__Recommender__V1__Item__AttributesEntry *e = hm_arena_alloc(a, sizeof *e);
        hospitality__recommender__v1__item__attributes_entry__init(e);
        e->key = kv[0];
        e->value = kv[1];
        it->attributes[it->n_attributes++] = e;
    }
}

static Hospitality__Recommender__V1__Item *item_from_row(hm_arena_t *a, PGresult *r, int i)
{
    Hospitality__Recommender__V1__Item *it = hm_arena_alloc(a, sizeof *it);
    hospitality__recommender__v1__item__init(it);
    it->item_id = hm_arena_strdup(a, rec_str(r, i, 0));
    it->name = hm_arena_strdup(a, rec_str(r, i, 1));
    it->kind = (int)rec_i64(r, i, 2);
    it->category = hm_arena_strdup(a, rec_str(r, i, 3));
    it->subcategories = rec_parse_array(a, rec_str(r, i, 4), &it->n_subcategories);
    it->description = hm_arena_strdup(a, rec_str(r, i, 5));
    if (hm_db_get(r, i, 6)) {
        it->price = hm_arena_alloc(a, sizeof *it->price);
        hospitality__common__v1__money__init(it->price);
        it->price->amount_minor = rec_i64(r, i, 6);
        it->price->currency = hm_arena_strdup(a, rec_str(r, i, 7));
    }
    it->image_url = hm_arena_strdup(a, rec_str(r, i, 8));
    it->image_file = hm_arena_strdup(a, rec_str(r, i, 9));
    it->tags = rec_parse_array(a, rec_str(r, i, 10), &it->n_tags);
    it->dietary_labels = rec_parse_array(a, rec_str(r, i, 11), &it->n_dietary_labels);
    parse_attrs(a, rec_str(r, i, 12), it);
    it->app = (int)rec_i64(r, i, 13);
    it->venue_id = hm_arena_strdup(a, rec_str(r, i, 14));
    it->venue_type = (int)rec_i64(r, i, 15);
    it->hidden = strcmp(rec_str(r, i, 16), "t") == 0;
    it->created_at = hm_timestamp_from_us(a, rec_i64(r, i, 17));
    it->updated_at = hm_timestamp_from_us(a, rec_i64(r, i, 18));
    return it;
}

REC_HANDLER(rec_get_item)
{
    const Hospitality__Recommender__V1__GetItemRequest *req = (const void *)in;
    if (!rec_valid_item_id(req->item_id))
        return hm_call_invalid(call, "item_id", "bad item id");
    const char *p[1] = {req->item_id};
    PGresult *r, *rel;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_item_get, p, NULL, NULL, &r);
    if (rc == 0 && PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no item %s", req->item_id);
    if (rc == 0)
        rc = hm_db_exec_arena(call->db, &call->arena, &st_rel_get, p, NULL, NULL, &rel);
    if (rc != 0)
        return hm_call_fail(call, rc, "get item");
    Hospitality__Recommender__V1__Item *it = item_from_row(&call->arena, r, 0);
    it->relations = hm_arena_alloc(&call->arena, ((size_t)PQntuples(rel) + 1) * sizeof(void *));
    for (int i = 0; i < PQntuples(rel); i++) {
        Hospitality__Recommender__V1__ItemRelation *x = hm_arena_alloc(&call->arena, sizeof *x);
        hospitality__recommender__v1__item_relation__init(x);
        x->item_id = hm_arena_strdup(&call->arena, rec_str(rel, i, 0));
        x->type = (int)rec_i64(rel, i, 1);
        x->weight = rec_f64(rel, i, 2);
        it->relations[it->n_relations++] = x;
    }
    Hospitality__Recommender__V1__GetItemResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__get_item_response__init(resp);
    resp->item = it;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- features ---- */

static const hm_stmt_t st_feat_get = {
    "rc_feat_get",
    "SELECT version, " TS_US("computed_at") ", counts::text, coalesce(" TS_US(
        "last_event") ", 0), rating_sum, rating_count FROM rc_features WHERE guest_id = $1::uuid",
    1};
/* Affinities with decay applied now, scaled to the strongest = 1. */
static const hm_stmt_t st_aff_get = {
    "rc_aff_get",
    "WITH d AS (SELECT key, score * exp(-extract(epoch FROM now() - updated_at) / $2::float8) s "
    "FROM rc_affinity WHERE guest_id = $1::uuid) SELECT key, s / nullif(max(s) OVER (PARTITION "
    "BY key LIKE 'category:%'), 0) FROM d ORDER BY 2 DESC NULLS LAST, key LIMIT 200",
    2};

static Hospitality__Recommender__V1__UserFeatures *load_features(hm_call_t *call, const char *guest)
{
    hm_arena_t *a = &call->arena;
    const char *p[2] = {guest, rec_pf(a, tau_s())};
    PGresult *r, *af;
    if (hm_db_exec_arena(call->db, a, &st_feat_get, p, NULL, NULL, &r) != 0 ||
        hm_db_exec_arena(call->db, a, &st_aff_get, p, NULL, NULL, &af) != 0)
        return NULL;
    Hospitality__Recommender__V1__UserFeatures *f = hm_arena_alloc(a, sizeof *f);
    hospitality__recommender__v1__user_features__init(f);
    f->guest_id = (char *)guest;
    f->event_counts = hm_arena_alloc(a, 9 * sizeof(void *));
    if (PQntuples(r) == 1) {
        f->version = rec_i64(r, 0, 0);
        f->computed_at = hm_timestamp_from_us(a, rec_i64(r, 0, 1));
        const char *counts = rec_str(r, 0, 2);
        for (int t = 1; t <= 8; t++) {
            char key[8];
            snprintf(key, sizeof key, "\"%d\":", t);
            const char *c = strstr(counts, key);
            if (!c)
                continue;
            Hospitality__Recommender__V1__EventTypeCount *ec = hm_arena_alloc(a, sizeof *ec);
            hospitality__recommender__v1__event_type_count__init(ec);
            ec->type = t;
            ec->count = strtoll(c + strlen(key), NULL, 10);
            f->event_counts[f->n_event_counts++] = ec;
        }
        int64_t last = rec_i64(r, 0, 3);
        if (last) {
            f->last_event_at = hm_timestamp_from_us(a, last);
            f->recency_days = (double)(hm_now_ms() * 1000 - last) / 86400e6;
        }
        f->rating_count = rec_i64(r, 0, 5);
        f->average_rating = f->rating_count ? rec_f64(r, 0, 4) / (double)f->rating_count : 0;
    } else {
        f->computed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    }
    int n = PQntuples(af);
    f->category_affinities = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(void *));
    f->attribute_affinities = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(void *));
    for (int i = 0; i < n; i++) {
        Hospitality__Recommender__V1__Affinity *x = hm_arena_alloc(a, sizeof *x);
        hospitality__recommender__v1__affinity__init(x);
        const char *k = rec_str(af, i, 0);
        x->score = rec_f64(af, i, 1);
        if (strncmp(k, "category:", 9) == 0) {
            x->key = hm_arena_strdup(a, k + 9);
            f->category_affinities[f->n_category_affinities++] = x;
        } else {
            x->key = hm_arena_strdup(a, k);
            f->attribute_affinities[f->n_attribute_affinities++] = x;
        }
    }
    return f;
}

REC_HANDLER(rec_get_features)
{
    const Hospitality__Recommender__V1__GetFeaturesRequest *req = (const void *)in;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    const char *key = hm_cache_key(&call->arena, "recommenderd", "features", req->guest_id);
    char *val;
    size_t len;
    Hospitality__Recommender__V1__UserFeatures *f = NULL;
    if (hm_cache_get(call->cache, &call->arena, key, &val, &len) == 0)
        f = (void *)protobuf_c_message_unpack(
            &hospitality__recommender__v1__user_features__descriptor, hm_arena_pb(&call->arena),
            len, (uint8_t *)val);
    if (!f) {
        if (!(f = load_features(call, req->guest_id)))
            return hm_call_fail(call, HM_EUNAVAIL, "load features");
        size_t n = protobuf_c_message_get_packed_size(&f->base);
        uint8_t *buf = hm_arena_alloc(&call->arena, n + 1);
        protobuf_c_message_pack(&f->base, buf);
        hm_cache_set(call->cache, key, buf, n, 300000);
    }
    Hospitality__Recommender__V1__GetFeaturesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__get_features_response__init(resp);
    resp->features = f;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_feat_rebuild = {
    "rc_feat_rebuild",
    "INSERT INTO rc_features AS f (guest_id, version, computed_at, counts, last_event, "
    "rating_sum, rating_count) SELECT $1::uuid, 1, now(), coalesce((SELECT "
    "jsonb_object_agg(type::text, n) FROM (SELECT type, count(*) n FROM rc_events WHERE guest_id "
    "= $1::uuid GROUP BY type) c), '{}'), (SELECT max(occurred_at) FROM rc_events WHERE guest_id "
    "= $1::uuid), coalesce((SELECT sum(rating) FROM rc_events WHERE guest_id = $1::uuid AND "
    "rating IS NOT NULL), 0), (SELECT count(rating) FROM rc_events WHERE guest_id = $1::uuid) ON "
    "CONFLICT (guest_id) DO UPDATE SET version = f.version + 1, computed_at = now(), counts = "
    "excluded.counts, last_event = excluded.last_event, rating_sum = excluded.rating_sum, "
    "rating_count = excluded.rating_count RETURNING version, (SELECT count(*) FROM rc_events "
    "WHERE guest_id = $1::uuid)",
    1};
static const hm_stmt_t st_aff_clear = {"rc_aff_clear",
                                       "DELETE FROM rc_affinity WHERE guest_id = $1::uuid", 1};
/* Affinities from scratch: every event's item keys with decay from the event's time, plus the
 * stated interests. */
static const hm_stmt_t st_aff_rebuild = {
    "rc_aff_rebuild",
    "INSERT INTO rc_affinity (guest_id, key, score, updated_at) SELECT $1::uuid, k, sum(s), now() "
    "FROM (SELECT k.key k, e.weight / 5.0 * exp(-extract(epoch FROM now() - e.occurred_at) / "
    "$2::float8) s FROM rc_events e JOIN rc_item_keys k USING (item_id) WHERE e.guest_id = "
    "$1::uuid AND e.weight > 0 UNION ALL SELECT k, confidence FROM rc_interests, "
    "unnest(ARRAY[category || ':' || value, 'category:' || value, 'tag:' || value]) k WHERE "
    "guest_id = $1::uuid) x GROUP BY k",
    2};

typedef struct refresh_tx {
    hm_call_t *call;
    const char *guest;
} refresh_tx_t;

static int refresh_fn(hm_db_t *db, void *arg)
{
    refresh_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    const char *p[2] = {t->guest, rec_pf(a, tau_s())};
    PGresult *r;
    int rc;
    if ((rc = hm_db_exec_arena(db, a, &st_feat_rebuild, p, NULL, NULL, &r)) != 0 ||
        (rc = hm_db_exec_arena(db, a, &st_aff_clear, p, NULL, NULL, NULL)) != 0 ||
        (rc = hm_db_exec_arena(db, a, &st_aff_rebuild, p, NULL, NULL, NULL)) != 0)
        return rc;
    Hospitality__Events__V1__RecommenderFeaturesComputed ev =
        HOSPITALITY__EVENTS__V1__RECOMMENDER_FEATURES_COMPUTED__INIT;
    ev.guest_id = (char *)t->guest;
    ev.version = rec_i64(r, 0, 0);
    ev.event_count = rec_i64(r, 0, 1);
    ev.computed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    return hm_call_publish(t->call, db, "recommender.features.computed", t->guest, &ev.base);
}

REC_HANDLER(rec_refresh_features)
{
    const Hospitality__Recommender__V1__RefreshFeaturesRequest *req = (const void *)in;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    refresh_tx_t t = {call, req->guest_id};
    int rc = hm_db_tx(call->db, refresh_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "refresh features");
    rec_forget_cache(call->cache, &call->arena, req->guest_id);
    Hospitality__Recommender__V1__UserFeatures *f = load_features(call, req->guest_id);
    if (!f)
        return hm_call_fail(call, HM_EUNAVAIL, "load features");
    Hospitality__Recommender__V1__RefreshFeaturesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__refresh_features_response__init(resp);
    resp->features = f;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- the consumer ---- */

/* Stores one bus-derived event; the id is derived from the envelope id and a line index, so
 * a redelivery (already deduplicated by processed_events) could not double it either. */
static int bus_event(hm_db_t *db, hm_arena_t *a, const Hospitality__Events__V1__Event *env, int idx,
                     const char *guest, int type, const char *item, const char *venue, int app,
                     const Hospitality__Common__V1__Money *amount, int qty, const char *txn)
{
    if (!guest || !hm_uuid_valid(guest) || !rec_valid_item_id(item))
        return HM_EINVAL; /* dead-lettered by the bus with this error */
    Hospitality__Recommender__V1__TrackedEvent e =
        HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__INIT;
    Hospitality__Recommender__V1__TransactionDetails td =
        HOSPITALITY__RECOMMENDER__V1__TRANSACTION_DETAILS__INIT;
    e.event_id = derived_uuid(a, hm_arena_printf(a, "bus:%s:%d", env->id, idx));
    e.guest_id = (char *)guest;
    e.type = type;
    e.item_id = (char *)item;
    e.venue_id = (char *)(venue ? venue : "");
    e.app = app;
    e.occurred_at = env->time ? env->time : hm_timestamp_from_us(a, hm_now_ms() * 1000);
    e.received_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    if (type != T(VIEW)) {
        td.transaction_id = (char *)(txn ? txn : "");
        td.quantity = qty;
        td.amount = (Hospitality__Common__V1__Money *)amount;
        e.details_case = HOSPITALITY__RECOMMENDER__V1__TRACKED_EVENT__DETAILS_TRANSACTION;
        e.transaction = &td;
    }
    bool dup;
    return rec_store_event(db, a, &e, env->type, &dup);
}

int rec_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                     const ProtobufCMessage *payload, void *app)
{
    (void)app;
    const char *t = env->type, *guest = NULL;
    int rc = 0;
    if (strcmp(t, "booking.confirmed") == 0 || strcmp(t, "booking.completed") == 0) {
        /* both carry the booking; one interaction per booking (the second is a duplicate) */
        const Hospitality__Events__V1__BookingSummary *b =
            strcmp(t, "booking.confirmed") == 0
                ? ((const Hospitality__Events__V1__BookingConfirmed *)payload)->booking
                : ((const Hospitality__Events__V1__BookingCompleted *)payload)->booking;
        if (!b)
            return HM_EINVAL;
        guest = b->guest_id;
        const char *item =
            b->inventory_item_id && b->inventory_item_id[0] ? b->inventory_item_id : b->venue_id;
        Hospitality__Events__V1__Event same = *env;
        same.id = hm_arena_printf(arena, "booking:%s", b->booking_id); /* one per booking */
        rc = bus_event(db, arena, &same, 0, guest, T(BOOKING), item, b->venue_id,
                       HOSPITALITY__COMMON__V1__APP__APP_BOOKING, b->total_price, b->party_size,
                       b->booking_id);
    } else if (strcmp(t, "order.created") == 0) {
        const Hospitality__Events__V1__OrderCreated *o = (const void *)payload;
        guest = o->guest_id;
        for (size_t i = 0; rc == 0 && i < o->n_items; i++)
            rc = bus_event(db, arena, env, (int)i, guest, T(ORDER), o->items[i]->item_id,
                           o->venue_id, o->app, o->items[i]->unit_price, o->items[i]->quantity,
                           o->order_id);
    } else if (strcmp(t, "marketplace.purchase.completed") == 0) {
        const Hospitality__Events__V1__MarketplacePurchaseCompleted *m = (const void *)payload;
        guest = m->guest_id;
        for (size_t i = 0; rc == 0 && i < m->n_items; i++)
            rc = bus_event(db, arena, env, (int)i, guest, T(PURCHASE), m->items[i]->item_id, "",
                           HOSPITALITY__COMMON__V1__APP__APP_MARKETPLACE, m->items[i]->unit_price,
                           m->items[i]->quantity, m->purchase_id);
    } else if (strcmp(t, "guest.interaction.recorded") == 0) {
        /* views only: bookings, orders and purchases arrive on their own streams */
        const Hospitality__Events__V1__GuestInteractionRecorded *g = (const void *)payload;
        guest = g->guest_id;
        if (g->type != HOSPITALITY__COMMON__V1__INTERACTION_TYPE__INTERACTION_TYPE_VIEW ||
            !g->item_id || !g->item_id[0])
            return 0;
        rc = bus_event(db, arena, env, 0, guest, T(VIEW), g->item_id, g->venue_id, g->app, NULL, 0,
                       NULL);
    } else if (strcmp(t, "guest.consent.updated") == 0) {
        guest = ((const Hospitality__Events__V1__GuestConsentUpdated *)payload)->guest_id;
    } else if (strcmp(t, "guest.preferences.updated") == 0) {
        guest = ((const Hospitality__Events__V1__GuestPreferencesUpdated *)payload)->guest_id;
    }
    if (rc == 0 && guest && hm_uuid_valid(guest))
        rec_forget_cache(rec_thread_cache(), arena, guest);
    return rc;
}
