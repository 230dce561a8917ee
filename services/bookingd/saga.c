/*
 * saga.c - bookingd's work with the partners (inventory, pricing, payment: hm_peer_call by
 * name, HM_INVENTORY_ADDR and friends), never inside a database transaction.
 *
 * Create saga: price quote -> reserve inventory -> booking record (provisional: it holds the
 * slot under the exclusion constraint) -> payment intent -> (one transaction) the booking made
 * visible, its history, booking.created, the idempotency outcome, the saga done. Every step is
 * logged in bk_saga_steps; partner calls use keys derived from the booking, so a step can be
 * repeated or compensated by key. A failure compensates in reverse (cancel the intent, release
 * the hold, drop the provisional row).
 *
 * Update saga (time, duration, nights, party size or item changed): the booking is claimed
 * (bk_bookings.saga_id), the new slot quoted and reserved (and a new payment intent made when
 * the price changed), then one transaction moves the booking and records partner actions to
 * release the old hold and settle the old intent. A failure releases what the saga took and
 * leaves the booking as it was.
 *
 * While a saga runs its owner holds a session advisory lock on it; the recovery task takes
 * over running sagas whose lock it can get (the owner's process is gone) and compensates them.
 *
 * Partner actions (bk_partner_actions) are the calls that must follow a commit: release a hold,
 * cancel or refund a payment intent. Written in the committing transaction, run right after it
 * and retried by a task until they succeed.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bk.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/peer.h"

typedef Hospitality__Partner__V1__ReserveRequest reserve_req_t;

static const char *const peers[BK_NPARTNERS] = {"inventory", "pricing", "payment"};

hm_status_t bk_partner(hm_call_t *parent, hm_arena_t *arena, int partner, const char *method,
                       const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                       ProtobufCMessage **resp)
{
    hm_peer_opts_t o = {.timeout_ms = bk_cfg.partner_timeout_ms};
    int64_t t0 = hm_mono_ns();
    hm_status_t st = hm_peer_call(parent, arena, peers[partner], method, req, resp_desc, &o, resp);
    bool err = st.code != HM_CODE_OK && st.code != HM_CODE_FAILED_PRECONDITION &&
               st.code != HM_CODE_NOT_FOUND;
    bk_metric_partner(partner, (hm_mono_ns() - t0) / 1000, err);
    if (!hm_status_ok(st))
        HM_WARN("partner %s %s: %s %s", peers[partner], method, hm_code_name(st.code),
                st.message ? st.message : "");
    return st;
}

/* A JSON object from key/value string pairs (NULL-terminated), in the arena. */
static char *jobj(hm_arena_t *arena, ...)
{
    json_t *o = json_object();
    va_list ap;
    va_start(ap, arena);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
        const char *v = va_arg(ap, const char *);
        json_object_set_new(o, k, json_string(v ? v : ""));
    }
    va_end(ap);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *r = hm_arena_strdup(arena, s ? s : "{}");
    free(s);
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Saga log and ownership */

static const hm_stmt_t st_saga_new = {
    "bk_saga_new",
    "WITH s AS (INSERT INTO bk_sagas (saga_id, booking_id, kind, step, data, idem_scope, idem_key) "
    "VALUES ($1::uuid, $2::uuid, $3, $7, $4::jsonb, $5, $6) RETURNING saga_id) INSERT INTO "
    "bk_saga_steps (saga_id, step, status, detail) SELECT saga_id, $7, $8, $4::jsonb FROM s",
    8};
/* An update saga starts by claiming the booking (version check, no other saga): one statement,
 * one commit, nothing when the claim fails. */
static const hm_stmt_t st_saga_claim = {
    "bk_saga_claim",
    "WITH c AS (UPDATE bk_bookings SET saga_id = $1::uuid WHERE booking_id = $2::uuid AND version "
    "= $6::bigint AND saga_id IS NULL AND NOT provisional AND status IN (1, 2) RETURNING "
    "booking_id), s AS (INSERT INTO bk_sagas (saga_id, booking_id, kind, step, data, idem_scope, "
    "idem_key) SELECT $1::uuid, booking_id, 'update', 'claim', $3::jsonb, $4, $5 FROM c "
    "RETURNING saga_id) INSERT INTO bk_saga_steps (saga_id, step, status, detail) SELECT "
    "saga_id, 'claim', 'done', $3::jsonb FROM s RETURNING 1",
    6};
static const hm_stmt_t st_saga_lock = {"bk_saga_lock",
                                       "SELECT pg_advisory_lock(hashtextextended($1, 4242))", 1};
static const hm_stmt_t st_saga_trylock = {
    "bk_saga_trylock", "SELECT pg_try_advisory_lock(hashtextextended($1, 4242))", 1};
static const hm_stmt_t st_saga_unlock = {
    "bk_saga_unlock", "SELECT pg_advisory_unlock(hashtextextended($1, 4242))", 1};
static const hm_stmt_t st_saga_step = {
    "bk_saga_step",
    "WITH s AS (UPDATE bk_sagas SET step = $2, data = data || $4::jsonb, updated_at = "
    "clock_timestamp() WHERE saga_id = $1::uuid) INSERT INTO bk_saga_steps (saga_id, step, "
    "status, detail) VALUES ($1::uuid, $2, $3, $4::jsonb)",
    4};
static const hm_stmt_t st_saga_end = {
    "bk_saga_end",
    "UPDATE bk_sagas SET state = $2, updated_at = clock_timestamp() WHERE saga_id = $1::uuid "
    "AND state = 'running' RETURNING 1",
    2};

/* A step in the open transaction (steps that succeed are logged with the commit that follows
 * them: one commit per saga phase, not one per step). */
static int step_tx(hm_db_t *db, const char *saga, const char *name, const char *status,
                   const char *detail)
{
    const char *p[4] = {saga, name, status, detail ? detail : "{}"};
    return hm_db_exec(db, &st_saga_step, p, NULL, NULL, NULL);
}

/* A step on its own (failures, compensation, recovery). */
static void step(hm_db_t *db, const char *saga, const char *name, const char *status,
                 const char *detail)
{
    int rc = step_tx(db, saga, name, status, detail);
    if (rc != 0)
        HM_WARN("saga %s: step %s %s not logged: %s", saga, name, status, hm_strerror(rc));
}

static int saga_end(hm_db_t *db, const char *saga, const char *state)
{
    const char *p[2] = {saga, state};
    PGresult *r = NULL;
    int rc = hm_db_exec(db, &st_saga_end, p, NULL, NULL, &r);
    int n = r ? PQntuples(r) : 0;
    PQclear(r);
    return rc != 0 ? rc : n == 1 ? 0 : HM_ECONFLICT;
}

/* Always runs, also once the call's deadline has passed: hm_db refuses statements after the
 * deadline, and a skipped unlock would leave the session lock on the pooled connection, so
 * recovery would take the saga for alive and never settle it. The handler returns right after
 * (SAGA_RETURN); the runtime clears the deadline then anyway. */
static void unlock(hm_db_t *db, const char *saga)
{
    const char *p[1] = {saga};
    hm_db_set_deadline(db, -1);
    int rc = hm_db_exec(db, &st_saga_unlock, p, NULL, NULL, NULL);
    if (rc != 0)
        HM_WARN("saga %s: unlock failed: %s", saga, hm_strerror(rc));
}

