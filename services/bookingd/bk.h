/*
 * bk.h - bookingd's internals shared by its files (docs/bookingd.md).
 *
 * Files: main.c (configuration, method tables, tasks), store.c (rows <-> messages, windows,
 * idempotency keys, authorization, caching, metrics), booking.c (the BookingService
 * handlers), saga.c (partner calls, the create and update sagas, partner actions, recovery and
 * the expiry sweeper), subject.c (DataSubjectService).
 */
#ifndef BK_H
#define BK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/cache.h"
#include "hm/db.h"
#include "hm/server.h"
#include "hospitality/booking/v1/booking.pb-c.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/partner/v1/partner.pb-c.h"

typedef Hospitality__Booking__V1__Booking bk_booking_t;

typedef struct bk_config {
    const char *time_zone;      /* HM_BOOKING_TIME_ZONE: venues' zone (no venue registry yet) */
    int64_t pending_ttl_ms;     /* HM_BOOKING_PENDING_TTL: PENDING bookings expire after it */
    long long default_price;    /* HM_BOOKING_DEFAULT_PRICE: per person, minor units */
    const char *currency;       /* HM_BOOKING_CURRENCY */
    int64_t partner_timeout_ms; /* HM_BOOKING_PARTNER_TIMEOUT: each partner call, all tries */
    int64_t avail_ttl_ms;       /* HM_BOOKING_AVAILABILITY_TTL: cached availability answers */
    int64_t ref_ttl_ms;         /* HM_BOOKING_REFERENCE_TTL: cached reference look-ups */
} bk_config_t;

extern bk_config_t bk_cfg;

/* Status values (hospitality.common.v1.BookingStatus). */
enum {
    BK_PENDING = 1,
    BK_CONFIRMED = 2,
    BK_CHECKED_IN = 3,
    BK_COMPLETED = 4,
    BK_CANCELLED = 5,
    BK_NO_SHOW = 6,
    BK_EXPIRED = 7,
};

const char *bk_status_name(int status);
/* True when the state machine allows from -> to. */
bool bk_transition_ok(int from, int to);

/* A slot: the request's local date/time turned into instants (SQL does the time zones). */
typedef struct bk_slot {
    int venue_type;
    char date[16]; /* YYYY-MM-DD */
    char time[16]; /* HH:MM:SS */
    int duration_minutes, nights;
    int64_t start_us, end_us;
} bk_slot_t;

/* Fills slot from the request fields; INVALID_ARGUMENT naming the field when they do not
 * describe a slot. */
hm_status_t bk_slot_make(hm_call_t *call, int venue_type, const Hospitality__Common__V1__Date *date,
                         const Hospitality__Common__V1__TimeOfDay *time, int duration, int nights,
                         bk_slot_t *slot);

/* Columns of a booking row, in the order bk_booking_from_row reads them. */
#define BK_TS(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
#define BK_COLS                                                                                    \
    "booking_id::text, reference, idempotency_key, guest_id::text, guest_name, guest_email, "      \
    "guest_phone, venue_id, venue_type, venue_name, time_zone, to_char(booking_date, "             \
    "'YYYY-MM-DD'), to_char(booking_time, 'HH24:MI:SS'), duration_minutes, nights, "               \
    "(extract(epoch FROM lower(period)) * 1000000)::bigint, (extract(epoch FROM "                  \
    "upper(period)) * 1000000)::bigint, party_size, status, version, currency, base_price, "       \
    "tax_amount, discount_amount, total_price, pricing_defaulted, promotion_code, "                \
    "payment_intent_id, payment_status, inventory_reservation_id, inventory_item_id, "             \
    "special_requests, internal_notes, (extract(epoch FROM created_at) * 1000000)::bigint, "       \
    "(extract(epoch FROM updated_at) * 1000000)::bigint, (extract(epoch FROM confirmed_at) "       \
    "* 1000000)::bigint, (extract(epoch FROM cancelled_at) * 1000000)::bigint, "                   \
    "(extract(epoch FROM checked_in_at) * 1000000)::bigint, (extract(epoch FROM "                  \
    "completed_at) * 1000000)::bigint, (extract(epoch FROM expires_at) * 1000000)::bigint, "       \
    "cancellation_reason, cancelled_by_type, cancelled_by_id, source, metadata::text, "            \
    "provisional, saga_id::text, refund_id"
