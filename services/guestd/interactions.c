/*
 * interactions.c - interaction history: RecordInteraction, RecordInteractions (all or
 * nothing), ListInteractions (keyset pages on (occurred_at, interaction_id), stable while new
 * rows arrive), the bus consumer that turns booking, feedback, marketing, order, marketplace,
 * notification and recommendation events into interactions exactly once (and applies consent
 * and app-user events), and the retention purge.
 *
 * Signals, implicit preferences and segments follow every insert through the interactions
 * trigger of migration 003, in the same transaction.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/id.h"
#include "hm/log.h"
#include "store.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/events/v1/external_events.pb-c.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "hospitality/events/v1/privacy_events.pb-c.h"
#include "hospitality/events/v1/recommender_events.pb-c.h"

typedef Hospitality__Guest__V1__Interaction ix_t;

#define IX_COLS                                                                                    \
    "interaction_id::text, guest_id::text, type, (extract(epoch FROM occurred_at) * "              \
    "1e6)::bigint, "                                                                               \
    "(extract(epoch FROM recorded_at) * 1e6)::bigint, venue_id, item_id, category, booking_id, "   \
    "order_id, amount_minor, currency, search_query, search_filters::text, rating, app, "          \
    "session_id, platform, page, referrer, metadata::text, coalesce(source_event_id, '')"

static const hm_stmt_t st_insert = {
    "gi_insert",
    "INSERT INTO interactions (interaction_id, guest_id, type, occurred_at, venue_id, item_id, "
    "category, booking_id, order_id, amount_minor, currency, search_query, search_filters, "
    "rating, app, session_id, platform, page, referrer, metadata, party_size, idempotency_key) "
    "SELECT $1, g.guest_id, $3, coalesce(to_timestamp($4::float8), clock_timestamp()), $5, $6, $7, "
    "$8, $9, $10, $11, $12, $13::jsonb, $14, $15, $16, $17, $18, $19, $20::jsonb, $21, $22 FROM "
    "guests g WHERE g.guest_id = $2 ON CONFLICT (idempotency_key) DO NOTHING RETURNING " IX_COLS,
    22};
static const hm_stmt_t st_by_key = {
    "gi_by_key", "SELECT " IX_COLS " FROM interactions WHERE idempotency_key = $1", 1};

static json_t *map_json(Hospitality__Guest__V1__Interaction__SearchFiltersEntry **e, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(o, e[i]->key, json_string(e[i]->value));
    return o;
}

static char *dumps(hm_arena_t *a, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    char *r = hm_arena_strdup(a, s ? s : "{}");
    free(s);
    return r;
}

static void fill_map(hm_arena_t *a, const char *text, void ***out, size_t *n, bool search)
{
    json_t *o = json_loads(text, 0, NULL);
    *n = 0;
    *out = NULL;
    if (!o)
        return;
    *out = hm_arena_alloc(a, sizeof(void *) * (json_object_size(o) + 1));
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (search) {
            Hospitality__Guest__V1__Interaction__SearchFiltersEntry *e =
                hm_arena_alloc(a, sizeof *e);
            hospitality__guest__v1__interaction__search_filters_entry__init(e);
            e->key = hm_arena_strdup(a, k);
            e->value = hm_arena_strdup(a, gd_jsv(v));
            (*out)[(*n)++] = e;
        } else {
            Hospitality__Guest__V1__Interaction__MetadataEntry *e = hm_arena_alloc(a, sizeof *e);
            hospitality__guest__v1__interaction__metadata_entry__init(e);
            e->key = hm_arena_strdup(a, k);
            e->value = hm_arena_strdup(a, gd_jsv(v));
            (*out)[(*n)++] = e;
        }
    }
    json_decref(o);
}

static ix_t *from_row(hm_arena_t *a, const PGresult *r, int i)
{
    ix_t *x = hm_arena_alloc(a, sizeof *x);
    hospitality__guest__v1__interaction__init(x);
    x->interaction_id = hm_arena_strdup(a, gd_str(r, i, 0));
    x->guest_id = hm_arena_strdup(a, gd_str(r, i, 1));
    x->type = (Hospitality__Common__V1__InteractionType)gd_i64(r, i, 2);
    x->occurred_at = gd_ts(a, r, i, 3);
    x->recorded_at = gd_ts(a, r, i, 4);
    x->venue_id = hm_arena_strdup(a, gd_str(r, i, 5));
    x->item_id = hm_arena_strdup(a, gd_str(r, i, 6));
    x->category = hm_arena_strdup(a, gd_str(r, i, 7));
    x->booking_id = hm_arena_strdup(a, gd_str(r, i, 8));
    x->order_id = hm_arena_strdup(a, gd_str(r, i, 9));
    if (gd_i64(r, i, 10) || *gd_str(r, i, 11)) {
        x->amount = hm_arena_alloc(a, sizeof *x->amount);
        hospitality__common__v1__money__init(x->amount);
        x->amount->amount_minor = gd_i64(r, i, 10);
        x->amount->currency = hm_arena_strdup(a, gd_str(r, i, 11));
    }
    x->search_query = hm_arena_strdup(a, gd_str(r, i, 12));
    fill_map(a, gd_str(r, i, 13), (void ***)&x->search_filters, &x->n_search_filters, true);
    x->rating = gd_f64(r, i, 14);
    x->context = hm_arena_alloc(a, sizeof *x->context);
    hospitality__guest__v1__interaction_context__init(x->context);
    x->context->app = (Hospitality__Common__V1__App)gd_i64(r, i, 15);
    x->context->session_id = hm_arena_strdup(a, gd_str(r, i, 16));
    x->context->platform = hm_arena_strdup(a, gd_str(r, i, 17));
    x->context->page = hm_arena_strdup(a, gd_str(r, i, 18));
    x->context->referrer = hm_arena_strdup(a, gd_str(r, i, 19));
    fill_map(a, gd_str(r, i, 20), (void ***)&x->metadata, &x->n_metadata, false);
    x->source_event_id = hm_arena_strdup(a, gd_str(r, i, 21));
    return x;
}

static bool check_id(hm_call_t *call, const char *field, const char *v, hm_status_t *st)
{
    return gd_check_text(call, field, v, 128, st);
}

/* Validates one interaction; `f` is the field prefix ("interaction", "interactions[3]"). */
static bool validate(hm_call_t *call, const char *f, const ix_t *x, hm_status_t *st)
{
    hm_arena_t *a = &call->arena;
#define F(name) hm_arena_printf(a, "%s." name, f)
    if (!x) {
        *st = hm_call_invalid(call, f, "required");
        return false;
    }
    if (x->type == 0 || !protobuf_c_enum_descriptor_get_value(
                            &hospitality__common__v1__interaction_type__descriptor, x->type)) {
        *st = hm_call_invalid(call, F("type"), "must be a known interaction type");
        return false;
    }
    if (x->occurred_at) {
        int64_t us = hm_timestamp_to_us(x->occurred_at), now = hm_now_ms() * 1000;
        if (us > now + 300LL * 1000000) {
            *st = hm_call_invalid(call, F("occurred_at"), "is more than 5 minutes in the future");
            return false;
        }
        if (us < now - 3650LL * 86400 * 1000000) {
            *st = hm_call_invalid(call, F("occurred_at"), "is more than 10 years in the past");
            return false;
        }
    }
    if (!check_id(call, F("venue_id"), x->venue_id, st) ||
        !check_id(call, F("item_id"), x->item_id, st) ||
        !check_id(call, F("booking_id"), x->booking_id, st) ||
        !check_id(call, F("order_id"), x->order_id, st) ||
        !gd_check_text(call, F("search_query"), x->search_query, 500, st))
        return false;
    for (const char *c = x->category; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_') ||
            c - x->category >= 64) {
            *st = hm_call_invalid(call, F("category"), "must be lower_snake_case, at most 64");
            return false;
        }
    if (x->amount) {
        const char *cur = x->amount->currency;
        if (x->amount->amount_minor < 0) {
            *st = hm_call_invalid(call, F("amount.amount_minor"), "must not be negative");
            return false;
        }
        if (strlen(cur) != 3 || cur[0] < 'A' || cur[0] > 'Z' || cur[1] < 'A' || cur[1] > 'Z' ||
            cur[2] < 'A' || cur[2] > 'Z') {
            *st = hm_call_invalid(call, F("amount.currency"), "must be an ISO 4217 code");
            return false;
        }
    }
    bool rated =
        x->type == HOSPITALITY__COMMON__V1__INTERACTION_TYPE__INTERACTION_TYPE_REVIEW_SUBMITTED ||
        x->type == HOSPITALITY__COMMON__V1__INTERACTION_TYPE__INTERACTION_TYPE_RATING_SUBMITTED;
    if (rated ? !(x->rating >= 1 && x->rating <= 5) : x->rating != 0) {
        *st = hm_call_invalid(call, F("rating"),
                              rated ? "must be within 1..5" : "only reviews and ratings carry one");
        return false;
    }
    if (x->n_search_filters > 20 || x->n_metadata > 50) {
        *st = hm_call_invalid(call, x->n_metadata > 50 ? F("metadata") : F("search_filters"),
                              "too many entries");
        return false;
    }
    for (size_t i = 0; i < x->n_metadata; i++)
        if (!gd_check_text(call, F("metadata"), x->metadata[i]->key, 64, st) ||
            !gd_check_text(call, F("metadata"), x->metadata[i]->value, 500, st))
            return false;
    for (size_t i = 0; i < x->n_search_filters; i++)
        if (!gd_check_text(call, F("search_filters"), x->search_filters[i]->key, 64, st) ||
            !gd_check_text(call, F("search_filters"), x->search_filters[i]->value, 500, st))
            return false;
    if (x->context &&
        (!gd_check_enum(call, F("context.app"), x->context->app,
                        &hospitality__common__v1__app__descriptor, st) ||
         !gd_check_text(call, F("context.session_id"), x->context->session_id, 128, st) ||
         !gd_check_text(call, F("context.platform"), x->context->platform, 32, st) ||
         !gd_check_text(call, F("context.page"), x->context->page, 200, st) ||
         !gd_check_text(call, F("context.referrer"), x->context->referrer, 500, st)))
        return false;
#undef F
    return true;
}