/* ------------------------------------------------------------------------------------------ */
/* Partner steps */

void bk_price(hm_call_t *call, const char *venue_id, int venue_type, const char *item,
              const bk_slot_t *slot, int party, const char *promo, const char *guest_id,
              bk_quote_t *q)
{
    memset(q, 0, sizeof *q);
    Hospitality__Partner__V1__QuoteRequest req = HOSPITALITY__PARTNER__V1__QUOTE_REQUEST__INIT;
    req.venue_id = (char *)venue_id;
    req.venue_type = (Hospitality__Common__V1__VenueType)venue_type;
    req.inventory_item_id = (char *)(item ? item : "");
    req.window = bk_range(&call->arena, slot->start_us, slot->end_us);
    req.party_size = party;
    req.nights = slot->nights;
    req.promotion_code = (char *)(promo ? promo : "");
    req.guest_id = (char *)(guest_id ? guest_id : "");
    req.currency = (char *)bk_cfg.currency;
    ProtobufCMessage *out = NULL;
    hm_status_t st =
        bk_partner(call, &call->arena, BK_PRICING, "/hospitality.partner.v1.PricingService/Quote",
                   &req.base, &hospitality__partner__v1__quote_response__descriptor, &out);
    const Hospitality__Partner__V1__QuoteResponse *resp = (const void *)out;
    if (hm_status_ok(st) && resp && resp->quote && resp->quote->total_price &&
        resp->quote->total_price->amount_minor >= 0) {
        const Hospitality__Partner__V1__PriceQuote *pq = resp->quote;
        q->base = pq->base_price ? pq->base_price->amount_minor : 0;
        q->tax = pq->tax_amount ? pq->tax_amount->amount_minor : 0;
        q->discount = pq->discount_amount ? pq->discount_amount->amount_minor : 0;
        q->total = pq->total_price->amount_minor;
        snprintf(q->currency, sizeof q->currency, "%s",
                 *pq->total_price->currency ? pq->total_price->currency : bk_cfg.currency);
        q->quote_id = pq->quote_id;
        q->expires_us = hm_timestamp_to_us(pq->expires_at);
        return;
    }
    /* Pricing down (or answering nonsense): the configured default, flagged. */
    q->defaulted = true;
    q->base =
        bk_cfg.default_price * (party > 0 ? party : 1) * (slot->nights > 0 ? slot->nights : 1);
    q->total = q->base;
    snprintf(q->currency, sizeof q->currency, "%s", bk_cfg.currency);
    q->quote_id = "";
}

/* Releases a hold by id or key. 0 when released (or already gone). */
static hm_status_t release(hm_call_t *call, hm_arena_t *arena, const char *id, const char *key,
                           const char *reason)
{
    Hospitality__Partner__V1__ReleaseRequest req = HOSPITALITY__PARTNER__V1__RELEASE_REQUEST__INIT;
    if (id && *id) {
        req.target_case = HOSPITALITY__PARTNER__V1__RELEASE_REQUEST__TARGET_RESERVATION_ID;
        req.reservation_id = (char *)id;
    } else {
        req.target_case = HOSPITALITY__PARTNER__V1__RELEASE_REQUEST__TARGET_RESERVATION_KEY;
        req.reservation_key = (char *)key;
    }
    req.reason = (char *)reason;
    ProtobufCMessage *out;
    hm_status_t st =
        bk_partner(call, arena, BK_INVENTORY, "/hospitality.partner.v1.InventoryService/Release",
                   &req.base, &hospitality__partner__v1__release_response__descriptor, &out);
    return st.code == HM_CODE_NOT_FOUND ? HM_STATUS_OK : st;
}

/* Cancels a payment intent by id or key; FAILED_PRECONDITION when it is paid. */
static hm_status_t cancel_intent(hm_call_t *call, hm_arena_t *arena, const char *id,
                                 const char *key, const char *reason)
{
    Hospitality__Partner__V1__CancelPaymentIntentRequest req =
        HOSPITALITY__PARTNER__V1__CANCEL_PAYMENT_INTENT_REQUEST__INIT;
    if (id && *id) {
        req.target_case =
            HOSPITALITY__PARTNER__V1__CANCEL_PAYMENT_INTENT_REQUEST__TARGET_PAYMENT_INTENT_ID;
        req.payment_intent_id = (char *)id;
    } else {
        req.target_case =
            HOSPITALITY__PARTNER__V1__CANCEL_PAYMENT_INTENT_REQUEST__TARGET_IDEMPOTENCY_KEY;
        req.idempotency_key = (char *)key;
    }
    req.reason = (char *)reason;
    ProtobufCMessage *out;
    hm_status_t st = bk_partner(
        call, arena, BK_PAYMENT, "/hospitality.partner.v1.PaymentService/CancelPaymentIntent",
        &req.base, &hospitality__partner__v1__cancel_payment_intent_response__descriptor, &out);
    return st.code == HM_CODE_NOT_FOUND ? HM_STATUS_OK : st;
}

static hm_status_t reserve(hm_call_t *call, const char *key, const char *venue, const char *item,
                           const bk_slot_t *slot, int party, const char *booking_id,
                           const Hospitality__Partner__V1__Reservation **out)
{
    reserve_req_t req = HOSPITALITY__PARTNER__V1__RESERVE_REQUEST__INIT;
    req.reservation_key = (char *)key;
    req.venue_id = (char *)venue;
    req.inventory_item_id = (char *)(item ? item : "");
    req.window = bk_range(&call->arena, slot->start_us, slot->end_us);
    req.party_size = party;
    req.booking_id = (char *)booking_id;
    ProtobufCMessage *resp = NULL;
    hm_status_t st = bk_partner(call, &call->arena, BK_INVENTORY,
                                "/hospitality.partner.v1.InventoryService/Reserve", &req.base,
                                &hospitality__partner__v1__reserve_response__descriptor, &resp);
    if (!hm_status_ok(st))
        return st;
    const Hospitality__Partner__V1__ReserveResponse *r = (const void *)resp;
    if (!r->reservation ||
        r->reservation->status !=
            HOSPITALITY__PARTNER__V1__RESERVATION_STATUS__RESERVATION_STATUS_HELD ||
        !*r->reservation->reservation_id)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "inventory service returned a hold that is not held");
    *out = r->reservation;
    return HM_STATUS_OK;
}

static hm_status_t create_intent(hm_call_t *call, const char *key, int64_t amount,
                                 const char *currency, const char *booking_id, const char *guest,
                                 const char *reference,
                                 const Hospitality__Partner__V1__PaymentIntent **out)
{
    Hospitality__Partner__V1__CreatePaymentIntentRequest req =
        HOSPITALITY__PARTNER__V1__CREATE_PAYMENT_INTENT_REQUEST__INIT;
    req.idempotency_key = (char *)key;
    req.amount = bk_money(&call->arena, amount, currency);
    req.booking_id = (char *)booking_id;
    req.guest_id = (char *)guest;
    req.description = (char *)reference;
    ProtobufCMessage *resp = NULL;
    hm_status_t st =
        bk_partner(call, &call->arena, BK_PAYMENT,
                   "/hospitality.partner.v1.PaymentService/CreatePaymentIntent", &req.base,
                   &hospitality__partner__v1__create_payment_intent_response__descriptor, &resp);
    if (!hm_status_ok(st))
        return st;
    const Hospitality__Partner__V1__CreatePaymentIntentResponse *r = (const void *)resp;
    if (!r->payment_intent || !*r->payment_intent->payment_intent_id ||
        r->payment_intent->status ==
            HOSPITALITY__PARTNER__V1__PAYMENT_INTENT_STATUS__PAYMENT_INTENT_STATUS_CANCELLED)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "payment service returned a cancelled payment intent");
    *out = r->payment_intent;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Conflicts */