enum {
    BKC_ID,
    BKC_REF,
    BKC_IDEM,
    BKC_GUEST,
    BKC_NAME,
    BKC_EMAIL,
    BKC_PHONE,
    BKC_VENUE,
    BKC_VTYPE,
    BKC_VNAME,
    BKC_TZ,
    BKC_DATE,
    BKC_TIME,
    BKC_DURATION,
    BKC_NIGHTS,
    BKC_START,
    BKC_END,
    BKC_PARTY,
    BKC_STATUS,
    BKC_VERSION,
    BKC_CURRENCY,
    BKC_BASE,
    BKC_TAX,
    BKC_DISCOUNT,
    BKC_TOTAL,
    BKC_DEFAULTED,
    BKC_PROMO,
    BKC_INTENT,
    BKC_PAYSTATUS,
    BKC_RESERVATION,
    BKC_ITEM,
    BKC_REQUESTS,
    BKC_NOTES,
    BKC_CREATED,
    BKC_UPDATED,
    BKC_CONFIRMED,
    BKC_CANCELLED,
    BKC_CHECKED_IN,
    BKC_COMPLETED,
    BKC_EXPIRES,
    BKC_CANCEL_REASON,
    BKC_CANCEL_BY_TYPE,
    BKC_CANCEL_BY_ID,
    BKC_SOURCE,
    BKC_METADATA,
    BKC_PROVISIONAL,
    BKC_SAGA,
    BKC_REFUND,
};

/* A booking message from row `row` of a BK_COLS result (PII decrypted into the arena). NULL
 * when a PII field does not decrypt (logged). */
bk_booking_t *bk_booking_from_row(hm_arena_t *arena, hm_crypto_t *crypto, const PGresult *r,
                                  int row);
/* Loads a committed (not provisional) booking; HM_ENOTFOUND when there is none. */
int bk_load(hm_db_t *db, hm_arena_t *arena, hm_crypto_t *crypto, const char *booking_id,
            bool for_update, bk_booking_t **out, PGresult **row);
/* The event summary of a booking. */
Hospitality__Events__V1__BookingSummary *bk_summary(hm_arena_t *arena, const bk_booking_t *b);
Hospitality__Common__V1__Money *bk_money(hm_arena_t *arena, int64_t minor, const char *currency);
/* The booking's history, oldest first. */
int bk_history(hm_db_t *db, hm_arena_t *arena, const char *booking_id,
               Hospitality__Booking__V1__BookingStatusChange ***out, size_t *n);

/* Encrypts a PII field for booking `id` (NULL for empty); "" param on no crypto. */
int bk_seal(hm_call_t *call, const char *field, const char *booking_id, const char *value,
            const char **param, int *len);

/* The caller as an actor (guest, staff, admin, service). */
Hospitality__Common__V1__Actor *bk_actor(hm_call_t *call);
/* May the caller see/change this booking: admin and service always, staff for their venues,
 * guests their own. */
hm_status_t bk_authorize(hm_call_t *call, const char *guest_id, const char *venue_id);
/* True when the caller is only a guest (internal notes hidden, staff-only fields refused). */
bool bk_guest_only(hm_call_t *call);
/* Records a transition in the open transaction. */
int bk_record_history(hm_db_t *db, hm_arena_t *arena, const char *booking_id, int from, int to,
                      int actor_type, const char *actor_id, const char *reason);
/* Publishes booking.status_changed and the event of the target status, if there is one. */
int bk_publish_transition(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *tp,
                          const bk_booking_t *b, int from, int to,
                          Hospitality__Common__V1__Actor *actor);

/* Idempotency keys. */
typedef struct bk_idem {
    const char *scope; /* "create:<caller>" */
    const char *key;   /* NULL: the request has none */
    bool replay;       /* the outcome is stored: *status / response below */
    hm_status_t status;
    unsigned char *response;
    size_t response_len;
} bk_idem_t;
/* Claims the key for this request (fingerprint of `req` without its key field). On return:
 * OK with idem->replay = false: run the operation, then bk_idem_finish; OK with replay: answer
 * with the stored outcome; ALREADY_EXISTS (reused with another request) or ABORTED (in use). */
hm_status_t bk_idem_begin(hm_call_t *call, bk_idem_t *idem, const char *op,
                          const ProtobufCMessage *req, const char *key);