/* Inserts one interaction; *x is replaced by the stored row (the earlier one on a retry). */
static int insert(const gd_env_t *e, const char *guest, ix_t **x, const char *key, bool *fresh)
{
    hm_arena_t *a = e->arena;
    const ix_t *in = *x;
    char id[HM_UUID_LEN + 1];
    hm_uuid_v7(id);
    static const Hospitality__Guest__V1__InteractionContext noctx =
        HOSPITALITY__GUEST__V1__INTERACTION_CONTEXT__INIT;
    const Hospitality__Guest__V1__InteractionContext *c = in->context ? in->context : &noctx;
    const char *party = "0";
    for (size_t i = 0; i < in->n_metadata; i++)
        if (strcmp(in->metadata[i]->key, "party_size") == 0)
            party = gd_i64p(a, atoi(in->metadata[i]->value));
    PGresult *r;
    int rc = gd_q(e, &st_insert, &r, id, guest, gd_i64p(a, in->type),
                  in->occurred_at ? gd_usp(a, hm_timestamp_to_us(in->occurred_at)) : NULL,
                  in->venue_id, in->item_id, in->category, in->booking_id, in->order_id,
                  gd_i64p(a, in->amount ? in->amount->amount_minor : 0),
                  in->amount ? in->amount->currency : "", in->search_query,
                  dumps(a, map_json(in->search_filters, in->n_search_filters)),
                  hm_arena_printf(a, "%.17g", in->rating), gd_i64p(a, c->app), c->session_id,
                  c->platform, c->page, c->referrer,
                  dumps(a, map_json((void *)in->metadata, in->n_metadata)), party, key);
    if (rc)
        return rc;
    *fresh = PQntuples(r) == 1;
    if (PQntuples(r) == 0) {
        if (!key)
            return HM_ENOTFOUND; /* the guest does not exist */
        if ((rc = gd_q(e, &st_by_key, &r, key)) != 0)
            return rc;
        if (PQntuples(r) == 0)
            return HM_ENOTFOUND;
    }
    *x = from_row(a, r, 0);
    return 0;
}