static const hm_stmt_t st_conflict = {
    "bk_conflict",
    "SELECT booking_id::text, inventory_item_id, status, " BK_TS("lower(period)") ", " BK_TS(
        "upper(period)") " FROM bk_bookings WHERE venue_id = $1 AND inventory_item_id = $2 AND "
                         "period && tstzrange(to_timestamp($3::bigint / 1000000.0), "
                         "to_timestamp($4::bigint / 1000000.0)) AND status IN (1, 2, 3) AND "
                         "booking_id::text <> $5 ORDER BY lower(period) LIMIT 1",
    5};

hm_status_t bk_conflict_status(hm_call_t *call, hm_db_t *db, const char *venue, const char *item,
                               int64_t start_us, int64_t end_us, const char *exclude)
{
    const char *p[5] = {venue, item, hm_db_param_int64(&call->arena, start_us),
                        hm_db_param_int64(&call->arena, end_us), exclude ? exclude : ""};
    PGresult *r;
    int rc = hm_db_exec_arena(db, &call->arena, &st_conflict, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "conflict");
    if (PQntuples(r) == 0)
        return HM_STATUS_OK;
    hm_status_t st = hm_call_error(
        call, HM_CODE_ALREADY_EXISTS, "BOOKING_CONFLICT",
        "inventory item %s is already booked for [%s, %s) (booking %s, %s)", hm_db_get(r, 0, 1),
        bk_iso(&call->arena, bk_i64(r, 0, 3)), bk_iso(&call->arena, bk_i64(r, 0, 4)),
        hm_db_get(r, 0, 0), bk_status_name((int)bk_i64(r, 0, 2)));
    st.field = "inventory_item_id";
    return st;
}

/* Maps a partner failure to the caller's status. */
static hm_status_t partner_failure(hm_call_t *call, hm_status_t st, const char *what)
{
    switch (st.code) {
    case HM_CODE_FAILED_PRECONDITION:
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION", "%s: %s",
                             what, st.message ? st.message : "refused");
    case HM_CODE_INVALID_ARGUMENT:
        return hm_call_error(call, HM_CODE_INVALID_ARGUMENT, "VALIDATION_FAILED", "%s: %s", what,
                             st.message ? st.message : "refused");
    default:
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "%s: partner unavailable (%s)", what, hm_code_name(st.code));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Create */

static const hm_stmt_t st_insert = {
    "bk_insert",
    "INSERT INTO bk_bookings (booking_id, reference, idempotency_key, guest_id, guest_name, "
    "guest_email, guest_phone, venue_id, venue_type, venue_name, time_zone, booking_date, "
    "booking_time, duration_minutes, nights, period, party_size, status, currency, base_price, "
    "tax_amount, discount_amount, total_price, pricing_defaulted, promotion_code, quote_id, "
    "inventory_reservation_id, inventory_item_id, special_requests, source, metadata, "
    "expires_at) VALUES ($1::uuid, $2, $3, $4::uuid, $5, $6, $7, $8, $9::smallint, '', $10, "
    "$11::date, $12::time, $13::int, $14::int, tstzrange(to_timestamp($15::bigint / 1000000.0), "
    "to_timestamp($16::bigint / 1000000.0)), $17::int, 1, $18, $19::bigint, $20::bigint, "
    "$21::bigint, $22::bigint, $23::boolean, $24, $25, $26, $27, $28, $29::smallint, $30::jsonb, "
    "clock_timestamp() + make_interval(secs => $31::bigint / 1000.0))",
    31};
static const hm_stmt_t st_drop_provisional = {
    "bk_drop_provisional", "DELETE FROM bk_bookings WHERE booking_id = $1::uuid AND provisional",
    1};
static const hm_stmt_t st_finalize = {
    "bk_finalize",
    "UPDATE bk_bookings SET provisional = false, payment_intent_id = $2, payment_status = "
    "$3::smallint, updated_at = clock_timestamp() WHERE booking_id = $1::uuid AND provisional "
    "RETURNING " BK_COLS,
    3};

typedef struct create_tx {
    hm_call_t *call;
    const char **params;
    int *lens, *fmts;
    const char *reserve_detail, *record_detail, *payment_detail;
    /* finalize */
    const char *booking_id, *saga, *intent;
    int paystatus;
    bk_idem_t *idem;
    bk_booking_t *b;
} create_tx_t;

static int insert_fn(hm_db_t *db, void *arg)
{
    create_tx_t *t = arg;
    int rc = hm_db_exec(db, &st_insert, t->params, t->lens, t->fmts, NULL);
    if (rc == 0)
        rc = step_tx(db, t->saga, "reserve", "done", t->reserve_detail);
    if (rc == 0)
        rc = step_tx(db, t->saga, "record", "done", t->record_detail);
    return rc;
}

static int finalize_fn(hm_db_t *db, void *arg)
{
    create_tx_t *t = arg;
    hm_call_t *call = t->call;
    const char *p[3] = {t->booking_id, t->intent, hm_db_param_int64(&call->arena, t->paystatus)};
    PGresult *r;
    int rc = hm_db_exec_arena(db, &call->arena, &st_finalize, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) != 1)
        return HM_ECONFLICT; /* compensated by recovery meanwhile */
    if (!(t->b = bk_booking_from_row(&call->arena, call->crypto, r, 0)))
        return HM_ECRYPTO;
    Hospitality__Common__V1__Actor *actor = bk_actor(call);
    if ((rc = bk_record_history(db, &call->arena, t->booking_id, 0, BK_PENDING, actor->type,
                                actor->id, "created")) != 0)
        return rc;
    Hospitality__Events__V1__BookingCreated ev = HOSPITALITY__EVENTS__V1__BOOKING_CREATED__INIT;
    ev.booking = bk_summary(&call->arena, t->b);
    ev.pricing_defaulted = t->b->pricing_defaulted;
    if ((rc = hm_call_publish(call, db, "booking.created", t->b->guest_id, &ev.base)) != 0)
        return rc;
    Hospitality__Booking__V1__CreateBookingResponse resp =
        HOSPITALITY__BOOKING__V1__CREATE_BOOKING_RESPONSE__INIT;
    resp.booking = t->b;
    if ((rc = bk_idem_finish(call, db, t->idem, HM_STATUS_OK, &resp.base, t->booking_id)) != 0)
        return rc;
    if (t->payment_detail && (rc = step_tx(db, t->saga, "payment", "done", t->payment_detail)) != 0)
        return rc;
    if ((rc = step_tx(db, t->saga, "finish", "done", NULL)) != 0)
        return rc;
    return saga_end(db, t->saga, "done");
}

/* How far a create saga got: which partner calls its compensation must undo. Recovery does
 * not know (the step log may lag the partner) and undoes both: by key, both are harmless when
 * nothing was made (the partner keeps a tombstone). */
