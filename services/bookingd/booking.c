/*
 * booking.c - the BookingService handlers: validation, authorization, idempotency keys, the
 * state machine and optimistic locking around the sagas of saga.c.
 */
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "bk.h"
#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/log.h"

typedef Hospitality__Booking__V1__CreateBookingRequest create_req_t;

static bool token(const char *s, size_t max)
{
    return s && hm_str_is_token(s, strlen(s), max);
}

static bool text_ok(const char *s, size_t max)
{
    return s && strlen(s) <= max && hm_utf8_valid(s);
}

static bool uuid_ok(const char *s)
{
    return s && hm_uuid_valid(s);
}

/* Staff-only and guest-hidden fields. */
static void redact(hm_call_t *call, bk_booking_t *b)
{
    if (b && bk_guest_only(call))
        b->internal_notes = "";
}

/* An error before a saga ran: stored as the key's outcome, then returned. */
static hm_status_t fail(hm_call_t *call, bk_idem_t *idem, hm_status_t st)
{
    bk_idem_finish(call, call->db, idem, st, NULL, NULL);
    return st;
}

static hm_status_t check_contact(hm_call_t *call, const char *name, const char *email,
                                 const char *phone)
{
    char *norm;
    if (!text_ok(name, 200))
        return hm_call_invalid(call, "guest_name", "guest_name must be at most 200 characters");
    if (*email && hm_crypto_normalize_email(&call->arena, email, &norm) != 0)
        return hm_call_invalid(call, "guest_email", "guest_email is not an email address");
    if (*phone && hm_crypto_normalize_phone(&call->arena, phone, &norm) != 0)
        return hm_call_invalid(call, "guest_phone", "guest_phone is not a phone number");
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */

BK_HANDLER(bk_create_booking)
{
    const create_req_t *req = (const void *)in;
    if (!uuid_ok(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (!token(req->venue_id, 64))
        return hm_call_invalid(call, "venue_id", "venue_id is required (1..64 of [A-Za-z0-9._-])");
    if (*req->inventory_item_id && !token(req->inventory_item_id, 64))
        return hm_call_invalid(call, "inventory_item_id",
                               "inventory_item_id: 1..64 of [A-Za-z0-9._-]");
    if (req->party_size < 1 || req->party_size > 1000)
        return hm_call_invalid(call, "party_size", "party_size must be 1..1000");
    hm_status_t st = check_contact(call, req->guest_name, req->guest_email, req->guest_phone);
    if (!hm_status_ok(st))
        return st;
    if (!text_ok(req->special_requests, 2000))
        return hm_call_invalid(call, "special_requests", "special_requests: at most 2000 bytes");
    if (*req->promotion_code && !token(req->promotion_code, 64))
        return hm_call_invalid(call, "promotion_code", "promotion_code: 1..64 of [A-Za-z0-9._-]");
    if (req->source < 0 ||
        req->source > HOSPITALITY__BOOKING__V1__BOOKING_SOURCE__BOOKING_SOURCE_API)
        return hm_call_invalid(call, "source", "unknown source");
    if (req->n_metadata > 32)
        return hm_call_invalid(call, "metadata", "at most 32 metadata entries");
    for (size_t i = 0; i < req->n_metadata; i++)
        if (!token(req->metadata[i]->key, 64) || !text_ok(req->metadata[i]->value, 512))
            return hm_call_invalid(call, "metadata",
                                   "metadata keys 1..64 of [A-Za-z0-9._-], "
                                   "values at most 512 bytes");
    bk_slot_t slot;
    st = bk_slot_make(call, req->venue_type, req->booking_date, req->booking_time,
                      req->duration_minutes, req->nights, &slot);
    if (!hm_status_ok(st))
        return st;
    if (slot.end_us <= hm_now_ms() * 1000)
        return hm_call_invalid(call, "booking_date", "the slot is in the past");
    bk_idem_t idem;
    st = bk_idem_begin(call, &idem, "create", in, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    if (idem.replay)
        return bk_idem_replay(call, &idem,
                              &hospitality__booking__v1__create_booking_response__descriptor, out);
    bk_booking_t *b = NULL;
    st = bk_create_saga(call, req, &slot, &idem, &b);
    if (!hm_status_ok(st))
        return st;
    Hospitality__Booking__V1__CreateBookingResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__create_booking_response__init(resp);
    resp->booking = b;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */

static hm_status_t load_authorized(hm_call_t *call, const char *id, bk_booking_t **b)
{
    if (!uuid_ok(id))
        return hm_call_invalid(call, "booking_id", "booking_id must be a UUID");
    int rc = bk_load(call->db, &call->arena, call->crypto, id, false, b, NULL);
    if (rc == HM_ENOTFOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no booking %s", id);
    if (rc != 0)
        return hm_call_fail(call, rc, "load booking");
    return bk_authorize(call, (*b)->guest_id, (*b)->venue_id);
}

BK_HANDLER(bk_get_booking)
{
    const Hospitality__Booking__V1__GetBookingRequest *req = (const void *)in;
    bk_booking_t *b;
    hm_status_t st = load_authorized(call, req->booking_id, &b);
    if (!hm_status_ok(st))
        return st;
    redact(call, b);
    Hospitality__Booking__V1__GetBookingResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__get_booking_response__init(resp);
    resp->booking = b;
    if (req->include_history) {
        int rc = bk_history(call->db, &call->arena, b->booking_id, &resp->status_history,
                            &resp->n_status_history);
        if (rc != 0)
            return hm_call_fail(call, rc, "load history");
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_by_ref = {
    "bk_by_ref",
    "SELECT booking_id::text FROM bk_bookings WHERE reference = $1 AND NOT provisional", 1};

static bool reference_ok(const char *s)
{
    if (!s || strlen(s) != 18 || strncmp(s, "BR-", 3) != 0 || s[11] != '-')
        return false;
    for (int i = 3; i < 11; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    for (int i = 12; i < 18; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

BK_HANDLER(bk_get_booking_by_reference)
{
    const Hospitality__Booking__V1__GetBookingByReferenceRequest *req = (const void *)in;
    if (!reference_ok(req->booking_reference))
        return hm_call_invalid(call, "booking_reference",
                               "booking_reference looks like BR-20241225-A3B9C2");
    /* reference -> id never changes: cached (dropped on erasure) */
    char *key = hm_cache_key(&call->arena, "bookingd", "ref", req->booking_reference);
    char *id = NULL;
    size_t len;
    if (hm_cache_get(call->cache, &call->arena, key, &id, &len) != 0 || !uuid_ok(id)) {
        const char *p[1] = {req->booking_reference};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, &call->arena, &st_by_ref, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "find booking");
        if (PQntuples(r) == 0)
            return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no booking %s",
                                 req->booking_reference);
        id = hm_arena_strdup(&call->arena, hm_db_get(r, 0, 0));
        hm_cache_set(call->cache, key, id, strlen(id), bk_cfg.ref_ttl_ms);
    }
    bk_booking_t *b;
    hm_status_t st = load_authorized(call, id, &b);
    if (!hm_status_ok(st))
        return st;
    redact(call, b);
    Hospitality__Booking__V1__GetBookingByReferenceResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__get_booking_by_reference_response__init(resp);
    resp->booking = b;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */

static bool date_eq(const Hospitality__Common__V1__Date *a, const Hospitality__Common__V1__Date *b)
{
    return a && b ? a->year == b->year && a->month == b->month && a->day == b->day : a == b;
}

static bool time_eq(const Hospitality__Common__V1__TimeOfDay *a,
                    const Hospitality__Common__V1__TimeOfDay *b)
{
    return a && b ? a->hours == b->hours && a->minutes == b->minutes && a->seconds == b->seconds
                  : a == b;
}

BK_HANDLER(bk_update_booking)
{
    const Hospitality__Booking__V1__UpdateBookingRequest *req = (const void *)in;
    if (!uuid_ok(req->booking_id))
        return hm_call_invalid(call, "booking_id", "booking_id must be a UUID");
    if (!req->booking)
        return hm_call_invalid(call, "booking", "booking is required");
    if (!req->update_mask || req->update_mask->n_paths == 0)
        return hm_call_invalid(call, "update_mask", "update_mask names the fields to change");
    if (req->expected_version < 1)
        return hm_call_invalid(call, "expected_version", "expected_version is required");
    bk_idem_t idem;
    hm_status_t st = bk_idem_begin(call, &idem, "update", in, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    if (idem.replay)
        return bk_idem_replay(call, &idem,
                              &hospitality__booking__v1__update_booking_response__descriptor, out);
    bk_booking_t *cur;
    st = load_authorized(call, req->booking_id, &cur);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    if (cur->version != req->expected_version)
        return fail(call, &idem,
                    hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                                  "booking is at version %lld, not %lld: reload and retry",
                                  (long long)cur->version, (long long)req->expected_version));
    bk_booking_t *next = hm_arena_memdup(&call->arena, cur, sizeof *cur);
    const Hospitality__Booking__V1__Booking *u = req->booking;
    const char **changed =
        hm_arena_alloc(&call->arena, (req->update_mask->n_paths + 1) * sizeof(char *));
    size_t nchanged = 0;
    bool moved = false;
    for (size_t i = 0; i < req->update_mask->n_paths; i++) {
        const char *f = req->update_mask->paths[i];
        bool diff;
        if (strcmp(f, "guest_name") == 0) {
            diff = strcmp(cur->guest_name, u->guest_name) != 0;
            next->guest_name = u->guest_name;
        } else if (strcmp(f, "guest_email") == 0) {
            diff = strcmp(cur->guest_email, u->guest_email) != 0;
            next->guest_email = u->guest_email;
        } else if (strcmp(f, "guest_phone") == 0) {
            diff = strcmp(cur->guest_phone, u->guest_phone) != 0;
            next->guest_phone = u->guest_phone;
        } else if (strcmp(f, "booking_date") == 0) {
            diff = !date_eq(cur->booking_date, u->booking_date);
            next->booking_date = u->booking_date;
            moved = moved || diff;
        } else if (strcmp(f, "booking_time") == 0) {
            diff = !time_eq(cur->booking_time, u->booking_time);
            next->booking_time = u->booking_time;
            moved = moved || diff;
        } else if (strcmp(f, "duration_minutes") == 0) {
            diff = cur->duration_minutes != u->duration_minutes;
            next->duration_minutes = u->duration_minutes;
            moved = moved || diff;
        } else if (strcmp(f, "nights") == 0) {
            diff = cur->nights != u->nights;
            next->nights = u->nights;
            moved = moved || diff;
        } else if (strcmp(f, "party_size") == 0) {
            if (u->party_size < 1 || u->party_size > 1000)
                return fail(call, &idem,
                            hm_call_invalid(call, "party_size", "party_size must be 1..1000"));
            diff = cur->party_size != u->party_size;
            next->party_size = u->party_size;
            moved = moved || diff;
        } else if (strcmp(f, "inventory_item_id") == 0) {
            if (!token(u->inventory_item_id, 64))
                return fail(call, &idem,
                            hm_call_invalid(call, "inventory_item_id",
                                            "inventory_item_id: 1..64 of [A-Za-z0-9._-]"));
            diff = strcmp(cur->inventory_item_id, u->inventory_item_id) != 0;
            next->inventory_item_id = u->inventory_item_id;
            moved = moved || diff;
        } else if (strcmp(f, "special_requests") == 0) {
            if (!text_ok(u->special_requests, 2000))
                return fail(call, &idem,
                            hm_call_invalid(call, "special_requests",
                                            "special_requests: at most 2000 bytes"));
            diff = strcmp(cur->special_requests, u->special_requests) != 0;
            next->special_requests = u->special_requests;
        } else if (strcmp(f, "internal_notes") == 0) {
            if (bk_guest_only(call))
                return fail(call, &idem,
                            hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                                          "internal_notes are for staff"));
            if (!text_ok(u->internal_notes, 2000))
                return fail(
                    call, &idem,
                    hm_call_invalid(call, "internal_notes", "internal_notes: at most 2000 bytes"));
            diff = strcmp(cur->internal_notes, u->internal_notes) != 0;
            next->internal_notes = u->internal_notes;
        } else if (strcmp(f, "metadata") == 0) {
            if (u->n_metadata > 32)
                return fail(call, &idem,
                            hm_call_invalid(call, "metadata", "at most 32 metadata entries"));
            for (size_t k = 0; k < u->n_metadata; k++)
                if (!token(u->metadata[k]->key, 64) || !text_ok(u->metadata[k]->value, 512))
                    return fail(call, &idem,
                                hm_call_invalid(call, "metadata", "bad metadata entry"));
            diff = true;
            next->metadata = u->metadata;
            next->n_metadata = u->n_metadata;
        } else {
            return fail(call, &idem,
                        hm_call_invalid(call, "update_mask", "field %s cannot be changed",
                                        text_ok(f, 64) ? f : "?"));
        }
        if (diff)
            changed[nchanged++] = f;
    }
    st = check_contact(call, next->guest_name, next->guest_email, next->guest_phone);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    if (moved && (int)cur->status != BK_PENDING && (int)cur->status != BK_CONFIRMED)
        return fail(call, &idem,
                    hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                                  "a %s booking cannot be moved", bk_status_name(cur->status)));
    bk_slot_t slot;
    st = bk_slot_make(call, cur->venue_type, next->booking_date, next->booking_time,
                      next->duration_minutes, next->nights, &slot);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    if (moved && slot.end_us <= hm_now_ms() * 1000)
        return fail(call, &idem, hm_call_invalid(call, "booking_date", "the slot is in the past"));
    bk_booking_t *b = NULL;
    st = bk_update_saga(call, cur, next, &slot, moved, changed, nchanged, req->expected_version,
                        &idem, &b);
    if (!hm_status_ok(st))
        return st;
    redact(call, b);
    Hospitality__Booking__V1__UpdateBookingResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__update_booking_response__init(resp);
    resp->booking = b;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Status changes and cancellation: one transaction each (no partner call inside), the partner
 * work (release, refund) as partner actions run right after the commit. */

static const hm_stmt_t st_transition = {
    "bk_transition",
    "UPDATE bk_bookings SET status = $2::smallint, version = version + 1, updated_at = "
    "clock_timestamp(), confirmed_at = CASE WHEN $2 = '2' THEN clock_timestamp() ELSE "
    "confirmed_at END, checked_in_at = CASE WHEN $2 = '3' THEN clock_timestamp() ELSE "
    "checked_in_at END, completed_at = CASE WHEN $2 = '4' THEN clock_timestamp() ELSE "
    "completed_at END, cancelled_at = CASE WHEN $2 = '5' THEN clock_timestamp() ELSE "
    "cancelled_at END, cancellation_reason = CASE WHEN $2 = '5' THEN $3 ELSE "
    "cancellation_reason END, cancelled_by_type = CASE WHEN $2 = '5' THEN $4::smallint ELSE "
    "cancelled_by_type END, cancelled_by_id = CASE WHEN $2 = '5' THEN $5 ELSE cancelled_by_id "
    "END WHERE booking_id = $1::uuid RETURNING " BK_COLS,
    5};

typedef struct transition_tx {
    hm_call_t *call;
    const char *id;
    int to;
    int64_t expected;
    const char *reason;
    Hospitality__Common__V1__Actor *actor;
    bk_idem_t *idem;
    hm_status_t refused; /* set when the transition is refused (fn returns HM_EPRECOND) */
    int from;
    bk_booking_t *b;
} transition_tx_t;

static int transition_fn(hm_db_t *db, void *arg)
{
    transition_tx_t *t = arg;
    hm_call_t *call = t->call;
    bk_booking_t *cur;
    PGresult *row;
    int rc = bk_load(db, &call->arena, call->crypto, t->id, true, &cur, &row);
    if (rc != 0)
        return rc;
    t->from = cur->status;
    if (cur->version != t->expected) {
        t->refused = hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                                   "booking is at version %lld, not %lld: reload and retry",
                                   (long long)cur->version, (long long)t->expected);
        return HM_EPRECOND;
    }
    if (hm_db_get(row, 0, BKC_SAGA) && *hm_db_get(row, 0, BKC_SAGA)) {
        t->refused = hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                                   "booking is being changed by another request: retry");
        return HM_EPRECOND;
    }
    if (!bk_transition_ok(cur->status, t->to)) {
        t->refused = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "ILLEGAL_TRANSITION",
                                   "a booking cannot go from %s to %s", bk_status_name(cur->status),
                                   bk_status_name(t->to));
        return HM_EPRECOND;
    }
    const char *p[5] = {t->id, hm_db_param_int64(&call->arena, t->to), t->reason ? t->reason : "",
                        hm_db_param_int64(&call->arena, t->actor->type), t->actor->id};
    PGresult *r;
    if ((rc = hm_db_exec_arena(db, &call->arena, &st_transition, p, NULL, NULL, &r)) != 0)
        return rc;
    if (!(t->b = bk_booking_from_row(&call->arena, call->crypto, r, 0)))
        return HM_ECRYPTO;
    if ((rc = bk_record_history(db, &call->arena, t->id, cur->status, t->to, t->actor->type,
                                t->actor->id, t->reason)) != 0)
        return rc;
    if ((rc = bk_publish_transition(call, db, &call->arena, NULL, t->b, cur->status, t->to,
                                    t->actor)) != 0)
        return rc;
    if (t->to == BK_CANCELLED) {
        Hospitality__Events__V1__BookingCancelled ev =
            HOSPITALITY__EVENTS__V1__BOOKING_CANCELLED__INIT;
        ev.booking = bk_summary(&call->arena, t->b);
        ev.previous_status = (Hospitality__Common__V1__BookingStatus)cur->status;
        ev.cancelled_by = t->actor;
        if ((rc = hm_call_publish(call, db, "booking.cancelled", t->b->guest_id, &ev.base)) != 0)
            return rc;
        return bk_actions_add(db, &call->arena, t->b, "booking cancelled", true);
    }
    if (t->to == BK_COMPLETED || t->to == BK_NO_SHOW)
        return bk_actions_add(db, &call->arena, t->b,
                              t->to == BK_COMPLETED ? "booking completed" : "no-show", false);
    return 0;
}

static hm_status_t transition(hm_call_t *call, transition_tx_t *t)
{
    t->refused = HM_STATUS_OK;
    int rc = hm_db_tx(call->db, transition_fn, t, HM_DB_READ_COMMITTED);
    if (rc == HM_EPRECOND && !hm_status_ok(t->refused))
        return t->refused;
    if (rc == HM_ENOTFOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no booking %s", t->id);
    if (rc != 0)
        return hm_call_fail(call, rc, "change booking");
    bk_avail_invalidate(call->cache, &call->arena, t->b->venue_id);
    return HM_STATUS_OK;
}

BK_HANDLER(bk_cancel_booking)
{
    const Hospitality__Booking__V1__CancelBookingRequest *req = (const void *)in;
    if (req->expected_version < 1)
        return hm_call_invalid(call, "expected_version", "expected_version is required");
    if (!text_ok(req->reason, 500))
        return hm_call_invalid(call, "reason", "reason: at most 500 bytes");
    bk_idem_t idem;
    hm_status_t st = bk_idem_begin(call, &idem, "cancel", in, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    if (idem.replay)
        return bk_idem_replay(call, &idem,
                              &hospitality__booking__v1__cancel_booking_response__descriptor, out);
    bk_booking_t *cur;
    st = load_authorized(call, req->booking_id, &cur);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    transition_tx_t t = {.call = call,
                         .id = req->booking_id,
                         .to = BK_CANCELLED,
                         .expected = req->expected_version,
                         .reason = req->reason,
                         .actor = bk_actor(call),
                         .idem = &idem};
    st = transition(call, &t);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    bk_metric_booking("cancelled", t.b->venue_type, 0);
    /* Release and refund now; what fails is retried by the partner-actions task. */
    char *refund_id = NULL;
    int64_t refunded = 0;
    if (bk_actions_run(call, call->db, &call->arena, t.b->booking_id, &refund_id, &refunded) != 0)
        HM_WARN("booking %s cancelled; partner work left to the retry task", t.b->booking_id);
    bk_booking_t *b = t.b;
    if (bk_load(call->db, &call->arena, call->crypto, t.b->booking_id, false, &b, NULL) != 0)
        b = t.b;
    redact(call, b);
    Hospitality__Booking__V1__CancelBookingResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__cancel_booking_response__init(resp);
    resp->booking = b;
    if (refund_id && *refund_id) {
        resp->refund_id = refund_id;
        resp->refund_amount = bk_money(&call->arena, refunded, b->total_price->currency);
    }
    bk_idem_finish(call, call->db, &idem, HM_STATUS_OK, &resp->base, b->booking_id);
    *out = &resp->base;
    return HM_STATUS_OK;
}

BK_HANDLER(bk_update_booking_status)
{
    const Hospitality__Booking__V1__UpdateBookingStatusRequest *req = (const void *)in;
    int to = req->status;
    if (to == BK_CANCELLED)
        return hm_call_invalid(call, "status", "cancel with CancelBooking");
    if (to != BK_CONFIRMED && to != BK_CHECKED_IN && to != BK_COMPLETED && to != BK_NO_SHOW &&
        to != BK_PENDING && to != BK_EXPIRED)
        return hm_call_invalid(call, "status", "status must be a booking status");
    if (req->expected_version < 1)
        return hm_call_invalid(call, "expected_version", "expected_version is required");
    if (!text_ok(req->reason, 500))
        return hm_call_invalid(call, "reason", "reason: at most 500 bytes");
    bk_idem_t idem;
    hm_status_t st = bk_idem_begin(call, &idem, "status", in, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    if (idem.replay)
        return bk_idem_replay(call, &idem,
                              &hospitality__booking__v1__update_booking_status_response__descriptor,
                              out);
    bk_booking_t *cur;
    st = load_authorized(call, req->booking_id, &cur);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    /* PENDING and EXPIRED are never targets of a caller: refused by the state machine (EXPIRED
     * is the sweeper's), so they report as illegal transitions naming both states. */
    if (to == BK_PENDING || to == BK_EXPIRED)
        return fail(call, &idem,
                    hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "ILLEGAL_TRANSITION",
                                  "a booking cannot go from %s to %s", bk_status_name(cur->status),
                                  bk_status_name(to)));
    transition_tx_t t = {.call = call,
                         .id = req->booking_id,
                         .to = to,
                         .expected = req->expected_version,
                         .reason = req->reason,
                         .actor = bk_actor(call),
                         .idem = &idem};
    st = transition(call, &t);
    if (!hm_status_ok(st))
        return fail(call, &idem, st);
    if (to == BK_COMPLETED || to == BK_NO_SHOW)
        bk_actions_run(call, call->db, &call->arena, t.b->booking_id, NULL, NULL);
    redact(call, t.b);
    Hospitality__Booking__V1__UpdateBookingStatusResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__update_booking_status_response__init(resp);
    resp->booking = t.b;
    resp->change = hm_arena_alloc(&call->arena, sizeof *resp->change);
    hospitality__booking__v1__booking_status_change__init(resp->change);
    resp->change->booking_id = t.b->booking_id;
    resp->change->from_status = (Hospitality__Common__V1__BookingStatus)t.from;
    resp->change->to_status = (Hospitality__Common__V1__BookingStatus)to;
    resp->change->changed_by = t.actor;
    resp->change->reason = req->reason;
    resp->change->created_at = t.b->updated_at;
    bk_idem_finish(call, call->db, &idem, HM_STATUS_OK, &resp->base, t.b->booking_id);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Lists */

static const hm_stmt_t st_list_guest = {
    "bk_list_guest",
    "SELECT " BK_COLS " FROM bk_bookings WHERE guest_id = $1::uuid AND NOT provisional AND "
    "(cardinality($2::smallint[]) = 0 OR status = ANY($2::smallint[])) AND ($3::date IS NULL OR "
    "booking_date >= $3::date) AND ($4::date IS NULL OR booking_date <= $4::date) ORDER BY "
    "lower(period), booking_id LIMIT $5::int OFFSET $6::int",
    6};
static const hm_stmt_t st_list_venue = {
    "bk_list_venue",
    "SELECT " BK_COLS " FROM bk_bookings WHERE venue_id = $1 AND NOT provisional AND "
    "(cardinality($2::smallint[]) = 0 OR status = ANY($2::smallint[])) AND ($3::date IS NULL OR "
    "booking_date >= $3::date) AND ($4::date IS NULL OR booking_date <= $4::date) AND ($7 = '' "
    "OR inventory_item_id = $7) ORDER BY lower(period), booking_id LIMIT $5::int OFFSET $6::int",
    7};

static hm_status_t list(hm_call_t *call, const hm_stmt_t *stmt, const char *owner,
                        const Hospitality__Common__V1__BookingStatus *statuses, size_t nstatuses,
                        const Hospitality__Common__V1__DateRange *range,
                        const Hospitality__Common__V1__PageRequest *page, const char *item,
                        bk_booking_t ***rows, size_t *n, Hospitality__Common__V1__PageResponse **pr)
{
    int size = page && page->page_size > 0 ? page->page_size : 50;
    if (size > 200)
        size = 200;
    long offset = 0;
    if (page && *page->page_token) {
        char *end;
        offset = strtol(page->page_token, &end, 10);
        if (*end || offset < 0 || offset > 1000000)
            return hm_call_invalid(call, "page.page_token", "page_token is not one of ours");
    }
    char *arr = hm_arena_strdup(&call->arena, "{");
    for (size_t i = 0; i < nstatuses; i++) {
        if (statuses[i] < 1 || statuses[i] > 7)
            return hm_call_invalid(call, "statuses", "unknown status");
        arr = hm_arena_printf(&call->arena, "%s%s%d", arr, i ? "," : "", statuses[i]);
    }
    arr = hm_arena_printf(&call->arena, "%s}", arr);
    const char *from = NULL, *to = NULL;
    if (range && range->start_date)
        from = hm_arena_printf(&call->arena, "%04d-%02d-%02d", range->start_date->year,
                               range->start_date->month, range->start_date->day);
    if (range && range->end_date)
        to = hm_arena_printf(&call->arena, "%04d-%02d-%02d", range->end_date->year,
                             range->end_date->month, range->end_date->day);
    const char *p[7] = {owner,
                        arr,
                        from,
                        to,
                        hm_db_param_int64(&call->arena, size + 1),
                        hm_db_param_int64(&call->arena, offset),
                        item ? item : ""};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, stmt, p, NULL, NULL, &r);
    if (rc == HM_EINVAL)
        return hm_call_invalid(call, "date_range", "date_range holds an invalid date");
    if (rc != 0)
        return hm_call_fail(call, rc, "list bookings");
    int got = PQntuples(r), keep = got > size ? size : got;
    *rows = hm_arena_alloc(&call->arena, (size_t)(keep + 1) * sizeof(void *));
    for (int i = 0; i < keep; i++) {
        if (!((*rows)[i] = bk_booking_from_row(&call->arena, call->crypto, r, i)))
            return hm_call_fail(call, HM_ECRYPTO, "list bookings");
        redact(call, (*rows)[i]);
    }
    *n = (size_t)keep;
    *pr = hm_arena_alloc(&call->arena, sizeof **pr);
    hospitality__common__v1__page_response__init(*pr);
    if (got > size)
        (*pr)->next_page_token = hm_arena_printf(&call->arena, "%ld", offset + size);
    return HM_STATUS_OK;
}

BK_HANDLER(bk_list_guest_bookings)
{
    const Hospitality__Booking__V1__ListGuestBookingsRequest *req = (const void *)in;
    if (!uuid_ok(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    Hospitality__Booking__V1__ListGuestBookingsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__list_guest_bookings_response__init(resp);
    hm_status_t st =
        list(call, &st_list_guest, req->guest_id, req->statuses, req->n_statuses, req->date_range,
             req->page, NULL, &resp->bookings, &resp->n_bookings, &resp->page);
    if (!hm_status_ok(st))
        return st;
    *out = &resp->base;
    return HM_STATUS_OK;
}

BK_HANDLER(bk_list_venue_bookings)
{
    const Hospitality__Booking__V1__ListVenueBookingsRequest *req = (const void *)in;
    if (!token(req->venue_id, 64))
        return hm_call_invalid(call, "venue_id", "venue_id is required");
    if (*req->inventory_item_id && !token(req->inventory_item_id, 64))
        return hm_call_invalid(call, "inventory_item_id", "bad inventory_item_id");
    Hospitality__Booking__V1__ListVenueBookingsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__list_venue_bookings_response__init(resp);
    hm_status_t st =
        list(call, &st_list_venue, req->venue_id, req->statuses, req->n_statuses, req->date_range,
             req->page, req->inventory_item_id, &resp->bookings, &resp->n_bookings, &resp->page);
    if (!hm_status_ok(st))
        return st;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Availability */

static const hm_stmt_t st_conflicts = {
    "bk_conflicts",
    "SELECT booking_id::text, inventory_item_id, status, " BK_TS("lower(period)") ", " BK_TS(
        "upper(period)") " FROM bk_bookings WHERE venue_id = $1 AND inventory_item_id = $2 AND "
                         "period && tstzrange(to_timestamp($3::bigint / 1000000.0), "
                         "to_timestamp($4::bigint / 1000000.0)) AND status IN (1, 2, 3) AND "
                         "booking_id::text <> $5 ORDER BY lower(period) LIMIT 50",
    5};

BK_HANDLER(bk_check_availability)
{
    const Hospitality__Booking__V1__CheckAvailabilityRequest *req = (const void *)in;
    if (!token(req->venue_id, 64))
        return hm_call_invalid(call, "venue_id", "venue_id is required");
    if (*req->inventory_item_id && !token(req->inventory_item_id, 64))
        return hm_call_invalid(call, "inventory_item_id", "bad inventory_item_id");
    if (*req->exclude_booking_id && !uuid_ok(req->exclude_booking_id))
        return hm_call_invalid(call, "exclude_booking_id", "exclude_booking_id must be a UUID");
    if (*req->promotion_code && !token(req->promotion_code, 64))
        return hm_call_invalid(call, "promotion_code", "bad promotion_code");
    int party = req->party_size > 0 ? req->party_size : 1;
    if (party > 1000)
        return hm_call_invalid(call, "party_size", "party_size must be 1..1000");
    bk_slot_t slot;
    hm_status_t st = bk_slot_make(call, req->venue_type, req->booking_date, req->booking_time,
                                  req->duration_minutes, req->nights, &slot);
    if (!hm_status_ok(st))
        return st;
    /* cached briefly, under the venue's generation (bumped on every change) */
    size_t n = protobuf_c_message_get_packed_size(in);
    uint8_t *buf = hm_arena_alloc(&call->arena, n + 1);
    protobuf_c_message_pack(in, buf);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(buf, n, md);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    char *key = bk_avail_key(call->cache, &call->arena, req->venue_id, hex);
    char *cached;
    size_t clen;
    if (hm_cache_get(call->cache, &call->arena, key, &cached, &clen) == 0) {
        ProtobufCMessage *m = protobuf_c_message_unpack(
            &hospitality__booking__v1__check_availability_response__descriptor,
            hm_arena_pb(&call->arena), clen, (const uint8_t *)cached);
        if (m) {
            *out = m;
            return HM_STATUS_OK;
        }
    }
    /* capacity from the inventory service (fail-safe: no answer without it) */
    Hospitality__Partner__V1__CheckCapacityRequest cr =
        HOSPITALITY__PARTNER__V1__CHECK_CAPACITY_REQUEST__INIT;
    cr.venue_id = req->venue_id;
    cr.inventory_item_id = req->inventory_item_id;
    cr.window = bk_range(&call->arena, slot.start_us, slot.end_us);
    cr.party_size = party;
    ProtobufCMessage *cm = NULL;
    st = bk_partner(call, &call->arena, BK_INVENTORY,
                    "/hospitality.partner.v1.InventoryService/CheckCapacity", &cr.base,
                    &hospitality__partner__v1__check_capacity_response__descriptor, &cm);
    if (!hm_status_ok(st))
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "inventory service unavailable (%s)", hm_code_name(st.code));
    const Hospitality__Partner__V1__CheckCapacityResponse *cap = (const void *)cm;
    const char *item = *req->inventory_item_id ? req->inventory_item_id : cap->inventory_item_id;
    Hospitality__Booking__V1__CheckAvailabilityResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__booking__v1__check_availability_response__init(resp);
    resp->window = bk_range(&call->arena, slot.start_us, slot.end_us);
    resp->capacity = hm_arena_alloc(&call->arena, sizeof *resp->capacity);
    hospitality__booking__v1__capacity__init(resp->capacity);
    resp->capacity->total = cap->total_capacity;
    resp->capacity->available = cap->available_capacity;
    resp->capacity->inventory_item_id = (char *)item;
    const char *p[5] = {req->venue_id, item, hm_db_param_int64(&call->arena, slot.start_us),
                        hm_db_param_int64(&call->arena, slot.end_us), req->exclude_booking_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_conflicts, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "conflicts");
    int nc = PQntuples(r);
    resp->conflicts = hm_arena_alloc(&call->arena, (size_t)(nc + 1) * sizeof(void *));
    for (int i = 0; i < nc; i++) {
        Hospitality__Booking__V1__BookingConflict *c = hm_arena_alloc(&call->arena, sizeof *c);
        hospitality__booking__v1__booking_conflict__init(c);
        c->booking_id = hm_arena_strdup(&call->arena, hm_db_get(r, i, 0));
        c->inventory_item_id = hm_arena_strdup(&call->arena, hm_db_get(r, i, 1));
        c->status = (Hospitality__Common__V1__BookingStatus)bk_i64(r, i, 2);
        c->window = bk_range(&call->arena, bk_i64(r, i, 3), bk_i64(r, i, 4));
        resp->conflicts[resp->n_conflicts++] = c;
    }
    bk_quote_t q;
    bk_price(call, req->venue_id, req->venue_type, item, &slot, party, req->promotion_code, NULL,
             &q);
    Hospitality__Booking__V1__PriceEstimate *pe = hm_arena_alloc(&call->arena, sizeof *pe);
    hospitality__booking__v1__price_estimate__init(pe);
    pe->base_price = bk_money(&call->arena, q.base, q.currency);
    pe->tax_amount = bk_money(&call->arena, q.tax, q.currency);
    pe->discount_amount = bk_money(&call->arena, q.discount, q.currency);
    pe->total_price = bk_money(&call->arena, q.total, q.currency);
    pe->quote_id = (char *)(q.quote_id ? q.quote_id : "");
    if (q.expires_us)
        pe->expires_at = hm_timestamp_from_us(&call->arena, q.expires_us);
    pe->defaulted = q.defaulted;
    resp->price_estimate = pe;
    resp->available = cap->available && nc == 0 && slot.end_us > hm_now_ms() * 1000;
    size_t rn = protobuf_c_message_get_packed_size(&resp->base);
    uint8_t *rb = hm_arena_alloc(&call->arena, rn + 1);
    protobuf_c_message_pack(&resp->base, rb);
    hm_cache_set(call->cache, key, rb, rn, bk_cfg.avail_ttl_ms);
    *out = &resp->base;
    return HM_STATUS_OK;
}