static Hospitality__Events__V1__GuestInteractionRecorded *recorded(hm_arena_t *a, const ix_t *x)
{
    Hospitality__Events__V1__GuestInteractionRecorded *ev = hm_arena_alloc(a, sizeof *ev);
    hospitality__events__v1__guest_interaction_recorded__init(ev);
    ev->interaction_id = x->interaction_id;
    ev->guest_id = x->guest_id;
    ev->type = x->type;
    ev->app = x->context ? x->context->app : 0;
    ev->venue_id = x->venue_id;
    ev->item_id = x->item_id;
    ev->category = x->category;
    ev->booking_id = x->booking_id;
    ev->order_id = x->order_id;
    ev->amount = x->amount;
    ev->occurred_at = x->occurred_at;
    return ev;
}

static const hm_stmt_t st_status = {"gi_status", "SELECT status FROM guests WHERE guest_id = $1",
                                    1};

typedef struct rec_tx {
    hm_call_t *call;
    const char *guest, *key;
    ix_t **items;
    size_t n;
    bool batch, replay;
    hm_status_t st;
    bool failed;
} rec_tx_t;

static int rec_fn(hm_db_t *db, void *arg)
{
    rec_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    PGresult *r;
    int rc = gd_q(&e, &st_status, &r, t->guest);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        t->failed = true;
        t->st = gd_not_found(call, t->guest);
        return HM_ENOTFOUND;
    }
    int status = (int)gd_i64(r, 0, 0);
    if (status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s is %s: record interactions for the surviving guest",
                              t->guest, status == 3 ? "merged" : "erased");
        return HM_EPRECOND;
    }
    t->replay = false;
    for (size_t i = 0; i < t->n; i++) {
        const char *key = t->key ? t->batch ? hm_arena_printf(a, "%s:%s:%zu", t->guest, t->key, i)
                                            : hm_arena_printf(a, "%s:%s", t->guest, t->key)
                                 : NULL;
        bool fresh;
        if ((rc = insert(&e, t->guest, &t->items[i], key, &fresh)) != 0)
            return rc;
        t->replay = t->replay || !fresh;
    }
    /* A replayed key returns the first rows; their events went out with them. A batch is
     * all or nothing, so a replay finds every row. */
    if (t->replay)
        return 0;
    if (t->batch) {
        Hospitality__Events__V1__GuestInteractionBatchRecorded ev =
            HOSPITALITY__EVENTS__V1__GUEST_INTERACTION_BATCH_RECORDED__INIT;
        ev.guest_id = (char *)t->guest;
        ev.interactions = hm_arena_alloc(a, sizeof(void *) * t->n);
        for (size_t i = 0; i < t->n; i++)
            ev.interactions[ev.n_interactions++] = recorded(a, t->items[i]);
        return hm_call_publish(call, db, "guest.interaction.batch.recorded", t->guest, &ev.base);
    }
    return hm_call_publish(call, db, "guest.interaction.recorded", t->guest,
                           &recorded(a, t->items[0])->base);
}