enum { REACHED_RESERVE = 1, REACHED_PAYMENT = 2 };

/* Compensates a create saga: intent cancelled and hold released by key, provisional row
 * dropped, saga marked compensated. 0, or the error that leaves it for recovery. */
static int compensate_create(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *saga,
                             const char *booking_id, const char *rkey, const char *pkey,
                             int reached)
{
    hm_status_t st = HM_STATUS_OK;
    if (reached >= REACHED_PAYMENT)
        st = cancel_intent(call, arena, NULL, pkey, "booking saga compensation");
    if (!hm_status_ok(st) && st.code != HM_CODE_FAILED_PRECONDITION) {
        step(db, saga, "compensate", "failed", jobj(arena, "payment", hm_code_name(st.code), NULL));
        return HM_EUNAVAIL;
    }
    st = release(call, arena, NULL, rkey, "booking saga compensation");
    if (!hm_status_ok(st)) {
        step(db, saga, "compensate", "failed",
             jobj(arena, "inventory", hm_code_name(st.code), NULL));
        return HM_EUNAVAIL;
    }
    const char *p[1] = {booking_id};
    int rc = hm_db_exec(db, &st_drop_provisional, p, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    step(db, saga, "compensate", "done", NULL);
    rc = saga_end(db, saga, "compensated");
    return rc == HM_ECONFLICT ? 0 : rc;
}

static char *new_reference(hm_arena_t *arena, const bk_slot_t *slot)
{
    static const char alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    unsigned char r[6];
    hm_random_bytes(r, sizeof r);
    char code[7];
    for (int i = 0; i < 6; i++)
        code[i] = alphabet[r[i] % 32];
    code[6] = 0;
    return hm_arena_printf(arena, "BR-%.4s%.2s%.2s-%s", slot->date, slot->date + 5, slot->date + 8,
                           code);
}

static char *metadata_json(hm_arena_t *arena,
                           Hospitality__Booking__V1__CreateBookingRequest__MetadataEntry **e,
                           size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(o, e[i]->key, json_string(e[i]->value));
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    char *r = hm_arena_strdup(arena, s ? s : "{}");
    free(s);
    return r;
}

/* Ends a saga's ownership: the advisory lock is dropped on every path. */
#define SAGA_RETURN(st_)                                                                           \
    do {                                                                                           \
        hm_status_t r_ = (st_);                                                                    \
        unlock(db, saga);                                                                          \
        return r_;                                                                                 \
    } while (0)

/* A failure after the saga started: compensate, store the outcome, answer. */
static hm_status_t create_fail(hm_call_t *call, const char *saga, const char *booking_id,
                               const char *rkey, const char *pkey, bk_idem_t *idem, int reached,
                               hm_status_t st)
{
    hm_db_t *db = call->db;
    if (compensate_create(call, db, &call->arena, saga, booking_id, rkey, pkey, reached) != 0)
        HM_WARN("saga %s: compensation incomplete, left to recovery", saga);
    bk_idem_finish(call, db, idem, st, NULL, NULL);
    SAGA_RETURN(st);
}

hm_status_t bk_create_saga(hm_call_t *call,
                           const Hospitality__Booking__V1__CreateBookingRequest *req,
                           const bk_slot_t *slot, bk_idem_t *idem, bk_booking_t **out)
{
    hm_db_t *db = call->db;
    char booking_id[HM_UUID_LEN + 1], saga[HM_UUID_LEN + 1];
    hm_uuid_v4(booking_id);
    hm_uuid_v4(saga);
    const char *rkey = hm_arena_printf(&call->arena, "bk:%s:create:reserve", booking_id);
    const char *pkey = hm_arena_printf(&call->arena, "bk:%s:create:pay", booking_id);

    /* Availability in our own books first: a known conflict costs no partner call. */
    if (*req->inventory_item_id) {
        hm_status_t st = bk_conflict_status(call, db, req->venue_id, req->inventory_item_id,
                                            slot->start_us, slot->end_us, NULL);
        if (!hm_status_ok(st)) {
            bk_idem_finish(call, db, idem, st, NULL, NULL);
            return st;
        }
    }

    /* 1. price (nothing to undo: before the saga) */
    bk_quote_t q;
    bk_price(call, req->venue_id, req->venue_type, req->inventory_item_id, slot, req->party_size,
             req->promotion_code, req->guest_id, &q);

    /* The saga: lock first (recovery must never see it unowned), then the row with its keys,
     * committed before the first partner call that must be undone on failure. */
    const char *lp[1] = {saga};
    int rc = hm_db_exec(db, &st_saga_lock, lp, NULL, NULL, NULL);
    if (rc != 0)
        return hm_call_fail(call, rc, "saga");
    const char *sp[8] = {saga,
                         booking_id,
                         "create",
                         jobj(&call->arena, "reservation_key", rkey, "payment_key", pkey,
                              "quote_id", q.quote_id, "total",
                              hm_db_param_int64(&call->arena, q.total), NULL),
                         idem->key ? idem->scope : NULL,
                         idem->key,
                         "quote",
                         q.defaulted ? "defaulted" : "done"};
    if ((rc = hm_db_exec(db, &st_saga_new, sp, NULL, NULL, NULL)) != 0)
        SAGA_RETURN(hm_call_fail(call, rc, "saga"));

    /* 2. reserve */
    const Hospitality__Partner__V1__Reservation *res = NULL;
    hm_status_t st = reserve(call, rkey, req->venue_id, req->inventory_item_id, slot,
                             req->party_size, booking_id, &res);
    if (!hm_status_ok(st)) {
        step(db, saga, "reserve", "failed",
             jobj(&call->arena, "code", hm_code_name(st.code), NULL));
        return create_fail(call, saga, booking_id, rkey, pkey, idem, REACHED_RESERVE,
                           partner_failure(call, st, "inventory reservation failed"));
    }
    const char *reserve_detail = jobj(&call->arena, "reservation_id", res->reservation_id,
                                      "inventory_item_id", res->inventory_item_id, NULL);

    /* 3. the booking record (provisional): the exclusion constraint decides overlaps */
    const char *name, *email, *phone;
    int nl, el, pl;
    if (bk_seal(call, "name", booking_id, req->guest_name, &name, &nl) != 0 ||
        bk_seal(call, "email", booking_id, req->guest_email, &email, &el) != 0 ||
        bk_seal(call, "phone", booking_id, req->guest_phone, &phone, &pl) != 0)
        return create_fail(call, saga, booking_id, rkey, pkey, idem, REACHED_RESERVE,
                           hm_call_fail(call, HM_ECRYPTO, "seal personal data"));
    const char *reference = NULL;
    for (int attempt = 0; attempt < 4; attempt++) {
        reference = new_reference(&call->arena, slot);
        const char *p[31] = {
            booking_id,
            reference,
            idem->key ? idem->key : "",
            req->guest_id,
            name,
            email,
            phone,
            req->venue_id,
            hm_db_param_int64(&call->arena, req->venue_type),
            bk_cfg.time_zone,
            slot->date,
            slot->time,
            hm_db_param_int64(&call->arena, slot->duration_minutes),
            hm_db_param_int64(&call->arena, slot->nights),
            hm_db_param_int64(&call->arena, slot->start_us),
            hm_db_param_int64(&call->arena, slot->end_us),
            hm_db_param_int64(&call->arena, req->party_size),
            q.currency,
            hm_db_param_int64(&call->arena, q.base),
            hm_db_param_int64(&call->arena, q.tax),
            hm_db_param_int64(&call->arena, q.discount),
            hm_db_param_int64(&call->arena, q.total),
            hm_db_param_bool(q.defaulted),
            req->promotion_code,
            q.quote_id ? q.quote_id : "",
            res->reservation_id,
            res->inventory_item_id,
            req->special_requests,
            hm_db_param_int64(&call->arena, req->source),
            metadata_json(&call->arena, req->metadata, req->n_metadata),
            hm_db_param_int64(&call->arena, bk_cfg.pending_ttl_ms),
        };
        int lens[31] = {0}, fmts[31] = {0};
        lens[4] = nl, lens[5] = el, lens[6] = pl;
        fmts[4] = fmts[5] = fmts[6] = 1;
        create_tx_t t = {.call = call,
                         .params = p,
                         .lens = lens,
                         .fmts = fmts,
                         .saga = saga,
                         .reserve_detail = reserve_detail,
                         .record_detail = jobj(&call->arena, "reference", reference, NULL)};
        rc = hm_db_tx(db, insert_fn, &t, HM_DB_READ_COMMITTED);
        if (rc == HM_EEXIST && strcmp(hm_db_last_constraint(db), "bk_no_overlap") != 0)
            continue; /* reference taken: draw another */
        break;
    }
    if (rc == HM_EEXIST) {
        step(db, saga, "record", "conflict", NULL);
        hm_status_t c = bk_conflict_status(call, db, req->venue_id, res->inventory_item_id,
                                           slot->start_us, slot->end_us, booking_id);
        if (hm_status_ok(c))
            c = hm_call_error(call, HM_CODE_ALREADY_EXISTS, "BOOKING_CONFLICT",
                              "inventory item %s is already booked for an overlapping window",
                              res->inventory_item_id);
        return create_fail(call, saga, booking_id, rkey, pkey, idem, REACHED_RESERVE, c);
    }
    if (rc != 0)
        return create_fail(call, saga, booking_id, rkey, pkey, idem, REACHED_RESERVE,
                           hm_call_fail(call, rc, "store booking"));

    /* 4. payment intent */
    const char *intent_id = "", *payment_detail = NULL;
    int paystatus = HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_NOT_REQUIRED;
    if (q.total > 0) {
        const Hospitality__Partner__V1__PaymentIntent *pi = NULL;
        st = create_intent(call, pkey, q.total, q.currency, booking_id, req->guest_id, reference,
                           &pi);
        if (!hm_status_ok(st)) {
            step(db, saga, "payment", "failed",
                 jobj(&call->arena, "code", hm_code_name(st.code), NULL));
            return create_fail(
                call, saga, booking_id, rkey, pkey, idem, REACHED_PAYMENT,
                partner_failure(call, st,
                                "payment intent failed (inventory released, no booking made)"));
        }
        intent_id = pi->payment_intent_id;
        paystatus = HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_PENDING;
        payment_detail = jobj(&call->arena, "payment_intent_id", intent_id, NULL);
    }

    /* 5. visible booking + history + event + idempotency outcome + saga done, atomically */
    create_tx_t t = {.call = call,
                     .booking_id = booking_id,
                     .saga = saga,
                     .intent = intent_id,
                     .paystatus = paystatus,
                     .payment_detail = payment_detail,
                     .idem = idem};
    rc = hm_db_tx(db, finalize_fn, &t, HM_DB_READ_COMMITTED);
    if (rc == HM_EUNAVAIL) {
        /* Outcome unknown (the commit may have happened): recovery decides from the row. */
        SAGA_RETURN(hm_call_fail(call, rc, "finish booking"));
    }
    if (rc != 0)
        return create_fail(call, saga, booking_id, rkey, pkey, idem, REACHED_PAYMENT,
                           hm_call_fail(call, rc, "finish booking"));
    bk_metric_booking("created", req->venue_type, q.total);
    bk_avail_invalidate(call->cache, &call->arena, req->venue_id);
    *out = t.b;
    SAGA_RETURN(HM_STATUS_OK);
}

/* ------------------------------------------------------------------------------------------ */
/* Update */

static const hm_stmt_t st_unclaim = {
    "bk_unclaim",
    "UPDATE bk_bookings SET saga_id = NULL WHERE booking_id = $1::uuid AND saga_id = "
    "$2::uuid",
    2};
static const hm_stmt_t st_apply = {
    "bk_apply",
    "UPDATE bk_bookings SET guest_name = $3, guest_email = $4, guest_phone = $5, booking_date = "
    "$6::date, booking_time = $7::time, duration_minutes = $8::int, nights = $9::int, period = "
    "tstzrange(to_timestamp($10::bigint / 1000000.0), to_timestamp($11::bigint / 1000000.0)), "
    "party_size = $12::int, inventory_item_id = $13, inventory_reservation_id = $14, "
    "special_requests = $15, internal_notes = $16, metadata = $17::jsonb, base_price = "
    "$18::bigint, tax_amount = $19::bigint, discount_amount = $20::bigint, total_price = "
    "$21::bigint, pricing_defaulted = $22::boolean, quote_id = $23, payment_intent_id = $24, "
    "payment_status = $25::smallint, currency = $26, version = version + 1, updated_at = "
    "clock_timestamp(), saga_id = NULL WHERE booking_id = $1::uuid AND ((saga_id::text = $2) "
    "OR ($2::text = '' AND saga_id IS NULL AND version = $27::bigint AND status IN (1, 2, 3))) "
    "RETURNING " BK_COLS,
    27};
static const hm_stmt_t st_action_add = {
    "bk_action_add",
    "INSERT INTO bk_partner_actions (booking_id, kind, target, key, reason) VALUES ($1::uuid, $2, "
    "$3, $4, $5)",
    5};

typedef struct update_tx {
    hm_call_t *call;
    const char **params;
    int *lens, *fmts;
    const bk_booking_t *cur;
    const char *saga;
    bool release_old, settle_old;
    const char **changed;
    size_t nchanged;
    const char *reserve_detail, *payment_detail;
    bk_idem_t *idem;
    bk_booking_t *b;
} update_tx_t;

static int add_action(hm_db_t *db, const char *booking, const char *kind, const char *target,
                      const char *key, const char *reason)
{
    const char *p[5] = {booking, kind, target, key, reason};
    return hm_db_exec(db, &st_action_add, p, NULL, NULL, NULL);
}

int bk_actions_add(hm_db_t *db, hm_arena_t *arena, const bk_booking_t *b, const char *reason,
                   bool settle)
{
    int rc = 0;
    if (*b->inventory_reservation_id)
        rc = add_action(db, b->booking_id, "release", b->inventory_reservation_id, "", reason);
    if (rc == 0 && settle && *b->payment_intent_id)
        rc = add_action(
            db, b->booking_id, "settle", b->payment_intent_id,
            hm_arena_printf(arena, "bk:%s:refund:%s", b->booking_id, b->payment_intent_id), reason);
    return rc;
}

static int apply_fn(hm_db_t *db, void *arg)
{
    update_tx_t *t = arg;
    hm_call_t *call = t->call;
    PGresult *r;
    int rc = hm_db_exec_arena(db, &call->arena, &st_apply, t->params, t->lens, t->fmts, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) != 1)
        return HM_ECONFLICT;
    if (!(t->b = bk_booking_from_row(&call->arena, call->crypto, r, 0)))
        return HM_ECRYPTO;
    const bk_booking_t *cur = t->cur;
    if (t->release_old &&
        (rc = add_action(db, cur->booking_id, "release", cur->inventory_reservation_id, "",
                         "booking moved")) != 0)
        return rc;
    if (t->settle_old && (rc = add_action(db, cur->booking_id, "settle", cur->payment_intent_id,
                                          hm_arena_printf(&call->arena, "bk:%s:refund:%s",
                                                          cur->booking_id, cur->payment_intent_id),
                                          "booking re-priced")) != 0)
        return rc;
    Hospitality__Events__V1__BookingUpdated ev = HOSPITALITY__EVENTS__V1__BOOKING_UPDATED__INIT;
    ev.booking = bk_summary(&call->arena, t->b);
    ev.previous = bk_summary(&call->arena, cur);
    ev.changed_fields = (char **)t->changed;
    ev.n_changed_fields = t->nchanged;
    if ((rc = hm_call_publish(call, db, "booking.updated", t->b->guest_id, &ev.base)) != 0)
        return rc;
    Hospitality__Booking__V1__UpdateBookingResponse resp =
        HOSPITALITY__BOOKING__V1__UPDATE_BOOKING_RESPONSE__INIT;
    resp.booking = t->b;
    if ((rc = bk_idem_finish(call, db, t->idem, HM_STATUS_OK, &resp.base, cur->booking_id)) != 0)
        return rc;
    if (!*t->saga)
        return 0;
    if (t->reserve_detail && (rc = step_tx(db, t->saga, "reserve", "done", t->reserve_detail)) != 0)
        return rc;
    if (t->payment_detail && (rc = step_tx(db, t->saga, "payment", "done", t->payment_detail)) != 0)
        return rc;
    if ((rc = step_tx(db, t->saga, "finish", "done", NULL)) != 0)
        return rc;
    return saga_end(db, t->saga, "done");
}

