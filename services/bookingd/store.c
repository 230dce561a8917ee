/*
 * store.c - bookingd's shared machinery: booking rows <-> messages (PII sealed with
 * hm/crypto.h), slots (local date and time -> instants, in SQL), the state machine,
 * authorization, history and transition events, idempotency keys, cache keys and the business
 * metrics.
 */
#include <jansson.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bk.h"
#include "hm/auth.h"
#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/log.h"

bk_config_t bk_cfg;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

int64_t bk_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    hm_db_get_int64(r, row, col, &v);
    return v;
}

Google__Protobuf__Timestamp *bk_ts(hm_arena_t *a, const PGresult *r, int row, int col)
{
    const char *s = hm_db_get(r, row, col);
    return s && *s ? hm_timestamp_from_us(a, bk_i64(r, row, col)) : NULL;
}

Hospitality__Common__V1__TimeRange *bk_range(hm_arena_t *a, int64_t start_us, int64_t end_us)
{
    Hospitality__Common__V1__TimeRange *t = hm_arena_alloc(a, sizeof *t);
    hospitality__common__v1__time_range__init(t);
    t->start_time = hm_timestamp_from_us(a, start_us);
    t->end_time = hm_timestamp_from_us(a, end_us);
    return t;
}

char *bk_iso(hm_arena_t *a, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return hm_arena_strdup(a, buf);
}

Hospitality__Common__V1__Money *bk_money(hm_arena_t *arena, int64_t minor, const char *currency)
{
    Hospitality__Common__V1__Money *m = hm_arena_alloc(arena, sizeof *m);
    hospitality__common__v1__money__init(m);
    m->amount_minor = minor;
    m->currency = hm_arena_strdup(arena, currency ? currency : "");
    return m;
}

static const char *const status_names[] = {"UNSPECIFIED", "PENDING",   "CONFIRMED", "CHECKED_IN",
                                           "COMPLETED",   "CANCELLED", "NO_SHOW",   "EXPIRED"};

const char *bk_status_name(int s)
{
    return s >= 0 && s <= 7 ? status_names[s] : "UNKNOWN";
}