static hm_status_t record(hm_call_t *call, const char *guest, ix_t **items, size_t n,
                          const char *key, bool batch)
{
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", guest, &st))
        return st;
    if (key && *key && !gd_check_text(call, "idempotency_key", key, 128, &st))
        return st;
    for (size_t i = 0; i < n; i++)
        if (!validate(call,
                      batch ? hm_arena_printf(&call->arena, "interactions[%zu]", i) : "interaction",
                      items[i], &st))
            return st;
    rec_tx_t t = {call,         guest, key && *key ? key : NULL, items, n, batch, false,
                  HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, rec_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc == HM_ENOTFOUND)
        return gd_not_found(call, guest);
    if (rc)
        return gd_fail(call, rc, "record interaction");
    return HM_STATUS_OK;
}

GD_HANDLER(guest_record_interaction)
{
    const Hospitality__Guest__V1__RecordInteractionRequest *req = (const void *)in;
    ix_t *x = req->interaction;
    if (!x)
        return hm_call_invalid(call, "interaction", "required");
    hm_status_t st = record(call, req->guest_id, &x, 1, req->idempotency_key, false);
    if (st.code != HM_CODE_OK)
        return st;
    Hospitality__Guest__V1__RecordInteractionResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__record_interaction_response__init(resp);
    resp->interaction = x;
    *out = &resp->base;
    return HM_STATUS_OK;
}