/* Why a claim or a plain update found nothing: stale version, busy or not changeable. */
static hm_status_t why_not(hm_call_t *call, const char *booking_id, int64_t expected)
{
    bk_booking_t *b;
    PGresult *r;
    int rc = bk_load(call->db, &call->arena, call->crypto, booking_id, false, &b, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "load booking");
    if (b->version != expected)
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                             "booking is at version %lld, not %lld: reload and retry",
                             (long long)b->version, (long long)expected);
    if (hm_db_get(r, 0, BKC_SAGA) && *hm_db_get(r, 0, BKC_SAGA))
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                             "booking is being changed by another request: retry");
    return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                         "a %s booking cannot be changed", bk_status_name(b->status));
}

static int compensate_update(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *saga,
                             const char *booking_id, const char *rkey, const char *pkey)
{
    hm_status_t st = cancel_intent(call, arena, NULL, pkey, "booking update compensation");
    if (!hm_status_ok(st) && st.code != HM_CODE_FAILED_PRECONDITION)
        return HM_EUNAVAIL;
    st = release(call, arena, NULL, rkey, "booking update compensation");
    if (!hm_status_ok(st))
        return HM_EUNAVAIL;
    const char *p[2] = {booking_id, saga};
    int rc = hm_db_exec(db, &st_unclaim, p, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    step(db, saga, "compensate", "done", NULL);
    rc = saga_end(db, saga, "compensated");
    return rc == HM_ECONFLICT ? 0 : rc;
}

static hm_status_t update_fail(hm_call_t *call, const char *saga, const char *booking_id,
                               const char *rkey, const char *pkey, bk_idem_t *idem, hm_status_t st)
{
    hm_db_t *db = call->db;
    if (compensate_update(call, db, &call->arena, saga, booking_id, rkey, pkey) != 0)
        HM_WARN("saga %s: compensation incomplete, left to recovery", saga);
    bk_idem_finish(call, db, idem, st, NULL, NULL);
    SAGA_RETURN(st);
}

hm_status_t bk_update_saga(hm_call_t *call, const bk_booking_t *cur, bk_booking_t *next,
                           const bk_slot_t *slot, bool moved, const char **changed, size_t nchanged,
                           int64_t expected, bk_idem_t *idem, bk_booking_t **out)
{
    hm_db_t *db = call->db;
    const char *id = cur->booking_id;
    const char *name, *email, *phone;
    int nl, el, pl;
    if (bk_seal(call, "name", id, next->guest_name, &name, &nl) != 0 ||
        bk_seal(call, "email", id, next->guest_email, &email, &el) != 0 ||
        bk_seal(call, "phone", id, next->guest_phone, &phone, &pl) != 0)
        return hm_call_fail(call, HM_ECRYPTO, "seal personal data");
    json_t *md = json_object();
    for (size_t i = 0; i < next->n_metadata; i++)
        json_object_set_new(md, next->metadata[i]->key, json_string(next->metadata[i]->value));
    char *mds = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(md);
    const char *metadata = hm_arena_strdup(&call->arena, mds ? mds : "{}");
    free(mds);

    char saga[HM_UUID_LEN + 1] = "";
    const char *rkey = "", *pkey = "", *reserve_detail = NULL, *payment_detail = NULL;
    bool release_old = false, settle_old = false;
    const char *reservation = cur->inventory_reservation_id, *item = next->inventory_item_id;
    const char *intent = cur->payment_intent_id;
    int paystatus = cur->payment_status;
    bk_quote_t q = {.base = cur->base_price->amount_minor,
                    .tax = cur->tax_amount->amount_minor,
                    .discount = cur->discount_amount->amount_minor,
                    .total = cur->total_price->amount_minor,
                    .quote_id = "",
                    .defaulted = cur->pricing_defaulted};
    snprintf(q.currency, sizeof q.currency, "%s", cur->total_price->currency);

    if (moved) {
        hm_uuid_v4(saga);
        /* keys per attempt: a compensated attempt's keys are tombstones at the partner */
        rkey = hm_arena_printf(&call->arena, "bk:%s:update:%s:reserve", id, saga);
        pkey = hm_arena_printf(&call->arena, "bk:%s:update:%s:pay", id, saga);
        hm_status_t st =
            bk_conflict_status(call, db, cur->venue_id, item, slot->start_us, slot->end_us, id);
        if (!hm_status_ok(st)) {
            bk_idem_finish(call, db, idem, st, NULL, NULL);
            return st;
        }
        /* re-price first: a quote needs no undoing */
        bk_price(call, cur->venue_id, cur->venue_type, item, slot, next->party_size,
                 cur->promotion_code, cur->guest_id, &q);
        const char *lp[1] = {saga};
        int rc = hm_db_exec(db, &st_saga_lock, lp, NULL, NULL, NULL);
        if (rc != 0)
            return hm_call_fail(call, rc, "saga");
        const char *sp[6] = {saga,
                             id,
                             jobj(&call->arena, "reservation_key", rkey, "payment_key", pkey,
                                  "base_version", hm_db_param_int64(&call->arena, expected),
                                  "total", hm_db_param_int64(&call->arena, q.total), "quote",
                                  q.defaulted ? "defaulted" : "done", NULL),
                             idem->key ? idem->scope : NULL,
                             idem->key,
                             hm_db_param_int64(&call->arena, expected)};
        PGresult *r;
        rc = hm_db_exec_arena(db, &call->arena, &st_saga_claim, sp, NULL, NULL, &r);
        if (rc != 0 || PQntuples(r) != 1) {
            hm_status_t why =
                rc != 0 ? hm_call_fail(call, rc, "claim booking") : why_not(call, id, expected);
            bk_idem_finish(call, db, idem, why, NULL, NULL);
            SAGA_RETURN(why);
        }
        /* re-reserve */
        const Hospitality__Partner__V1__Reservation *res = NULL;
        st = reserve(call, rkey, cur->venue_id, item, slot, next->party_size, id, &res);
        if (!hm_status_ok(st)) {
            step(db, saga, "reserve", "failed",
                 jobj(&call->arena, "code", hm_code_name(st.code), NULL));
            return update_fail(call, saga, id, rkey, pkey, idem,
                               partner_failure(call, st,
                                               "moving the inventory reservation failed "
                                               "(booking unchanged)"));
        }
        reservation = res->reservation_id;
        item = res->inventory_item_id;
        release_old = *cur->inventory_reservation_id != 0;
        reserve_detail = jobj(&call->arena, "reservation_id", reservation, NULL);
        /* a new payment intent for a new price (the old one is settled after the commit) */
        if (q.total != cur->total_price->amount_minor && q.total > 0 &&
            cur->payment_status != HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_PAID) {
            const Hospitality__Partner__V1__PaymentIntent *pi = NULL;
            st = create_intent(call, pkey, q.total, q.currency, id, cur->guest_id,
                               cur->booking_reference, &pi);
            if (!hm_status_ok(st)) {
                step(db, saga, "payment", "failed",
                     jobj(&call->arena, "code", hm_code_name(st.code), NULL));
                return update_fail(call, saga, id, rkey, pkey, idem,
                                   partner_failure(call, st,
                                                   "new payment intent failed "
                                                   "(booking unchanged)"));
            }
            settle_old = *cur->payment_intent_id != 0;
            intent = pi->payment_intent_id;
            paystatus = HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_PENDING;
            payment_detail = jobj(&call->arena, "payment_intent_id", intent, NULL);
        }
    }

    const char *p[27] = {
        id,
        saga,
        name,
        email,
        phone,
        slot->date,
        slot->time,
        hm_db_param_int64(&call->arena, slot->duration_minutes),
        hm_db_param_int64(&call->arena, slot->nights),
        hm_db_param_int64(&call->arena, slot->start_us),
        hm_db_param_int64(&call->arena, slot->end_us),
        hm_db_param_int64(&call->arena, next->party_size),
        item,
        reservation,
        next->special_requests,
        next->internal_notes,
        metadata,
        hm_db_param_int64(&call->arena, q.base),
        hm_db_param_int64(&call->arena, q.tax),
        hm_db_param_int64(&call->arena, q.discount),
        hm_db_param_int64(&call->arena, q.total),
        hm_db_param_bool(q.defaulted),
        q.quote_id ? q.quote_id : "",
        intent,
        hm_db_param_int64(&call->arena, paystatus),
        q.currency,
        hm_db_param_int64(&call->arena, expected),
    };
    int lens[27] = {0}, fmts[27] = {0};
    lens[2] = nl, lens[3] = el, lens[4] = pl;
    fmts[2] = fmts[3] = fmts[4] = 1;
    update_tx_t t = {.call = call,
                     .params = p,
                     .lens = lens,
                     .fmts = fmts,
                     .cur = cur,
                     .saga = saga,
                     .release_old = release_old,
                     .settle_old = settle_old,
                     .changed = changed,
                     .nchanged = nchanged,
                     .reserve_detail = reserve_detail,
                     .payment_detail = payment_detail,
                     .idem = idem};
    int rc = hm_db_tx(db, apply_fn, &t, HM_DB_READ_COMMITTED);
    if (!moved) {
        if (rc == HM_ECONFLICT) {
            hm_status_t why = why_not(call, id, expected);
            bk_idem_finish(call, db, idem, why, NULL, NULL);
            return why;
        }
        if (rc != 0)
            return hm_call_fail(call, rc, "update booking");
        *out = t.b;
        bk_avail_invalidate(call->cache, &call->arena, cur->venue_id);
        return HM_STATUS_OK;
    }
    if (rc == HM_EEXIST) {
        hm_status_t c =
            bk_conflict_status(call, db, cur->venue_id, item, slot->start_us, slot->end_us, id);
        if (hm_status_ok(c))
            c = hm_call_error(call, HM_CODE_ALREADY_EXISTS, "BOOKING_CONFLICT",
                              "the new window overlaps another booking of %s", item);
        return update_fail(call, saga, id, rkey, pkey, idem, c);
    }
    if (rc == HM_EUNAVAIL)
        SAGA_RETURN(hm_call_fail(call, rc, "update booking"));
    if (rc != 0)
        return update_fail(call, saga, id, rkey, pkey, idem,
                           hm_call_fail(call, rc, "update booking"));
    bk_avail_invalidate(call->cache, &call->arena, cur->venue_id);
    bk_actions_run(call, db, &call->arena, id, NULL, NULL);
    *out = t.b;
    SAGA_RETURN(HM_STATUS_OK);
}

/* ------------------------------------------------------------------------------------------ */
/* Partner actions */

static const hm_stmt_t st_actions_claim = {
    "bk_actions_claim",
    "UPDATE bk_partner_actions SET attempts = attempts + 1, next_at = clock_timestamp() + "
    "interval '30 seconds' WHERE action_id IN (SELECT action_id FROM bk_partner_actions WHERE "
    "done_at IS NULL AND next_at <= clock_timestamp() AND ($1 = '' OR booking_id::text = $1) "
    "ORDER BY action_id LIMIT 20 FOR UPDATE SKIP LOCKED) RETURNING action_id, booking_id::text, "
    "kind, target, key, reason, attempts",
    1};
static const hm_stmt_t st_action_done = {
    "bk_action_done",
    "UPDATE bk_partner_actions SET done_at = clock_timestamp(), result = $2 WHERE action_id = "
    "$1::bigint",
    2};
static const hm_stmt_t st_action_retry = {
    "bk_action_retry",
    "UPDATE bk_partner_actions SET next_at = clock_timestamp() + make_interval(secs => "
    "least(power(2, attempts), 60)), last_error = $2 WHERE action_id = $1::bigint",
    2};
static const hm_stmt_t st_paystatus = {
    "bk_paystatus",
    "UPDATE bk_bookings SET payment_status = $3::smallint, refund_id = CASE WHEN $4 = '' THEN "
    "refund_id ELSE $4 END WHERE booking_id = $1::uuid AND payment_intent_id = $2",
    4};

static hm_status_t settle(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *booking,
                          const char *intent, const char *key, const char *reason, char **refund_id,
                          int64_t *refunded)
{
    hm_status_t st = cancel_intent(call, arena, intent, NULL, reason);
    int paystatus = HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_CANCELLED;
    const char *rid = "";
    if (st.code == HM_CODE_FAILED_PRECONDITION) { /* paid: refund it */
        Hospitality__Partner__V1__RefundRequest req =
            HOSPITALITY__PARTNER__V1__REFUND_REQUEST__INIT;
        req.idempotency_key = (char *)key;
        req.payment_intent_id = (char *)intent;
        req.reason = (char *)reason;
        ProtobufCMessage *out = NULL;
        st = bk_partner(call, arena, BK_PAYMENT, "/hospitality.partner.v1.PaymentService/Refund",
                        &req.base, &hospitality__partner__v1__refund_response__descriptor, &out);
        if (!hm_status_ok(st))
            return st;
        const Hospitality__Partner__V1__RefundResponse *r = (const void *)out;
        paystatus = HOSPITALITY__BOOKING__V1__PAYMENT_STATUS__PAYMENT_STATUS_REFUNDED;
        rid = r->refund ? r->refund->refund_id : "";
        if (refund_id)
            *refund_id = (char *)rid;
        if (refunded && r->refund && r->refund->amount)
            *refunded = r->refund->amount->amount_minor;
    } else if (!hm_status_ok(st)) {
        return st;
    }
    const char *p[4] = {booking, intent, hm_db_param_int64(arena, paystatus), rid};
    hm_db_exec(db, &st_paystatus, p, NULL, NULL, NULL);
    return HM_STATUS_OK;
}

int bk_actions_run(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *booking_id,
                   char **refund_id, int64_t *refunded)
{
    const char *p[1] = {booking_id ? booking_id : ""};
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_actions_claim, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int failed = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *aid = hm_db_get(r, i, 0), *booking = hm_db_get(r, i, 1);
        const char *kind = hm_db_get(r, i, 2), *target = hm_db_get(r, i, 3);
        const char *key = hm_db_get(r, i, 4), *reason = hm_db_get(r, i, 5);
        hm_status_t st;
        if (strcmp(kind, "release") == 0)
            st = release(call, arena, target, NULL, reason);
        else
            st = settle(call, db, arena, booking, target, key, reason, refund_id, refunded);
        const char *q[2] = {aid, hm_status_ok(st) ? "ok" : hm_code_name(st.code)};
        hm_db_exec(db, hm_status_ok(st) ? &st_action_done : &st_action_retry, q, NULL, NULL, NULL);
        failed += !hm_status_ok(st);
    }
    return failed ? HM_EUNAVAIL : 0;
}