/* Stores the outcome (in the open transaction when db has one). No-op without a key. */
int bk_idem_finish(hm_call_t *call, hm_db_t *db, bk_idem_t *idem, hm_status_t st,
                   const ProtobufCMessage *resp, const char *booking_id);
/* A stored outcome as the handler's answer. */
hm_status_t bk_idem_replay(hm_call_t *call, bk_idem_t *idem, const ProtobufCMessageDescriptor *desc,
                           ProtobufCMessage **out);

/* Caching. */
void bk_avail_invalidate(hm_cache_t *cache, hm_arena_t *arena, const char *venue_id);
char *bk_avail_key(hm_cache_t *cache, hm_arena_t *arena, const char *venue_id,
                   const char *fingerprint_hex);
void bk_ref_invalidate(hm_cache_t *cache, hm_arena_t *arena, const char *reference);

/* Business metrics (main.c prints them on /metrics). */
void bk_metric_booking(const char *what, int venue_type, int64_t value_minor);
void bk_metric_partner(int partner, int64_t us, bool error);
enum { BK_INVENTORY, BK_PRICING, BK_PAYMENT, BK_NPARTNERS };
void bk_metrics(FILE *out, void *arg);

/* Partner calls (saga.c): deadline and retries from the configuration, metrics per partner.
 * `parent` may be NULL (tasks). */
hm_status_t bk_partner(hm_call_t *parent, hm_arena_t *arena, int partner, const char *method,
                       const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                       ProtobufCMessage **resp);

/* The sagas and actions (saga.c). */
typedef struct bk_quote {
    int64_t base, tax, discount, total;
    char currency[8];
    const char *quote_id;
    int64_t expires_us;
    bool defaulted;
} bk_quote_t;
/* Quotes the slot; with pricing down, the configured default price, flagged. */
void bk_price(hm_call_t *call, const char *venue_id, int venue_type, const char *item,
              const bk_slot_t *slot, int party, const char *promo, const char *guest_id,
              bk_quote_t *q);
hm_status_t bk_create_saga(hm_call_t *call,
                           const Hospitality__Booking__V1__CreateBookingRequest *req,
                           const bk_slot_t *slot, bk_idem_t *idem, bk_booking_t **out);
hm_status_t bk_update_saga(hm_call_t *call, const bk_booking_t *cur, bk_booking_t *next,
                           const bk_slot_t *slot, bool moved, const char **changed, size_t nchanged,
                           int64_t expected_version, bk_idem_t *idem, bk_booking_t **out);
/* Performs the due partner actions of one booking (booking_id) or of any (NULL). Reports the
 * refund made for `booking_id`, if any. */
int bk_actions_run(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, const char *booking_id,
                   char **refund_id, int64_t *refunded);
/* Adds partner actions for a booking leaving the active states (release + settle). */
int bk_actions_add(hm_db_t *db, hm_arena_t *arena, const bk_booking_t *b, const char *reason,
                   bool settle);
/* Conflicting window for ALREADY_EXISTS. */
hm_status_t bk_conflict_status(hm_call_t *call, hm_db_t *db, const char *venue, const char *item,
                               int64_t start_us, int64_t end_us, const char *exclude);

/* Tasks. */
int bk_task_recover(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int bk_task_expire(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int bk_task_actions(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* Handlers. */
#define BK_HANDLER(fn)                                                                             \
    hm_status_t fn(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
BK_HANDLER(bk_create_booking);
BK_HANDLER(bk_get_booking);
BK_HANDLER(bk_get_booking_by_reference);
BK_HANDLER(bk_update_booking);
BK_HANDLER(bk_cancel_booking);
BK_HANDLER(bk_update_booking_status);
BK_HANDLER(bk_list_guest_bookings);
BK_HANDLER(bk_list_venue_bookings);
BK_HANDLER(bk_check_availability);
BK_HANDLER(bk_export_subject);
BK_HANDLER(bk_erase_subject);

/* Small helpers. */
int64_t bk_i64(const PGresult *r, int row, int col);
Google__Protobuf__Timestamp *bk_ts(hm_arena_t *a, const PGresult *r, int row, int col);
Hospitality__Common__V1__TimeRange *bk_range(hm_arena_t *a, int64_t start_us, int64_t end_us);
char *bk_iso(hm_arena_t *a, int64_t us);

#endif