GD_HANDLER(guest_record_interactions)
{
    const Hospitality__Guest__V1__RecordInteractionsRequest *req = (const void *)in;
    if (req->n_interactions == 0)
        return hm_call_invalid(call, "interactions", "give at least one interaction");
    if (req->n_interactions > 500)
        return hm_call_invalid(call, "interactions", "at most 500 per batch");
    ix_t **items = hm_arena_alloc(&call->arena, sizeof(ix_t *) * req->n_interactions);
    memcpy(items, req->interactions, sizeof(ix_t *) * req->n_interactions);
    hm_status_t st =
        record(call, req->guest_id, items, req->n_interactions, req->idempotency_key, true);
    if (st.code != HM_CODE_OK)
        return st;
    Hospitality__Guest__V1__RecordInteractionsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__record_interactions_response__init(resp);
    resp->interactions = items;
    resp->n_interactions = req->n_interactions;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* Keyset pages: the token is "<occurred_at us>,<interaction_id>" of the last row served. */
static const hm_stmt_t st_list = {
    "gi_list",
    "SELECT " IX_COLS " FROM interactions WHERE guest_id = $1 AND (cardinality($2::smallint[]) = "
    "0 OR type = ANY($2::smallint[])) AND occurred_at >= coalesce(to_timestamp($3::float8), "
    "'-infinity') AND occurred_at < coalesce(to_timestamp($4::float8), 'infinity') AND ($5 = '' "
    "OR venue_id = $5) AND ($6::float8 IS NULL OR (occurred_at, interaction_id) < "
    "(to_timestamp($6::float8), $7::uuid)) ORDER BY occurred_at DESC, interaction_id DESC LIMIT "
    "$8",
    8};

GD_HANDLER(guest_list_interactions)
{
    const Hospitality__Guest__V1__ListInteractionsRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_check_text(call, "venue_id", req->venue_id, 128, &st))
        return st;
    int size = req->page && req->page->page_size > 0 ? req->page->page_size : 50;
    if (req->page && req->page->page_size < 0)
        return hm_call_invalid(call, "page.page_size", "must not be negative");
    if (size > 500)
        size = 500;
    const char *after_ts = NULL, *after_id = NULL;
    if (req->page && *req->page->page_token) {
        const char *tok = req->page->page_token, *comma = strchr(tok, ',');
        char *end;
        long long us = strtoll(tok, &end, 10);
        if (!comma || end != comma || !hm_uuid_valid(comma + 1))
            return hm_call_invalid(call, "page.page_token", "not a token this service issued");
        after_ts = gd_usp(a, us);
        after_id = comma + 1;
    }
    char **types = hm_arena_alloc(a, sizeof(char *) * (req->n_types + 1));
    for (size_t i = 0; i < req->n_types; i++) {
        if (!protobuf_c_enum_descriptor_get_value(
                &hospitality__common__v1__interaction_type__descriptor, req->types[i]) ||
            req->types[i] == 0)
            return hm_call_invalid(call, hm_arena_printf(a, "types[%zu]", i), "unknown type %d",
                                   req->types[i]);
        types[i] = (char *)gd_i64p(a, req->types[i]);
    }
    const Hospitality__Common__V1__TimeRange *tr = req->time_range;
    gd_env_t e = gd_env(call);
    PGresult *r;
    int rc = gd_q(&e, &st_status, &r, req->guest_id);
    if (rc)
        return hm_call_fail(call, rc, "list interactions");
    if (PQntuples(r) == 0)
        return gd_not_found(call, req->guest_id);
    if ((rc = gd_q(&e, &st_list, &r, req->guest_id, gd_text_array(a, types, req->n_types),
                   tr && tr->start_time ? gd_usp(a, hm_timestamp_to_us(tr->start_time)) : NULL,
                   tr && tr->end_time ? gd_usp(a, hm_timestamp_to_us(tr->end_time)) : NULL,
                   req->venue_id, after_ts, after_id, gd_i64p(a, size + 1))) != 0)
        return hm_call_fail(call, rc, "list interactions");
    Hospitality__Guest__V1__ListInteractionsResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__guest__v1__list_interactions_response__init(resp);
    int rows = PQntuples(r);
    resp->interactions = hm_arena_alloc(a, sizeof(ix_t *) * (size_t)(rows + 1));
    for (int i = 0; i < rows && i < size; i++)
        resp->interactions[resp->n_interactions++] = from_row(a, r, i);
    resp->page = hm_arena_alloc(a, sizeof *resp->page);
    hospitality__common__v1__page_response__init(resp->page);
    if (rows > size) {
        const ix_t *last = resp->interactions[size - 1];
        resp->page->next_page_token = hm_arena_printf(
            a, "%lld,%s", (long long)hm_timestamp_to_us(last->occurred_at), last->interaction_id);
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- the bus consumer ---- */

static const hm_stmt_t st_from_event = {
    "gi_from_event",
    "INSERT INTO interactions (interaction_id, guest_id, type, occurred_at, venue_id, item_id, "
    "category, booking_id, order_id, amount_minor, currency, rating, app, metadata, party_size, "
    "source_event_id) SELECT $1, coalesce(g.merged_into, g.guest_id), $3, "
    "coalesce(to_timestamp($4::float8), clock_timestamp()), $5, $6, $7, $8, $9, $10, $11, $12, "
    "$13, $14::jsonb, $15, $16 FROM guests g WHERE g.guest_id = $2 AND g.status <> 5 ON CONFLICT "
    "(source_event_id) DO NOTHING",
    16};
static const hm_stmt_t st_consent = {
    "gi_consent", "SELECT gd_consent($1, $2::smallint, $3::smallint, $4, to_timestamp($5::float8))",
    5};
static const hm_stmt_t st_app_user = {
    "gi_app_user",
    "INSERT INTO guest_app_profiles (guest_id, app, app_user_id) SELECT g.guest_id, $2, $3 FROM "
    "guests g WHERE g.guest_id = $1 AND g.status NOT IN (3, 5) ON CONFLICT (guest_id, app) DO "
    "UPDATE SET app_user_id = excluded.app_user_id, sync_status = 2, next_attempt_at = "
    "clock_timestamp(), updated_at = clock_timestamp()",
    3};
static const hm_stmt_t st_app_user_gone = {
    "gi_app_user_gone", "DELETE FROM guest_app_profiles WHERE guest_id = $1 AND app = $2", 2};

typedef struct ev_ix {
    int type;
    const char *guest, *venue, *item, *category, *booking, *order;
    const Hospitality__Common__V1__Money *amount;
    double rating;
    int app, party;
    json_t *meta;
} ev_ix_t;

static const char *venue_category(int vt)
{
    switch (vt) {
    case HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_HOTEL:
        return "hotel";
    case HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RESTAURANT:
        return "restaurant";
    case HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_CAFE:
        return "cafe";
    case HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RETAIL_EXPERIENCE:
        return "retail_experience";
    default:
        return "";
    }
}

static void from_booking(ev_ix_t *x, const Hospitality__Events__V1__BookingSummary *b, int type)
{
    if (!b)
        return;
    x->type = type;
    x->guest = b->guest_id;
    x->venue = b->venue_id;
    x->item = b->inventory_item_id;
    x->category = venue_category(b->venue_type);
    x->booking = b->booking_id;
    x->amount = b->total_price;
    x->party = b->party_size;
}

static void from_items(ev_ix_t *x, Hospitality__Events__V1__LineItem **items, size_t n)
{
    if (n > 0) {
        x->item = items[0]->item_id;
        x->category = items[0]->category;
    }
    if (n > 1) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, json_string(items[i]->item_id));
        char *s = json_dumps(a, JSON_COMPACT);
        json_object_set_new(x->meta, "items", json_string(s ? s : "[]"));
        free(s);
        json_decref(a);
    }
}