bool bk_transition_ok(int from, int to)
{
    switch (from) {
    case BK_PENDING:
        return to == BK_CONFIRMED || to == BK_CANCELLED || to == BK_EXPIRED;
    case BK_CONFIRMED:
        return to == BK_CHECKED_IN || to == BK_CANCELLED || to == BK_COMPLETED || to == BK_NO_SHOW;
    case BK_CHECKED_IN:
        return to == BK_COMPLETED || to == BK_CANCELLED;
    default:
        return false; /* COMPLETED, CANCELLED, NO_SHOW, EXPIRED are terminal */
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Slots */

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static const hm_stmt_t st_slot = {
    "bk_slot",
    "SELECT (extract(epoch FROM (($1::date + $2::time) AT TIME ZONE $3)) * 1000000)::bigint, "
    "CASE WHEN $4::int > 0 THEN (extract(epoch FROM (($1::date + $4::int + time '11:00') AT "
    "TIME ZONE $3)) * 1000000)::bigint ELSE (extract(epoch FROM (($1::date + $2::time) AT "
    "TIME ZONE $3) + make_interval(mins => $5::int)) * 1000000)::bigint END",
    5};

hm_status_t bk_slot_make(hm_call_t *call, int venue_type, const Hospitality__Common__V1__Date *date,
                         const Hospitality__Common__V1__TimeOfDay *time, int duration, int nights,
                         bk_slot_t *slot)
{
    memset(slot, 0, sizeof *slot);
    if (venue_type < HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_HOTEL ||
        venue_type > HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RETAIL_EXPERIENCE)
        return hm_call_invalid(call, "venue_type", "venue_type is required");
    slot->venue_type = venue_type;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!date || date->year < 2000 || date->year > 2999 || date->month < 1 || date->month > 12 ||
        date->day < 1 ||
        date->day > mdays[date->month - 1] + (date->month == 2 && leap(date->year) ? 1 : 0))
        return hm_call_invalid(call, "booking_date", "booking_date must be a valid date");
    bool hotel = venue_type == HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_HOTEL;
    int h = hotel ? 15 : -1, m = 0, s = 0;
    if (time) {
        if (time->hours < 0 || time->hours > 23 || time->minutes < 0 || time->minutes > 59 ||
            time->seconds < 0 || time->seconds > 59)
            return hm_call_invalid(call, "booking_time", "booking_time must be a valid time");
        h = time->hours, m = time->minutes, s = time->seconds;
    }
    if (h < 0)
        return hm_call_invalid(call, "booking_time", "booking_time is required");
    if (hotel) {
        if (nights < 1 || nights > 365)
            return hm_call_invalid(call, "nights", "nights must be 1..365 for hotels");
        if (duration != 0)
            return hm_call_invalid(call, "duration_minutes", "hotels book nights, not minutes");
    } else {
        if (nights != 0)
            return hm_call_invalid(call, "nights", "nights are for hotels only");
        if (duration == 0)
            duration =
                venue_type == HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RESTAURANT ? 90 : 60;
        if (duration < 15 || duration > 1440)
            return hm_call_invalid(call, "duration_minutes", "duration_minutes must be 15..1440");
    }
    slot->duration_minutes = hotel ? 0 : duration;
    slot->nights = hotel ? nights : 0;
    snprintf(slot->date, sizeof slot->date, "%04d-%02d-%02d", date->year, date->month, date->day);
    snprintf(slot->time, sizeof slot->time, "%02d:%02d:%02d", h, m, s);
    const char *p[5] = {slot->date, slot->time, bk_cfg.time_zone,
                        hm_db_param_int64(&call->arena, slot->nights),
                        hm_db_param_int64(&call->arena, slot->duration_minutes)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_slot, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "slot");
    slot->start_us = bk_i64(r, 0, 0);
    slot->end_us = bk_i64(r, 0, 1);
    if (slot->end_us <= slot->start_us)
        return hm_call_invalid(call, "booking_time", "the slot ends before it starts");
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Rows and messages */

static char *open_field(hm_arena_t *arena, hm_crypto_t *crypto, const PGresult *r, int row, int col,
                        const char *field, const char *id, bool *ok)
{
    unsigned char *blob;
    size_t len;
    if (hm_db_get_bytea(r, row, col, arena, &blob, &len) != 0 || len == 0)
        return "";
    if (!crypto)
        return ""; /* a read that needs no personal data (tasks) */
    unsigned char *plain;
    size_t plen;
    char *aad = hm_arena_printf(arena, "booking:%s:%s", field, id);
    if (hm_crypto_decrypt(crypto, arena, blob, len, aad, &plain, &plen) != 0) {
        HM_ERROR("booking %s: %s does not decrypt", id, field);
        *ok = false;
        return "";
    }
    return (char *)plain;
}

static char *dup(hm_arena_t *a, const PGresult *r, int row, int col)
{
    const char *s = hm_db_get(r, row, col);
    return hm_arena_strdup(a, s ? s : "");
}

bk_booking_t *bk_booking_from_row(hm_arena_t *a, hm_crypto_t *crypto, const PGresult *r, int row)
{
    bk_booking_t *b = hm_arena_alloc(a, sizeof *b);
    hospitality__booking__v1__booking__init(b);
    b->booking_id = dup(a, r, row, BKC_ID);
    b->booking_reference = dup(a, r, row, BKC_REF);
    b->idempotency_key = dup(a, r, row, BKC_IDEM);
    b->guest_id = dup(a, r, row, BKC_GUEST);
    bool ok = true;
    b->guest_name = open_field(a, crypto, r, row, BKC_NAME, "name", b->booking_id, &ok);
    b->guest_email = open_field(a, crypto, r, row, BKC_EMAIL, "email", b->booking_id, &ok);
    b->guest_phone = open_field(a, crypto, r, row, BKC_PHONE, "phone", b->booking_id, &ok);
    if (!ok)
        return NULL;
    b->venue_id = dup(a, r, row, BKC_VENUE);
    b->venue_type = (Hospitality__Common__V1__VenueType)bk_i64(r, row, BKC_VTYPE);
    b->venue_name = dup(a, r, row, BKC_VNAME);
    b->time_zone = dup(a, r, row, BKC_TZ);
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
    const char *ds = hm_db_get(r, row, BKC_DATE), *ts = hm_db_get(r, row, BKC_TIME);
    if (ds && sscanf(ds, "%d-%d-%d", &y, &mo, &d) == 3) {
        b->booking_date = hm_arena_alloc(a, sizeof *b->booking_date);
        hospitality__common__v1__date__init(b->booking_date);
        b->booking_date->year = y, b->booking_date->month = mo, b->booking_date->day = d;
    }
    if (ts && sscanf(ts, "%d:%d:%d", &h, &mi, &s) == 3) {
        b->booking_time = hm_arena_alloc(a, sizeof *b->booking_time);
        hospitality__common__v1__time_of_day__init(b->booking_time);
        b->booking_time->hours = h, b->booking_time->minutes = mi, b->booking_time->seconds = s;
    }
    b->duration_minutes = (int32_t)bk_i64(r, row, BKC_DURATION);
    b->nights = (int32_t)bk_i64(r, row, BKC_NIGHTS);
    b->start_time = bk_ts(a, r, row, BKC_START);
    b->end_time = bk_ts(a, r, row, BKC_END);
    b->party_size = (int32_t)bk_i64(r, row, BKC_PARTY);
    b->status = (Hospitality__Common__V1__BookingStatus)bk_i64(r, row, BKC_STATUS);
    b->version = bk_i64(r, row, BKC_VERSION);
    const char *cur = hm_db_get(r, row, BKC_CURRENCY);
    b->base_price = bk_money(a, bk_i64(r, row, BKC_BASE), cur);
    b->tax_amount = bk_money(a, bk_i64(r, row, BKC_TAX), cur);
    b->discount_amount = bk_money(a, bk_i64(r, row, BKC_DISCOUNT), cur);
    b->total_price = bk_money(a, bk_i64(r, row, BKC_TOTAL), cur);
    bool defaulted = false;
    hm_db_get_bool(r, row, BKC_DEFAULTED, &defaulted);
    b->pricing_defaulted = defaulted;
    b->promotion_code = dup(a, r, row, BKC_PROMO);
    b->payment_intent_id = dup(a, r, row, BKC_INTENT);
    b->payment_status = (Hospitality__Booking__V1__PaymentStatus)bk_i64(r, row, BKC_PAYSTATUS);
    b->inventory_reservation_id = dup(a, r, row, BKC_RESERVATION);
    b->inventory_item_id = dup(a, r, row, BKC_ITEM);
    b->special_requests = dup(a, r, row, BKC_REQUESTS);
    b->internal_notes = dup(a, r, row, BKC_NOTES);
    b->created_at = bk_ts(a, r, row, BKC_CREATED);
    b->updated_at = bk_ts(a, r, row, BKC_UPDATED);
    b->confirmed_at = bk_ts(a, r, row, BKC_CONFIRMED);
    b->cancelled_at = bk_ts(a, r, row, BKC_CANCELLED);
    b->checked_in_at = bk_ts(a, r, row, BKC_CHECKED_IN);
    b->completed_at = bk_ts(a, r, row, BKC_COMPLETED);
    b->expires_at = bk_ts(a, r, row, BKC_EXPIRES);
    b->cancellation_reason = dup(a, r, row, BKC_CANCEL_REASON);
    int at = (int)bk_i64(r, row, BKC_CANCEL_BY_TYPE);
    if (at) {
        b->cancelled_by = hm_arena_alloc(a, sizeof *b->cancelled_by);
        hospitality__common__v1__actor__init(b->cancelled_by);
        b->cancelled_by->type = (Hospitality__Common__V1__ActorType)at;
        b->cancelled_by->id = dup(a, r, row, BKC_CANCEL_BY_ID);
    }
    b->source = (Hospitality__Booking__V1__BookingSource)bk_i64(r, row, BKC_SOURCE);
    const char *md = hm_db_get(r, row, BKC_METADATA);
    json_t *j = md ? json_loads(md, 0, NULL) : NULL;
    if (j && json_is_object(j) && json_object_size(j) > 0) {
        size_t n = json_object_size(j), i = 0;
        b->metadata = hm_arena_alloc(a, n * sizeof(void *));
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v)
        {
            if (!json_is_string(v) || i == n)
                continue;
            Hospitality__Booking__V1__Booking__MetadataEntry *e = hm_arena_alloc(a, sizeof *e);
            hospitality__booking__v1__booking__metadata_entry__init(e);
            e->key = hm_arena_strdup(a, k);
            e->value = hm_arena_strdup(a, json_string_value(v));
            b->metadata[i++] = e;
        }
        b->n_metadata = i;
    }
    if (j)
        json_decref(j);
    return b;
}

static const hm_stmt_t st_load = {
    "bk_load",
    "SELECT " BK_COLS " FROM bk_bookings WHERE booking_id = $1::uuid AND NOT provisional", 1};
static const hm_stmt_t st_load_lock = {"bk_load_lock",
                                       "SELECT " BK_COLS " FROM bk_bookings WHERE booking_id = "
                                       "$1::uuid AND NOT provisional FOR UPDATE",
                                       1};

int bk_load(hm_db_t *db, hm_arena_t *arena, hm_crypto_t *crypto, const char *booking_id,
            bool for_update, bk_booking_t **out, PGresult **row)
{
    const char *p[1] = {booking_id};
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, for_update ? &st_load_lock : &st_load, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) == 0)
        return HM_ENOTFOUND;
    *out = bk_booking_from_row(arena, crypto, r, 0);
    if (row)
        *row = r;
    return *out ? 0 : HM_ECRYPTO;
}