int bk_task_actions(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache, (void)app;
    return bk_actions_run(NULL, db, arena, NULL, NULL, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Recovery of interrupted sagas */

static const hm_stmt_t st_running = {
    "bk_running",
    "SELECT saga_id::text, booking_id::text, kind, data->>'reservation_key', "
    "data->>'payment_key', idem_scope, idem_key FROM bk_sagas WHERE state = 'running' ORDER BY "
    "created_at LIMIT 50",
    0};
static const hm_stmt_t st_saga_state = {"bk_saga_state",
                                        "SELECT state FROM bk_sagas WHERE saga_id = $1::uuid", 1};
static const hm_stmt_t st_idem_drop = {
    "bk_idem_drop", "DELETE FROM bk_idempotency WHERE scope = $1 AND key = $2 AND state = 0", 2};

int bk_task_recover(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache, (void)app;
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_running, NULL, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *saga = hm_db_get(r, i, 0), *booking = hm_db_get(r, i, 1);
        const char *kind = hm_db_get(r, i, 2), *rkey = hm_db_get(r, i, 3);
        const char *pkey = hm_db_get(r, i, 4);
        const char *lp[1] = {saga};
        PGresult *l;
        if (hm_db_exec_arena(db, arena, &st_saga_trylock, lp, NULL, NULL, &l) != 0 ||
            strcmp(hm_db_get(l, 0, 0), "t") != 0)
            continue; /* its owner is alive */
        PGresult *s;
        if (hm_db_exec_arena(db, arena, &st_saga_state, lp, NULL, NULL, &s) != 0 ||
            PQntuples(s) != 1 || strcmp(hm_db_get(s, 0, 0), "running") != 0) {
            unlock(db, saga);
            continue;
        }
        HM_WARN("saga %s (%s of booking %s) was interrupted: compensating", saga, kind, booking);
        step(db, saga, "recover", "started", NULL);
        int crc =
            strcmp(kind, "create") == 0
                ? compensate_create(NULL, db, arena, saga, booking, rkey, pkey, REACHED_PAYMENT)
                : compensate_update(NULL, db, arena, saga, booking, rkey, pkey);
        if (crc == 0 && hm_db_get(r, i, 6)) {
            const char *ip[2] = {hm_db_get(r, i, 5), hm_db_get(r, i, 6)};
            hm_db_exec(db, &st_idem_drop, ip, NULL, NULL, NULL);
        }
        if (crc != 0)
            HM_WARN("saga %s: recovery incomplete (%s), next run retries", saga, hm_strerror(crc));
        unlock(db, saga);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Expiry */

static const hm_stmt_t st_expire = {
    "bk_expire",
    "UPDATE bk_bookings SET status = 7, version = version + 1, updated_at = clock_timestamp() "
    "WHERE booking_id IN (SELECT booking_id FROM bk_bookings WHERE status = 1 AND NOT provisional "
    "AND saga_id IS NULL AND expires_at <= clock_timestamp() ORDER BY expires_at LIMIT 50 FOR "
    "UPDATE SKIP LOCKED) RETURNING " BK_COLS,
    0};

typedef struct expire_tx {
    hm_arena_t *arena;
    int n;
    bk_booking_t **b;
} expire_tx_t;

static int expire_fn(hm_db_t *db, void *arg)
{
    expire_tx_t *t = arg;
    PGresult *r;
    int rc = hm_db_exec_arena(db, t->arena, &st_expire, NULL, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    t->n = PQntuples(r);
    t->b = hm_arena_alloc(t->arena, (size_t)(t->n + 1) * sizeof(void *));
    Hospitality__Common__V1__Actor *sys = hm_arena_alloc(t->arena, sizeof *sys);
    hospitality__common__v1__actor__init(sys);
    sys->type = HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM;
    sys->id = "bookingd";
    for (int i = 0; i < t->n; i++) {
        /* PII is not needed here: decrypt nothing (crypto NULL leaves fields empty). */
        bk_booking_t *b = bk_booking_from_row(t->arena, NULL, r, i);
        t->b[i] = b;
        if ((rc = bk_record_history(db, t->arena, b->booking_id, BK_PENDING, BK_EXPIRED, sys->type,
                                    sys->id, "not confirmed before it expired")) != 0)
            return rc;
        if ((rc = bk_publish_transition(NULL, db, t->arena, NULL, b, BK_PENDING, BK_EXPIRED,
                                        sys)) != 0)
            return rc;
        if ((rc = bk_actions_add(db, t->arena, b, "booking expired", true)) != 0)
            return rc;
    }
    return 0;
}

int bk_task_expire(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)app;
    expire_tx_t t = {arena, 0, NULL};
    int rc = hm_db_tx(db, expire_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return rc;
    for (int i = 0; i < t.n; i++) {
        bk_metric_booking("expired", t.b[i]->venue_type, 0);
        bk_avail_invalidate(cache, arena, t.b[i]->venue_id);
    }
    if (t.n > 0) {
        HM_INFO("expired %d pending booking(s)", t.n);
        bk_actions_run(NULL, db, arena, NULL, NULL, NULL);
    }
    return 0;
}