/* Maps an event to an interaction; false when the event is not one. */
static bool map_event(const char *type, const ProtobufCMessage *p, ev_ix_t *x)
{
#define IS(t) (strcmp(type, t) == 0)
#define IT(n) HOSPITALITY__COMMON__V1__INTERACTION_TYPE__INTERACTION_TYPE_##n
    if (IS("booking.created"))
        from_booking(x, ((const Hospitality__Events__V1__BookingCreated *)p)->booking,
                     IT(BOOKING_CREATED));
    else if (IS("booking.cancelled"))
        from_booking(x, ((const Hospitality__Events__V1__BookingCancelled *)p)->booking,
                     IT(BOOKING_CANCELLED));
    else if (IS("booking.completed"))
        from_booking(x, ((const Hospitality__Events__V1__BookingCompleted *)p)->booking,
                     IT(BOOKING_COMPLETED));
    else if (IS("feedback.review.submitted")) {
        const Hospitality__Events__V1__FeedbackReviewSubmitted *e = (const void *)p;
        *x = (ev_ix_t){IT(REVIEW_SUBMITTED),
                       e->guest_id,
                       e->venue_id,
                       e->item_id,
                       "",
                       e->booking_id,
                       "",
                       NULL,
                       e->rating,
                       0,
                       0,
                       x->meta};
        json_object_set_new(x->meta, "review_id", json_string(e->review_id));
    } else if (IS("feedback.rating.submitted")) {
        const Hospitality__Events__V1__FeedbackRatingSubmitted *e = (const void *)p;
        double r = e->scale_max > 0 ? e->rating / e->scale_max * 5 : e->rating;
        *x = (ev_ix_t){IT(RATING_SUBMITTED),
                       e->guest_id,
                       e->venue_id,
                       e->item_id,
                       "",
                       e->booking_id,
                       "",
                       NULL,
                       r < 1 ? 1 : r > 5 ? 5 : r,
                       0,
                       0,
                       x->meta};
    } else if (IS("marketing.campaign.clicked")) {
        const Hospitality__Events__V1__MarketingCampaignClicked *e = (const void *)p;
        *x = (ev_ix_t){
            IT(CAMPAIGN_CLICKED), e->guest_id, "", e->item_id, "", "", "", NULL, 0, 0, 0, x->meta};
        json_object_set_new(x->meta, "campaign_id", json_string(e->campaign_id));
        json_object_set_new(x->meta, "variant_id", json_string(e->variant_id));
    } else if (IS("marketing.email.opened")) {
        const Hospitality__Events__V1__MarketingEmailOpened *e = (const void *)p;
        *x = (ev_ix_t){IT(EMAIL_OPENED), e->guest_id, "", "", "", "", "", NULL, 0, 0, 0, x->meta};
        json_object_set_new(x->meta, "campaign_id", json_string(e->campaign_id));
        json_object_set_new(x->meta, "template_id", json_string(e->template_id));
    } else if (IS("marketing.promotion.used")) {
        const Hospitality__Events__V1__MarketingPromotionUsed *e = (const void *)p;
        *x = (ev_ix_t){IT(PROMOTION_USED), e->guest_id, "", "", "", e->booking_id,
                       e->order_id,        NULL,        0,  0,  0,  x->meta};
        json_object_set_new(x->meta, "promotion_id", json_string(e->promotion_id));
    } else if (IS("order.created")) {
        const Hospitality__Events__V1__OrderCreated *e = (const void *)p;
        *x = (ev_ix_t){IT(ORDER_CREATED), e->guest_id, e->venue_id, "",     "", "",
                       e->order_id,       e->total,    0,           e->app, 0,  x->meta};
        from_items(x, e->items, e->n_items);
    } else if (IS("order.items.selected")) {
        const Hospitality__Events__V1__OrderItemsSelected *e = (const void *)p;
        *x = (ev_ix_t){IT(ORDER_ITEMS_SELECTED),
                       e->guest_id,
                       e->venue_id,
                       "",
                       "",
                       "",
                       e->order_id,
                       NULL,
                       0,
                       0,
                       0,
                       x->meta};
        from_items(x, e->items, e->n_items);
    } else if (IS("marketplace.purchase.completed")) {
        const Hospitality__Events__V1__MarketplacePurchaseCompleted *e = (const void *)p;
        *x = (ev_ix_t){IT(MARKETPLACE_PURCHASE),
                       e->guest_id,
                       "",
                       "",
                       "",
                       "",
                       e->purchase_id,
                       e->total,
                       0,
                       HOSPITALITY__COMMON__V1__APP__APP_MARKETPLACE,
                       0,
                       x->meta};
        from_items(x, e->items, e->n_items);
    } else if (IS("marketplace.listing.created")) {
        const Hospitality__Events__V1__MarketplaceListingCreated *e = (const void *)p;
        *x = (ev_ix_t){IT(MARKETPLACE_LISTING_CREATED),
                       e->guest_id,
                       "",
                       e->item_id,
                       e->category,
                       "",
                       "",
                       NULL,
                       0,
                       HOSPITALITY__COMMON__V1__APP__APP_MARKETPLACE,
                       0,
                       x->meta};
    } else if (IS("notification.read")) {
        const Hospitality__Events__V1__NotificationRead *e = (const void *)p;
        *x = (ev_ix_t){
            IT(NOTIFICATION_READ), e->guest_id, "", "", "", "", "", NULL, 0, 0, 0, x->meta};
        json_object_set_new(x->meta, "notification_id", json_string(e->notification_id));
    } else if (IS("recommendation.clicked")) {
        const Hospitality__Events__V1__RecommendationClicked *e = (const void *)p;
        *x = (ev_ix_t){IT(RECOMMENDATION_CLICKED),
                       e->guest_id,
                       "",
                       e->item_id,
                       "",
                       "",
                       "",
                       NULL,
                       0,
                       0,
                       0,
                       x->meta};
        json_object_set_new(x->meta, "recommendation_id", json_string(e->recommendation_id));
    } else
        return false;
#undef IS
#undef IT
    return x->type != 0 && x->guest && hm_uuid_valid(x->guest);
}