Hospitality__Events__V1__BookingSummary *bk_summary(hm_arena_t *arena, const bk_booking_t *b)
{
    Hospitality__Events__V1__BookingSummary *s = hm_arena_alloc(arena, sizeof *s);
    hospitality__events__v1__booking_summary__init(s);
    s->booking_id = b->booking_id;
    s->booking_reference = b->booking_reference;
    s->guest_id = b->guest_id;
    s->venue_id = b->venue_id;
    s->venue_type = b->venue_type;
    s->inventory_item_id = b->inventory_item_id;
    s->start_time = b->start_time;
    s->end_time = b->end_time;
    s->party_size = b->party_size;
    s->nights = b->nights;
    s->total_price = b->total_price;
    s->status = b->status;
    s->version = b->version;
    return s;
}

static const hm_stmt_t st_history = {
    "bk_history",
    "SELECT from_status, to_status, actor_type, actor_id, reason, " BK_TS(
        "created_at") " FROM bk_status_history WHERE booking_id = $1::uuid ORDER BY id",
    1};

int bk_history(hm_db_t *db, hm_arena_t *arena, const char *booking_id,
               Hospitality__Booking__V1__BookingStatusChange ***out, size_t *n)
{
    const char *p[1] = {booking_id};
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_history, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int rows = PQntuples(r);
    *out = hm_arena_alloc(arena, (size_t)(rows + 1) * sizeof(void *));
    for (int i = 0; i < rows; i++) {
        Hospitality__Booking__V1__BookingStatusChange *c = hm_arena_alloc(arena, sizeof *c);
        hospitality__booking__v1__booking_status_change__init(c);
        c->booking_id = (char *)booking_id;
        c->from_status = (Hospitality__Common__V1__BookingStatus)bk_i64(r, i, 0);
        c->to_status = (Hospitality__Common__V1__BookingStatus)bk_i64(r, i, 1);
        c->changed_by = hm_arena_alloc(arena, sizeof *c->changed_by);
        hospitality__common__v1__actor__init(c->changed_by);
        c->changed_by->type = (Hospitality__Common__V1__ActorType)bk_i64(r, i, 2);
        c->changed_by->id = dup(arena, r, i, 3);
        c->reason = dup(arena, r, i, 4);
        c->created_at = bk_ts(arena, r, i, 5);
        (*out)[i] = c;
    }
    *n = (size_t)rows;
    return 0;
}

int bk_seal(hm_call_t *call, const char *field, const char *booking_id, const char *value,
            const char **param, int *len)
{
    *param = NULL;
    *len = 0;
    if (!value || !*value)
        return 0;
    if (!call->crypto)
        return HM_ECRYPTO;
    unsigned char *blob;
    size_t n;
    char *aad = hm_arena_printf(&call->arena, "booking:%s:%s", field, booking_id);
    int rc = hm_crypto_encrypt(call->crypto, &call->arena, value, strlen(value), aad, &blob, &n);
    if (rc != 0)
        return rc;
    *param = (const char *)blob;
    *len = (int)n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Callers */

Hospitality__Common__V1__Actor *bk_actor(hm_call_t *call)
{
    Hospitality__Common__V1__Actor *a = hm_arena_alloc(&call->arena, sizeof *a);
    hospitality__common__v1__actor__init(a);
    const hm_principal_t *p = call->principal;
    if (!p) {
        a->type = HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM;
        return a;
    }
    a->id = (char *)p->subject;
    a->type = p->roles & HM_ROLE_ADMIN     ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_ADMIN
              : p->roles & HM_ROLE_SERVICE ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SERVICE
              : p->roles & HM_ROLE_STAFF   ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_STAFF
                                           : HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_GUEST;
    return a;
}

bool bk_guest_only(hm_call_t *call)
{
    const hm_principal_t *p = call->principal;
    return p && !(p->roles & (HM_ROLE_ADMIN | HM_ROLE_SERVICE | HM_ROLE_STAFF));
}

hm_status_t bk_authorize(hm_call_t *call, const char *guest_id, const char *venue_id)
{
    const hm_principal_t *p = call->principal;
    if (!p || p->roles & (HM_ROLE_ADMIN | HM_ROLE_SERVICE))
        return HM_STATUS_OK;
    if (p->roles & HM_ROLE_STAFF)
        for (size_t i = 0; i < p->nvenues; i++)
            if (strcmp(p->venues[i], venue_id) == 0)
                return HM_STATUS_OK;
    if (p->roles & HM_ROLE_GUEST && strcmp(p->subject, guest_id) == 0)
        return HM_STATUS_OK;
    return hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                         "this booking belongs to another guest or venue");
}