int guest_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                       const ProtobufCMessage *payload, void *app)
{
    (void)app;
    gd_env_t e = {db, arena, NULL, NULL};
    if (strcmp(env->type, "guest.consent.updated") == 0) {
        const Hospitality__Events__V1__GuestConsentUpdated *c = (const void *)payload;
        if (!hm_uuid_valid(c->guest_id))
            return 0;
        for (size_t i = 0; i < c->n_changed; i++) {
            const Hospitality__Events__V1__ConsentState *s = c->changed[i];
            int rc = gd_q(&e, &st_consent, NULL, c->guest_id, gd_i64p(arena, s->purpose),
                          gd_i64p(arena, s->status), gd_i64p(arena, c->version),
                          s->expires_at ? gd_usp(arena, hm_timestamp_to_us(s->expires_at)) : NULL);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (strcmp(env->type, "user.created") == 0 || strcmp(env->type, "user.updated") == 0) {
        const Hospitality__Events__V1__UserCreated *u = (const void *)payload;
        if (!hm_uuid_valid(u->guest_id) || u->app == 0)
            return 0;
        return gd_q(&e, &st_app_user, NULL, u->guest_id, gd_i64p(arena, u->app), u->app_user_id);
    }
    if (strcmp(env->type, "user.deleted") == 0) {
        const Hospitality__Events__V1__UserDeleted *u = (const void *)payload;
        if (!hm_uuid_valid(u->guest_id))
            return 0;
        return gd_q(&e, &st_app_user_gone, NULL, u->guest_id, gd_i64p(arena, u->app));
    }
    ev_ix_t x;
    memset(&x, 0, sizeof x);
    x.meta = json_object();
    if (!map_event(env->type, payload, &x)) {
        json_decref(x.meta);
        return 0;
    }
    json_object_set_new(x.meta, "source_event_type", json_string(env->type));
    char id[HM_UUID_LEN + 1];
    hm_uuid_v7(id);
    int64_t when = env->time ? hm_timestamp_to_us(env->time) : hm_now_ms() * 1000;
    int rc = gd_q(&e, &st_from_event, NULL, id, x.guest, gd_i64p(arena, x.type),
                  gd_usp(arena, when), x.venue ? x.venue : "", x.item ? x.item : "",
                  x.category ? x.category : "", x.booking ? x.booking : "", x.order ? x.order : "",
                  gd_i64p(arena, x.amount ? x.amount->amount_minor : 0),
                  x.amount && x.amount->currency ? x.amount->currency : "",
                  hm_arena_printf(arena, "%.17g", x.rating), gd_i64p(arena, x.app),
                  dumps(arena, x.meta), gd_i64p(arena, x.party), env->id);
    return rc;
}

/* Retention: interactions older than HM_INTERACTION_RETENTION_DAYS (default 730) go, a batch
 * at a time; signals keep their totals (they are aggregates, not personal records). */
static const hm_stmt_t st_purge = {
    "gi_purge",
    "DELETE FROM interactions WHERE interaction_id IN (SELECT interaction_id FROM interactions "
    "WHERE occurred_at < now() - make_interval(days => $1::int) LIMIT 1000 FOR UPDATE SKIP "
    "LOCKED)",
    1};

int guest_task_retention(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)app;
    const char *days = getenv("HM_INTERACTION_RETENTION_DAYS");
    long d = days && *days ? strtol(days, NULL, 10) : 730;
    if (d < 1)
        d = 1;
    gd_env_t e = {db, arena, NULL, NULL};
    PGresult *r;
    int rc = gd_q(&e, &st_purge, &r, gd_i64p(arena, d));
    if (rc == 0 && atoll(PQcmdTuples(r)) > 0)
        HM_INFO("retention: purged %s interactions older than %ld days", PQcmdTuples(r), d);
    return rc;
}