static const hm_stmt_t st_add_history = {
    "bk_add_history",
    "INSERT INTO bk_status_history (booking_id, from_status, to_status, actor_type, actor_id, "
    "reason) VALUES ($1::uuid, $2::smallint, $3::smallint, $4::smallint, $5, $6)",
    6};

int bk_record_history(hm_db_t *db, hm_arena_t *arena, const char *booking_id, int from, int to,
                      int actor_type, const char *actor_id, const char *reason)
{
    const char *p[6] = {booking_id,
                        hm_db_param_int64(arena, from),
                        hm_db_param_int64(arena, to),
                        hm_db_param_int64(arena, actor_type),
                        actor_id ? actor_id : "",
                        reason ? reason : ""};
    return hm_db_exec(db, &st_add_history, p, NULL, NULL, NULL);
}

static int emit(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *tp, const char *type,
                const char *subject, const ProtobufCMessage *payload)
{
    if (call)
        return hm_call_publish(call, db, type, subject, payload);
    return hm_publish(db, arena, type, subject, tp, payload);
}

int bk_publish_transition(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *tp,
                          const bk_booking_t *b, int from, int to,
                          Hospitality__Common__V1__Actor *actor)
{
    Hospitality__Events__V1__BookingSummary *s = bk_summary(arena, b);
    Hospitality__Events__V1__BookingStatusChanged sc =
        HOSPITALITY__EVENTS__V1__BOOKING_STATUS_CHANGED__INIT;
    sc.booking = s;
    sc.from_status = (Hospitality__Common__V1__BookingStatus)from;
    sc.to_status = (Hospitality__Common__V1__BookingStatus)to;
    sc.changed_by = actor;
    int rc = emit(call, db, arena, tp, "booking.status_changed", b->guest_id, &sc.base);
    if (rc != 0)
        return rc;
    /* All the specific messages have the same shape: one BookingSummary field. */
    Hospitality__Events__V1__BookingConfirmed one =
        HOSPITALITY__EVENTS__V1__BOOKING_CONFIRMED__INIT;
    Hospitality__Events__V1__BookingCheckedIn ci =
        HOSPITALITY__EVENTS__V1__BOOKING_CHECKED_IN__INIT;
    Hospitality__Events__V1__BookingCompleted co = HOSPITALITY__EVENTS__V1__BOOKING_COMPLETED__INIT;
    Hospitality__Events__V1__BookingExpired ex = HOSPITALITY__EVENTS__V1__BOOKING_EXPIRED__INIT;
    one.booking = ci.booking = co.booking = ex.booking = s;
    switch (to) {
    case BK_CONFIRMED:
        return emit(call, db, arena, tp, "booking.confirmed", b->guest_id, &one.base);
    case BK_CHECKED_IN:
        return emit(call, db, arena, tp, "booking.checked_in", b->guest_id, &ci.base);
    case BK_COMPLETED:
        return emit(call, db, arena, tp, "booking.completed", b->guest_id, &co.base);
    case BK_EXPIRED:
        return emit(call, db, arena, tp, "booking.expired", b->guest_id, &ex.base);
    default:
        return 0; /* CANCELLED: booking.cancelled is published by the cancellation itself */
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Idempotency keys */

static const hm_stmt_t st_idem_claim = {
    "bk_idem_claim",
    "WITH ins AS (INSERT INTO bk_idempotency (scope, key, fingerprint, state, lease_until, "
    "expires_at) VALUES ($1, $2, sha256($3::bytea), 0, now() + interval '120 seconds', now() + "
    "interval '24 hours') ON CONFLICT (scope, key) DO UPDATE SET fingerprint = "
    "excluded.fingerprint, state = 0, lease_until = excluded.lease_until, expires_at = "
    "excluded.expires_at, created_at = clock_timestamp(), booking_id = NULL, response = NULL, "
    "err_code = NULL, err_reason = NULL, err_message = NULL WHERE bk_idempotency.expires_at < "
    "now() OR (bk_idempotency.state = 0 AND bk_idempotency.lease_until < now() AND "
    "bk_idempotency.fingerprint = excluded.fingerprint) RETURNING 1) "
    "SELECT true, 0, true, NULL::bytea, 0, NULL, NULL FROM ins UNION ALL "
    "SELECT false, state, fingerprint = sha256($3::bytea), response, coalesce(err_code, 0), "
    "err_reason, err_message FROM bk_idempotency WHERE scope = $1 AND key = $2 AND NOT EXISTS "
    "(SELECT 1 FROM ins)",
    3};

hm_status_t bk_idem_begin(hm_call_t *call, bk_idem_t *idem, const char *op,
                          const ProtobufCMessage *req, const char *key)
{
    memset(idem, 0, sizeof *idem);
    if (!key || !*key)
        return HM_STATUS_OK;
    if (strlen(key) > 255 || !hm_utf8_valid(key))
        return hm_call_invalid(call, "idempotency_key", "idempotency_key must be 1..255 bytes");
    idem->key = key;
    idem->scope = hm_arena_printf(&call->arena, "%s:%s", op,
                                  call->principal ? call->principal->subject : "anonymous");
    /* The fingerprint: the request packed without its key. */
    const ProtobufCMessageDescriptor *d = req->descriptor;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(d, "idempotency_key");
    ProtobufCMessage *copy = hm_arena_memdup(&call->arena, req, d->sizeof_message);
    if (f)
        *(const char **)((char *)copy + f->offset) = "";
    size_t n = protobuf_c_message_get_packed_size(copy);
    uint8_t *buf = hm_arena_alloc(&call->arena, n + 1);
    protobuf_c_message_pack(copy, buf);
    const char *p[3] = {idem->scope, key, (const char *)buf};
    int lens[3] = {0, 0, (int)n}, fmts[3] = {0, 0, 1};
    for (int attempt = 0; attempt < 10; attempt++) {
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, &call->arena, &st_idem_claim, p, lens, fmts, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "idempotency key");
        if (PQntuples(r) == 0)
            continue; /* a concurrent first claim committed after this statement's snapshot */
        bool claimed = false, same = false;
        hm_db_get_bool(r, 0, 0, &claimed);
        hm_db_get_bool(r, 0, 2, &same);
        if (claimed)
            return HM_STATUS_OK;
        if (!same)
            return hm_call_error(call, HM_CODE_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                                 "idempotency key was already used with a different request");
        if (bk_i64(r, 0, 1) == 0)
            return hm_call_error(call, HM_CODE_ABORTED, "IDEMPOTENCY_KEY_IN_USE",
                                 "a request with this idempotency key is still running");
        idem->replay = true;
        int code = (int)bk_i64(r, 0, 4);
        if (code != 0) {
            idem->status.code = (hm_code_t)code;
            idem->status.reason = dup(&call->arena, r, 0, 5);
            idem->status.message = dup(&call->arena, r, 0, 6);
            return HM_STATUS_OK;
        }
        unsigned char *blob;
        size_t len;
        if (hm_db_get_bytea(r, 0, 3, &call->arena, &blob, &len) != 0 || !call->crypto)
            return hm_call_fail(call, HM_EINTERNAL, "stored response");
        char *aad = hm_arena_printf(&call->arena, "idem:%s:%s", idem->scope, key);
        if (hm_crypto_decrypt(call->crypto, &call->arena, blob, len, aad, &idem->response,
                              &idem->response_len) != 0)
            return hm_call_fail(call, HM_ECRYPTO, "stored response");
        idem->status = HM_STATUS_OK;
        return HM_STATUS_OK;
    }
    return hm_call_error(call, HM_CODE_ABORTED, "IDEMPOTENCY_KEY_IN_USE",
                         "a request with this idempotency key is still running");
}

static const hm_stmt_t st_idem_done = {
    "bk_idem_done",
    "UPDATE bk_idempotency SET state = 1, response = $3, err_code = nullif($4::int, 0), "
    "err_reason = $5, err_message = $6, booking_id = $7::uuid WHERE scope = $1 AND key = $2",
    7};

int bk_idem_finish(hm_call_t *call, hm_db_t *db, bk_idem_t *idem, hm_status_t st,
                   const ProtobufCMessage *resp, const char *booking_id)
{
    if (!idem->key)
        return 0;
    const char *blob = NULL;
    int bloblen = 0;
    if (st.code == HM_CODE_OK && resp) {
        size_t n = protobuf_c_message_get_packed_size(resp);
        uint8_t *buf = hm_arena_alloc(&call->arena, n + 1);
        protobuf_c_message_pack(resp, buf);
        unsigned char *sealed;
        size_t sl;
        char *aad = hm_arena_printf(&call->arena, "idem:%s:%s", idem->scope, idem->key);
        if (!call->crypto ||
            hm_crypto_encrypt(call->crypto, &call->arena, buf, n, aad, &sealed, &sl) != 0)
            return HM_ECRYPTO;
        blob = (const char *)sealed;
        bloblen = (int)sl;
    } else if (st.code == HM_CODE_OK) {
        blob = "";
    }
    const char *p[7] = {idem->scope,
                        idem->key,
                        blob,
                        hm_db_param_int64(&call->arena, st.code),
                        st.code ? (st.reason ? st.reason : "") : NULL,
                        st.code ? (st.message ? st.message : "") : NULL,
                        booking_id};
    int lens[7] = {0, 0, bloblen, 0, 0, 0, 0}, fmts[7] = {0, 0, 1, 0, 0, 0, 0};
    return hm_db_exec(db, &st_idem_done, p, lens, fmts, NULL);
}

hm_status_t bk_idem_replay(hm_call_t *call, bk_idem_t *idem, const ProtobufCMessageDescriptor *desc,
                           ProtobufCMessage **out)
{
    if (idem->status.code != HM_CODE_OK)
        return idem->status;
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, hm_arena_pb(&call->arena),
                                                    idem->response_len, idem->response);
    if (!m)
        return hm_call_fail(call, HM_EINTERNAL, "stored response");
    *out = m;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Caching: availability answers under a per-venue generation (bumped on every change of the
 * venue's bookings, so every cached answer of the venue is invalid at once); reference look-ups
 * (reference -> booking id, which never changes) dropped when a booking is erased. */

char *bk_avail_key(hm_cache_t *cache, hm_arena_t *arena, const char *venue_id,
                   const char *fingerprint_hex)
{
    char *gk = hm_cache_key(arena, "bookingd", "availgen", venue_id);
    char *gen = NULL;
    size_t len;
    if (hm_cache_get(cache, arena, gk, &gen, &len) != 0)
        gen = "0";
    return hm_cache_key(arena, "bookingd", "avail",
                        hm_arena_printf(arena, "%s:%s:%s", venue_id, gen, fingerprint_hex));
}

void bk_avail_invalidate(hm_cache_t *cache, hm_arena_t *arena, const char *venue_id)
{
    char *gk = hm_cache_key(arena, "bookingd", "availgen", venue_id);
    redisReply *r = hm_cache_command(cache, arena, "INCR %s", gk);
    if (r)
        hm_cache_command(cache, arena, "PEXPIRE %s %d", gk, 86400000);
}

void bk_ref_invalidate(hm_cache_t *cache, hm_arena_t *arena, const char *reference)
{
    const char *k = hm_cache_key(arena, "bookingd", "ref", reference);
    hm_cache_del(cache, &k, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Business metrics */

#define NVT 5 /* venue types 0..4 */
static const char *const vt_names[NVT] = {"unspecified", "hotel", "restaurant", "cafe",
                                          "retail_experience"};
static const char *const partner_names[BK_NPARTNERS] = {"inventory", "pricing", "payment"};
static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
#define NB (sizeof buckets / sizeof buckets[0])

static _Atomic uint64_t m_created[NVT], m_cancelled[NVT], m_expired[NVT], m_value[NVT];
static _Atomic uint64_t m_calls[BK_NPARTNERS], m_errors[BK_NPARTNERS], m_sum_us[BK_NPARTNERS];
static _Atomic uint64_t m_bucket[BK_NPARTNERS][NB];

void bk_metric_booking(const char *what, int vt, int64_t value)
{
    if (vt < 0 || vt >= NVT)
        vt = 0;
    if (strcmp(what, "created") == 0) {
        m_created[vt]++;
        m_value[vt] += value > 0 ? (uint64_t)value : 0;
    } else if (strcmp(what, "cancelled") == 0) {
        m_cancelled[vt]++;
    } else if (strcmp(what, "expired") == 0) {
        m_expired[vt]++;
    }
}

void bk_metric_partner(int partner, int64_t us, bool error)
{
    m_calls[partner]++;
    m_sum_us[partner] += us > 0 ? (uint64_t)us : 0;
    if (error)
        m_errors[partner]++;
    for (size_t i = 0; i < NB; i++)
        if ((double)us / 1e6 <= buckets[i])
            m_bucket[partner][i]++;
}

void bk_metrics(FILE *out, void *arg)
{
    (void)arg;
    fprintf(out, "# HELP bookingd_bookings_total Bookings created, cancelled and expired.\n"
                 "# TYPE bookingd_bookings_total counter\n");
    for (int v = 0; v < NVT; v++) {
        fprintf(out, "bookingd_bookings_total{event=\"created\",venue_type=\"%s\"} %llu\n",
                vt_names[v], (unsigned long long)m_created[v]);
        fprintf(out, "bookingd_bookings_total{event=\"cancelled\",venue_type=\"%s\"} %llu\n",
                vt_names[v], (unsigned long long)m_cancelled[v]);
        fprintf(out, "bookingd_bookings_total{event=\"expired\",venue_type=\"%s\"} %llu\n",
                vt_names[v], (unsigned long long)m_expired[v]);
    }
    fprintf(out, "# HELP bookingd_booking_value_minor_total Total price of created bookings, "
                 "minor units.\n# TYPE bookingd_booking_value_minor_total counter\n");
    for (int v = 0; v < NVT; v++)
        fprintf(out, "bookingd_booking_value_minor_total{venue_type=\"%s\"} %llu\n", vt_names[v],
                (unsigned long long)m_value[v]);
    fprintf(out, "# HELP bookingd_partner_call_seconds Partner call latency (all attempts).\n"
                 "# TYPE bookingd_partner_call_seconds histogram\n");
    for (int p = 0; p < BK_NPARTNERS; p++) {
        for (size_t i = 0; i < NB; i++)
            fprintf(out, "bookingd_partner_call_seconds_bucket{partner=\"%s\",le=\"%g\"} %llu\n",
                    partner_names[p], buckets[i], (unsigned long long)m_bucket[p][i]);
        fprintf(out, "bookingd_partner_call_seconds_bucket{partner=\"%s\",le=\"+Inf\"} %llu\n",
                partner_names[p], (unsigned long long)m_calls[p]);
        fprintf(out, "bookingd_partner_call_seconds_sum{partner=\"%s\"} %.6f\n", partner_names[p],
                (double)m_sum_us[p] / 1e6);
        fprintf(out, "bookingd_partner_call_seconds_count{partner=\"%s\"} %llu\n", partner_names[p],
                (unsigned long long)m_calls[p]);
    }
    fprintf(out, "# HELP bookingd_partner_errors_total Partner calls that failed.\n"
                 "# TYPE bookingd_partner_errors_total counter\n");
    for (int p = 0; p < BK_NPARTNERS; p++)
        fprintf(out, "bookingd_partner_errors_total{partner=\"%s\"} %llu\n", partner_names[p],
                (unsigned long long)m_errors[p]);
}
