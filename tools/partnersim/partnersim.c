/*
 * partnersim - STAND-IN for the external partners bookingd coordinates with: it implements
 * hospitality.partner.v1.InventoryService, PricingService and PaymentService well enough for
 * development and tests. It is not a product: no real inventory, prices or money.
 *
 * State lives in its own Postgres database (migration 002: ps_reservations, ps_quotes,
 * ps_intents, ps_refunds) so tests can inspect it with SQL. Every mutating call is idempotent
 * by the caller's key, as the contract says; releasing or cancelling by an unused key leaves a
 * tombstone so a late call with that key cannot create an orphan.
 *
 * Behaviour:
 *   inventory  each (venue, item) holds HM_PARTNERSIM_CAPACITY places at any instant; a hold
 *              takes party_size places over its window; Reserve without an item picks
 *              HM_PARTNERSIM_DEFAULT_ITEM. No room is FAILED_PRECONDITION.
 *   pricing    base = HM_PARTNERSIM_UNIT_PRICE (minor units) x party size x nights (hotels) or
 *              started hours (others); tax 10 %; promotion "SAVE10" takes 10 % off the base.
 *   payment    intents start REQUIRES_PAYMENT; a test marks one paid with SQL (status 4).
 *
 * Fault injection (hm.tools.partnersim.v1.PartnerSimAdmin/SetFaults at run time, or
 * HM_PARTNERSIM_FAULTS at start): "service[.Method]:opt[,opt...][;...]" with opts latency=MS,
 * after=MS (delay after the effect), error=RATE (0..1), down, hang. Example:
 * "payment.CreatePaymentIntent:after=5000;pricing:down".
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/db.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "hm/server.h"
#include "hospitality/partner/v1/partner.pb-c.h"
#include "partnersim.pb-c.h"

extern const hm_migration_t partnersim_migrations[];
extern const size_t partnersim_nmigrations;

typedef struct ps_config {
    long long capacity;
    long long unit_price;
    const char *currency;
    const char *default_item;
    const char *faults;
} ps_config_t;

static ps_config_t ps_cfg;

static const hm_cfg_var_t config_vars[] = {
    HM_CFG_VAR(ps_config_t, capacity, "HM_PARTNERSIM_CAPACITY", HM_CFG_INT, "1000", 1, 1000000,
               NULL, 0, "places per inventory item at any instant"),
    HM_CFG_VAR(ps_config_t, unit_price, "HM_PARTNERSIM_UNIT_PRICE", HM_CFG_INT, "2500", 0,
               100000000, NULL, 0, "price per person and hour (night for hotels), minor units"),
    HM_CFG_VAR(ps_config_t, currency, "HM_PARTNERSIM_CURRENCY", HM_CFG_STR, "EUR", 0, 0, NULL, 0,
               "currency of quotes"),
    HM_CFG_VAR(ps_config_t, default_item, "HM_PARTNERSIM_DEFAULT_ITEM", HM_CFG_STR, "item-1", 0, 0,
               NULL, 0, "inventory item chosen when the caller names none"),
    HM_CFG_VAR(ps_config_t, faults, "HM_PARTNERSIM_FAULTS", HM_CFG_STR, "", 0, 0, NULL, 0,
               "faults injected at start: service[.Method]:latency=MS,after=MS,error=R,down,hang"),
};

/* ------------------------------------------------------------------------------------------ */
/* Faults */

#define MAX_FAULTS 16

typedef struct fault {
    char service[32], method[64];
    int latency_ms, after_ms;
    double error_rate;
    bool down, hang;
} fault_t;

static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static fault_t faults[MAX_FAULTS];
static size_t nfaults;
static unsigned fault_gen; /* bumped on every change: hanging calls notice */

/* The fault for service/method (merged: max latencies, max rate, any flag). */
static fault_t fault_for(const char *service, const char *method, unsigned *gen)
{
    fault_t f = {0};
    pthread_mutex_lock(&fault_mu);
    for (size_t i = 0; i < nfaults; i++) {
        const fault_t *x = &faults[i];
        if (x->service[0] && strcmp(x->service, service) != 0)
            continue;
        if (x->method[0] && strcmp(x->method, method) != 0)
            continue;
        f.latency_ms = x->latency_ms > f.latency_ms ? x->latency_ms : f.latency_ms;
        f.after_ms = x->after_ms > f.after_ms ? x->after_ms : f.after_ms;
        f.error_rate = x->error_rate > f.error_rate ? x->error_rate : f.error_rate;
        f.down = f.down || x->down;
        f.hang = f.hang || x->hang;
    }
    if (gen)
        *gen = fault_gen;
    pthread_mutex_unlock(&fault_mu);
    return f;
}

static unsigned current_gen(void)
{
    pthread_mutex_lock(&fault_mu);
    unsigned g = fault_gen;
    pthread_mutex_unlock(&fault_mu);
    return g;
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Sleeps ms, cut short by the call's deadline. */
static void delay(hm_call_t *call, int64_t ms)
{
    int64_t left = hm_call_remaining_ms(call);
    sleep_ms(ms < left ? ms : left);
}

/* Before a call: latency, down, error rate, hang. Non-OK status = answer with it. */
static hm_status_t fault_before(hm_call_t *call, const char *service, const char *method,
                                int *after_ms)
{
    unsigned gen;
    fault_t f = fault_for(service, method, &gen);
    *after_ms = f.after_ms;
    if (f.down)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "partnersim: %s is down (injected fault)", service);
    delay(call, f.latency_ms);
    if (f.hang) {
        int64_t until = hm_mono_ms() + 30000;
        while (hm_mono_ms() < until && hm_call_remaining_ms(call) > 0 && current_gen() == gen)
            sleep_ms(50);
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "partnersim: %s hung (injected fault)", service);
    }
    if (f.error_rate > 0) {
        uint32_t r;
        hm_random_bytes(&r, sizeof r);
        if ((double)r / 4294967296.0 < f.error_rate)
            return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                                 "partnersim: %s failed (injected error rate)", service);
    }
    return HM_STATUS_OK;
}

/* Parses one "service[.Method]:opts" entry into f. 0 or -1. */
static int parse_fault(const char *s, fault_t *f)
{
    memset(f, 0, sizeof *f);
    const char *colon = strchr(s, ':');
    size_t head = colon ? (size_t)(colon - s) : strlen(s);
    const char *dot = memchr(s, '.', head);
    size_t svc = dot ? (size_t)(dot - s) : head;
    if (svc >= sizeof f->service || (dot && head - svc - 1 >= sizeof f->method))
        return -1;
    memcpy(f->service, s, svc);
    if (strcmp(f->service, "*") == 0)
        f->service[0] = 0;
    if (dot)
        memcpy(f->method, dot + 1, head - svc - 1);
    if (f->service[0] && strcmp(f->service, "inventory") != 0 &&
        strcmp(f->service, "pricing") != 0 && strcmp(f->service, "payment") != 0)
        return -1;
    if (!colon)
        return 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", colon + 1);
    char *save = NULL;
    for (char *opt = strtok_r(buf, ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
        if (strncmp(opt, "latency=", 8) == 0)
            f->latency_ms = atoi(opt + 8);
        else if (strncmp(opt, "after=", 6) == 0)
            f->after_ms = atoi(opt + 6);
        else if (strncmp(opt, "error=", 6) == 0)
            f->error_rate = atof(opt + 6);
        else if (strcmp(opt, "down") == 0)
            f->down = true;
        else if (strcmp(opt, "hang") == 0)
            f->hang = true;
        else
            return -1;
    }
    return f->latency_ms < 0 || f->after_ms < 0 || f->error_rate < 0 || f->error_rate > 1 ? -1 : 0;
}

static int ps_init(const hm_common_config_t *common, void **app)
{
    (void)common, (void)app;
    if (!ps_cfg.faults || !*ps_cfg.faults)
        return 0;
    char *copy = hm_xstrdup(ps_cfg.faults), *save = NULL;
    int rc = 0;
    for (char *e = strtok_r(copy, ";", &save); e && rc == 0; e = strtok_r(NULL, ";", &save)) {
        if (nfaults == MAX_FAULTS || parse_fault(e, &faults[nfaults]) != 0) {
            HM_ERROR("HM_PARTNERSIM_FAULTS: cannot use entry \"%s\"", e);
            rc = HM_EINVAL;
        }
        nfaults++;
    }
    free(copy);
    if (rc == 0)
        HM_WARN("partnersim: %zu fault(s) injected from HM_PARTNERSIM_FAULTS", nfaults);
    return rc;
}

static Hm__Tools__Partnersim__V1__FaultsResponse *faults_response(hm_call_t *call)
{
    Hm__Tools__Partnersim__V1__FaultsResponse *r = hm_arena_alloc(&call->arena, sizeof *r);
    hm__tools__partnersim__v1__faults_response__init(r);
    pthread_mutex_lock(&fault_mu);
    r->faults = hm_arena_alloc(&call->arena, (nfaults + 1) * sizeof(void *));
    for (size_t i = 0; i < nfaults; i++) {
        Hm__Tools__Partnersim__V1__Fault *f = hm_arena_alloc(&call->arena, sizeof *f);
        hm__tools__partnersim__v1__fault__init(f);
        f->service = hm_arena_strdup(&call->arena, faults[i].service);
        f->method = hm_arena_strdup(&call->arena, faults[i].method);
        f->latency_ms = faults[i].latency_ms;
        f->latency_after_ms = faults[i].after_ms;
        f->error_rate = faults[i].error_rate;
        f->down = faults[i].down;
        f->hang = faults[i].hang;
        r->faults[r->n_faults++] = f;
    }
    pthread_mutex_unlock(&fault_mu);
    return r;
}

static hm_status_t ps_set_faults(hm_call_t *call, const ProtobufCMessage *in,
                                 ProtobufCMessage **out)
{
    const Hm__Tools__Partnersim__V1__SetFaultsRequest *req = (const void *)in;
    if (req->n_faults > MAX_FAULTS)
        return hm_call_invalid(call, "faults", "at most %d faults", MAX_FAULTS);
    fault_t next[MAX_FAULTS];
    for (size_t i = 0; i < req->n_faults; i++) {
        const Hm__Tools__Partnersim__V1__Fault *f = req->faults[i];
        char spec[128];
        snprintf(spec, sizeof spec, "%s%s%s", f->service, f->method[0] ? "." : "", f->method);
        if (parse_fault(spec, &next[i]) != 0 || f->latency_ms < 0 || f->latency_after_ms < 0 ||
            !(f->error_rate >= 0 && f->error_rate <= 1))
            return hm_call_invalid(call, "faults", "fault %zu is malformed", i);
        next[i].latency_ms = f->latency_ms;
        next[i].after_ms = f->latency_after_ms;
        next[i].error_rate = f->error_rate;
        next[i].down = f->down;
        next[i].hang = f->hang;
    }
    pthread_mutex_lock(&fault_mu);
    memcpy(faults, next, req->n_faults * sizeof next[0]);
    nfaults = req->n_faults;
    fault_gen++;
    pthread_mutex_unlock(&fault_mu);
    HM_WARN("partnersim: %zu fault(s) injected", req->n_faults);
    *out = &faults_response(call)->base;
    return HM_STATUS_OK;
}

static hm_status_t ps_get_faults(hm_call_t *call, const ProtobufCMessage *in,
                                 ProtobufCMessage **out)
{
    (void)in;
    *out = &faults_response(call)->base;
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

#define TS_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

static int64_t get_i64(const PGresult *r, int col)
{
    int64_t v = 0;
    hm_db_get_int64(r, 0, col, &v);
    return v;
}

static Google__Protobuf__Timestamp *get_ts(hm_call_t *call, const PGresult *r, int col)
{
    const char *s = hm_db_get(r, 0, col);
    return s && *s ? hm_timestamp_from_us(&call->arena, get_i64(r, col)) : NULL;
}

static char *get_str(hm_call_t *call, const PGresult *r, int col)
{
    const char *s = hm_db_get(r, 0, col);
    return hm_arena_strdup(&call->arena, s ? s : "");
}

static Hospitality__Common__V1__Money *money(hm_call_t *call, int64_t minor, const char *cur)
{
    Hospitality__Common__V1__Money *m = hm_arena_alloc(&call->arena, sizeof *m);
    hospitality__common__v1__money__init(m);
    m->amount_minor = minor;
    m->currency = hm_arena_strdup(&call->arena, cur);
    return m;
}

static bool key_ok(const char *k)
{
    return k && *k && strlen(k) <= 200 && hm_utf8_valid(k);
}

/* After the effect: the injected "after" delay, then the answer. */
static hm_status_t answer(hm_call_t *call, int after_ms)
{
    delay(call, after_ms);
    return HM_STATUS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Inventory */

#define RES_COLS                                                                                            \
    "reservation_id::text, reservation_key, venue_id, inventory_item_id, " TS_US(                           \
        "window_start") ", " TS_US("window_end") ", party_size, "                                           \
                                                 "CASE WHEN status = 1 AND hold_until < now() "             \
                                                 "THEN 3 ELSE status END, " TS_US("hold_until") ", " TS_US( \
                                                     "created_at") ", " TS_US("released_at")

static Hospitality__Partner__V1__Reservation *reservation(hm_call_t *call, const PGresult *r)
{
    Hospitality__Partner__V1__Reservation *m = hm_arena_alloc(&call->arena, sizeof *m);
    hospitality__partner__v1__reservation__init(m);
    m->reservation_id = get_str(call, r, 0);
    m->reservation_key = get_str(call, r, 1);
    m->venue_id = get_str(call, r, 2);
    m->inventory_item_id = get_str(call, r, 3);
    if (hm_db_get(r, 0, 4) && *hm_db_get(r, 0, 4)) {
        m->window = hm_arena_alloc(&call->arena, sizeof *m->window);
        hospitality__common__v1__time_range__init(m->window);
        m->window->start_time = get_ts(call, r, 4);
        m->window->end_time = get_ts(call, r, 5);
    }
    m->party_size = (int32_t)get_i64(r, 6);
    m->status = (Hospitality__Partner__V1__ReservationStatus)get_i64(r, 7);
    m->expires_at = get_ts(call, r, 8);
    m->created_at = get_ts(call, r, 9);
    m->released_at = get_ts(call, r, 10);
    return m;
}

static bool window_ok(const Hospitality__Common__V1__TimeRange *w)
{
    return w && w->start_time && w->end_time &&
           hm_timestamp_to_us(w->end_time) > hm_timestamp_to_us(w->start_time);
}

static const hm_stmt_t st_used = {
    "ps_used",
    "SELECT coalesce(sum(party_size), 0) FROM ps_reservations WHERE venue_id = $1 AND "
    "inventory_item_id = $2 AND status = 1 AND (hold_until IS NULL OR hold_until > now()) AND "
    "window_start < to_timestamp($4::bigint / 1000000.0) AND "
    "window_end > to_timestamp($3::bigint / 1000000.0)",
    4};

static hm_status_t ps_check_capacity(hm_call_t *call, const ProtobufCMessage *in,
                                     ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__CheckCapacityRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "inventory", "CheckCapacity", &after);
    if (!hm_status_ok(st))
        return st;
    if (!key_ok(req->venue_id))
        return hm_call_invalid(call, "venue_id", "venue_id is required");
    if (!window_ok(req->window))
        return hm_call_invalid(call, "window", "window needs start < end");
    const char *item = *req->inventory_item_id ? req->inventory_item_id : ps_cfg.default_item;
    const char *p[4] = {
        req->venue_id, item,
        hm_db_param_int64(&call->arena, hm_timestamp_to_us(req->window->start_time)),
        hm_db_param_int64(&call->arena, hm_timestamp_to_us(req->window->end_time))};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_used, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "capacity");
    int64_t used = get_i64(r, 0);
    Hospitality__Partner__V1__CheckCapacityResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__check_capacity_response__init(resp);
    resp->total_capacity = (int32_t)ps_cfg.capacity;
    resp->available_capacity = (int32_t)(ps_cfg.capacity - used);
    resp->available = ps_cfg.capacity - used >= (req->party_size > 0 ? req->party_size : 1);
    resp->inventory_item_id = hm_arena_strdup(&call->arena, item);
    *out = &resp->base;
    return answer(call, after);
}

typedef struct reserve_tx {
    hm_call_t *call;
    const Hospitality__Partner__V1__ReserveRequest *req;
    const char *item;
    PGresult *row;
    bool full;
} reserve_tx_t;

static const hm_stmt_t st_res_by_key = {
    "ps_res_by_key", "SELECT " RES_COLS " FROM ps_reservations WHERE reservation_key = $1", 1};
static const hm_stmt_t st_res_by_id = {
    "ps_res_by_id", "SELECT " RES_COLS " FROM ps_reservations WHERE reservation_id::text = $1", 1};
static const hm_stmt_t st_item_lock = {
    "ps_item_lock", "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))", 2};
static const hm_stmt_t st_res_insert = {
    "ps_res_insert",
    "INSERT INTO ps_reservations (reservation_key, venue_id, inventory_item_id, window_start, "
    "window_end, party_size, status, hold_until, booking_id) VALUES ($1, $2, $3, "
    "to_timestamp($4::bigint / 1000000.0), to_timestamp($5::bigint / 1000000.0), $6::int, 1, "
    "to_timestamp(nullif($7::bigint, 0) / 1000000.0), $8) RETURNING " RES_COLS,
    8};

static int reserve_fn(hm_db_t *db, void *arg)
{
    reserve_tx_t *t = arg;
    hm_call_t *call = t->call;
    const Hospitality__Partner__V1__ReserveRequest *req = t->req;
    t->full = false;
    const char *k[1] = {req->reservation_key};
    /* The item's lock first: the key check and the capacity sum see every earlier hold. */
    const char *l[2] = {req->venue_id, t->item};
    int rc = hm_db_exec_arena(db, &call->arena, &st_item_lock, l, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    if ((rc = hm_db_exec_arena(db, &call->arena, &st_res_by_key, k, NULL, NULL, &t->row)) != 0)
        return rc;
    if (PQntuples(t->row) > 0)
        return 0;
    const char *s = hm_db_param_int64(&call->arena, hm_timestamp_to_us(req->window->start_time));
    const char *e = hm_db_param_int64(&call->arena, hm_timestamp_to_us(req->window->end_time));
    const char *u[4] = {req->venue_id, t->item, s, e};
    PGresult *r;
    if ((rc = hm_db_exec_arena(db, &call->arena, &st_used, u, NULL, NULL, &r)) != 0)
        return rc;
    if (get_i64(r, 0) + req->party_size > ps_cfg.capacity) {
        t->full = true;
        return 0;
    }
    const char *p[8] = {req->reservation_key,
                        req->venue_id,
                        t->item,
                        s,
                        e,
                        hm_db_param_int64(&call->arena, req->party_size),
                        hm_db_param_int64(&call->arena, hm_timestamp_to_us(req->hold_until)),
                        req->booking_id};
    return hm_db_exec_arena(db, &call->arena, &st_res_insert, p, NULL, NULL, &t->row);
}

static hm_status_t ps_reserve(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__ReserveRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "inventory", "Reserve", &after);
    if (!hm_status_ok(st))
        return st;
    if (!key_ok(req->reservation_key))
        return hm_call_invalid(call, "reservation_key", "reservation_key is required");
    if (!key_ok(req->venue_id))
        return hm_call_invalid(call, "venue_id", "venue_id is required");
    if (!window_ok(req->window))
        return hm_call_invalid(call, "window", "window needs start < end");
    if (req->party_size < 1)
        return hm_call_invalid(call, "party_size", "party_size must be at least 1");
    reserve_tx_t t = {call, req,
                      *req->inventory_item_id ? req->inventory_item_id : ps_cfg.default_item, NULL,
                      false};
    int rc = hm_db_tx(call->db, reserve_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "reserve");
    if (t.full)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "no capacity left on %s for the window", t.item);
    Hospitality__Partner__V1__ReserveResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__reserve_response__init(resp);
    resp->reservation = reservation(call, t.row);
    *out = &resp->base;
    return answer(call, after);
}

static const hm_stmt_t st_release_id = {
    "ps_release_id",
    "UPDATE ps_reservations SET status = 2, released_at = clock_timestamp(), release_reason = $2 "
    "WHERE reservation_id::text = $1 AND status = 1 RETURNING 1",
    2};
static const hm_stmt_t st_release_key = {
    "ps_release_key",
    "INSERT INTO ps_reservations (reservation_key, venue_id, inventory_item_id, status, "
    "released_at, release_reason) VALUES ($1, '', '', 2, clock_timestamp(), $2) "
    "ON CONFLICT (reservation_key) DO UPDATE SET status = 2, released_at = "
    "coalesce(ps_reservations.released_at, clock_timestamp()), release_reason = CASE WHEN "
    "ps_reservations.status = 1 THEN excluded.release_reason ELSE "
    "ps_reservations.release_reason END RETURNING 1",
    2};

static hm_status_t ps_release(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__ReleaseRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "inventory", "Release", &after);
    if (!hm_status_ok(st))
        return st;
    bool by_id =
        req->target_case == HOSPITALITY__PARTNER__V1__RELEASE_REQUEST__TARGET_RESERVATION_ID;
    const char *target =
        by_id ? req->reservation_id
        : req->target_case == HOSPITALITY__PARTNER__V1__RELEASE_REQUEST__TARGET_RESERVATION_KEY
            ? req->reservation_key
            : NULL;
    if (!key_ok(target))
        return hm_call_invalid(call, "target", "reservation_id or reservation_key is required");
    const char *p[2] = {target, req->reason};
    PGresult *r;
    int rc;
    if (by_id) {
        if (!hm_uuid_valid(target))
            return hm_call_invalid(call, "reservation_id", "reservation_id must be a UUID");
        rc = hm_db_exec_arena(call->db, &call->arena, &st_release_id, p, NULL, NULL, NULL);
        if (rc == 0)
            rc = hm_db_exec_arena(call->db, &call->arena, &st_res_by_id, p, NULL, NULL, &r);
    } else {
        rc = hm_db_exec_arena(call->db, &call->arena, &st_release_key, p, NULL, NULL, NULL);
        if (rc == 0)
            rc = hm_db_exec_arena(call->db, &call->arena, &st_res_by_key, p, NULL, NULL, &r);
    }
    if (rc != 0)
        return hm_call_fail(call, rc, "release");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no reservation %s", target);
    Hospitality__Partner__V1__ReleaseResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__release_response__init(resp);
    resp->reservation = reservation(call, r);
    *out = &resp->base;
    return answer(call, after);
}

/* ------------------------------------------------------------------------------------------ */
/* Pricing */

static const hm_stmt_t st_quote = {
    "ps_quote",
    "INSERT INTO ps_quotes (venue_id, total, currency) VALUES ($1, $2::bigint, $3) "
    "RETURNING quote_id::text, " TS_US("created_at + interval '15 minutes'"),
    3};

static hm_status_t ps_quote(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__QuoteRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "pricing", "Quote", &after);
    if (!hm_status_ok(st))
        return st;
    if (!key_ok(req->venue_id))
        return hm_call_invalid(call, "venue_id", "venue_id is required");
    if (!window_ok(req->window))
        return hm_call_invalid(call, "window", "window needs start < end");
    int64_t party = req->party_size > 0 ? req->party_size : 1;
    int64_t units;
    if (req->venue_type == HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_HOTEL) {
        units = req->nights > 0 ? req->nights : 1;
    } else {
        int64_t us =
            hm_timestamp_to_us(req->window->end_time) - hm_timestamp_to_us(req->window->start_time);
        units = (us + 3600000000LL - 1) / 3600000000LL;
    }
    int64_t base = ps_cfg.unit_price * party * units;
    int64_t discount = strcmp(req->promotion_code, "SAVE10") == 0 ? base / 10 : 0;
    int64_t tax = (base - discount) / 10;
    const char *cur = *req->currency ? req->currency : ps_cfg.currency;
    const char *p[3] = {req->venue_id, hm_db_param_int64(&call->arena, base + tax - discount), cur};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_quote, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "quote");
    Hospitality__Partner__V1__PriceQuote *q = hm_arena_alloc(&call->arena, sizeof *q);
    hospitality__partner__v1__price_quote__init(q);
    q->quote_id = get_str(call, r, 0);
    q->base_price = money(call, base, cur);
    q->tax_amount = money(call, tax, cur);
    q->discount_amount = money(call, discount, cur);
    q->total_price = money(call, base + tax - discount, cur);
    q->promotion_code = discount ? "SAVE10" : "";
    q->expires_at = get_ts(call, r, 1);
    Hospitality__Partner__V1__QuoteResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__quote_response__init(resp);
    resp->quote = q;
    *out = &resp->base;
    return answer(call, after);
}

/* ------------------------------------------------------------------------------------------ */
/* Payment */

#define INTENT_COLS                                                                                \
    "payment_intent_id::text, idempotency_key, amount, currency, refunded, status, "               \
    "client_secret, booking_id, " TS_US("created_at") ", " TS_US("updated_at")

static Hospitality__Partner__V1__PaymentIntent *intent(hm_call_t *call, const PGresult *r)
{
    Hospitality__Partner__V1__PaymentIntent *m = hm_arena_alloc(&call->arena, sizeof *m);
    hospitality__partner__v1__payment_intent__init(m);
    m->payment_intent_id = get_str(call, r, 0);
    m->idempotency_key = get_str(call, r, 1);
    const char *cur = hm_db_get(r, 0, 3);
    m->amount = money(call, get_i64(r, 2), cur ? cur : "");
    m->amount_refunded = money(call, get_i64(r, 4), cur ? cur : "");
    m->status = (Hospitality__Partner__V1__PaymentIntentStatus)get_i64(r, 5);
    m->client_secret = get_str(call, r, 6);
    m->booking_id = get_str(call, r, 7);
    m->created_at = get_ts(call, r, 8);
    m->updated_at = get_ts(call, r, 9);
    return m;
}

static const hm_stmt_t st_intent_insert = {
    "ps_intent_insert",
    "WITH i AS (INSERT INTO ps_intents (idempotency_key, amount, currency, status, client_secret, "
    "booking_id, guest_id) VALUES ($1, $2::bigint, $3, 1, 'pi_secret_' || md5(random()::text), "
    "$4, $5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING " INTENT_COLS
    ") SELECT * FROM i UNION ALL SELECT " INTENT_COLS
    " FROM ps_intents WHERE idempotency_key = $1 AND NOT EXISTS (SELECT 1 FROM i)",
    5};

static hm_status_t ps_create_intent(hm_call_t *call, const ProtobufCMessage *in,
                                    ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__CreatePaymentIntentRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "payment", "CreatePaymentIntent", &after);
    if (!hm_status_ok(st))
        return st;
    if (!key_ok(req->idempotency_key))
        return hm_call_invalid(call, "idempotency_key", "idempotency_key is required");
    if (!req->amount || req->amount->amount_minor <= 0 || !key_ok(req->amount->currency))
        return hm_call_invalid(call, "amount", "amount must be positive with a currency");
    const char *p[5] = {req->idempotency_key,
                        hm_db_param_int64(&call->arena, req->amount->amount_minor),
                        req->amount->currency, req->booking_id, req->guest_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_intent_insert, p, NULL, NULL, &r);
    if (rc == 0 && PQntuples(r) == 0)
        rc = HM_ERETRY; /* a concurrent insert of the same key not yet visible */
    if (rc != 0)
        return hm_call_fail(call, rc, "create payment intent");
    Hospitality__Partner__V1__CreatePaymentIntentResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__create_payment_intent_response__init(resp);
    resp->payment_intent = intent(call, r);
    *out = &resp->base;
    return answer(call, after);
}

static const hm_stmt_t st_intent_cancel_id = {
    "ps_intent_cancel_id",
    "UPDATE ps_intents SET status = CASE WHEN status IN (1, 2, 3, 5) THEN 6 ELSE status END, "
    "updated_at = clock_timestamp() WHERE payment_intent_id::text = $1 RETURNING " INTENT_COLS,
    1};
static const hm_stmt_t st_intent_cancel_key = {
    "ps_intent_cancel_key",
    "INSERT INTO ps_intents (idempotency_key, amount, currency, status) VALUES ($1, 0, '', 6) "
    "ON CONFLICT (idempotency_key) DO UPDATE SET status = CASE WHEN ps_intents.status IN (1, 2, "
    "3, 5) THEN 6 ELSE ps_intents.status END, updated_at = clock_timestamp() "
    "RETURNING " INTENT_COLS,
    1};

static hm_status_t ps_cancel_intent(hm_call_t *call, const ProtobufCMessage *in,
                                    ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__CancelPaymentIntentRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "payment", "CancelPaymentIntent", &after);
    if (!hm_status_ok(st))
        return st;
    bool by_id = req->target_case ==
                 HOSPITALITY__PARTNER__V1__CANCEL_PAYMENT_INTENT_REQUEST__TARGET_PAYMENT_INTENT_ID;
    const char *target =
        by_id ? req->payment_intent_id
        : req->target_case ==
                HOSPITALITY__PARTNER__V1__CANCEL_PAYMENT_INTENT_REQUEST__TARGET_IDEMPOTENCY_KEY
            ? req->idempotency_key
            : NULL;
    if (!key_ok(target))
        return hm_call_invalid(call, "target", "payment_intent_id or idempotency_key is required");
    if (by_id && !hm_uuid_valid(target))
        return hm_call_invalid(call, "payment_intent_id", "payment_intent_id must be a UUID");
    const char *p[1] = {target};
    PGresult *r;
    int rc =
        hm_db_exec_arena(call->db, &call->arena,
                         by_id ? &st_intent_cancel_id : &st_intent_cancel_key, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "cancel payment intent");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no payment intent %s", target);
    if (get_i64(r, 5) ==
        HOSPITALITY__PARTNER__V1__PAYMENT_INTENT_STATUS__PAYMENT_INTENT_STATUS_SUCCEEDED)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "payment intent %s is paid: refund it", target);
    Hospitality__Partner__V1__CancelPaymentIntentResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__cancel_payment_intent_response__init(resp);
    resp->payment_intent = intent(call, r);
    *out = &resp->base;
    return answer(call, after);
}

static const hm_stmt_t st_refund = {
    "ps_refund",
    "SELECT refund_id, amount, currency, status, created FROM ps_refund($1, $2, $3::bigint, $4)",
    4};

static hm_status_t ps_refund(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Partner__V1__RefundRequest *req = (const void *)in;
    int after;
    hm_status_t st = fault_before(call, "payment", "Refund", &after);
    if (!hm_status_ok(st))
        return st;
    if (!key_ok(req->idempotency_key))
        return hm_call_invalid(call, "idempotency_key", "idempotency_key is required");
    if (!hm_uuid_valid(req->payment_intent_id))
        return hm_call_invalid(call, "payment_intent_id", "payment_intent_id must be a UUID");
    if (req->amount && req->amount->amount_minor <= 0)
        return hm_call_invalid(call, "amount", "amount must be positive");
    const char *p[4] = {req->idempotency_key, req->payment_intent_id,
                        req->amount ? hm_db_param_int64(&call->arena, req->amount->amount_minor)
                                    : NULL,
                        req->reason};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_refund, p, NULL, NULL, &r);
    if (rc == HM_EPRECOND)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION", "%s",
                             hm_arena_strdup(&call->arena, hm_db_last_message(call->db)));
    if (rc != 0)
        return hm_call_fail(call, rc, "refund");
    Hospitality__Partner__V1__Refund *f = hm_arena_alloc(&call->arena, sizeof *f);
    hospitality__partner__v1__refund__init(f);
    f->refund_id = get_str(call, r, 0);
    f->payment_intent_id = req->payment_intent_id;
    f->amount = money(call, get_i64(r, 1), hm_db_get(r, 0, 2));
    f->status = (Hospitality__Partner__V1__RefundStatus)get_i64(r, 3);
    f->reason = req->reason;
    f->created_at = get_ts(call, r, 4);
    Hospitality__Partner__V1__RefundResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__partner__v1__refund_response__init(resp);
    resp->refund = f;
    *out = &resp->base;
    return answer(call, after);
}

/* ------------------------------------------------------------------------------------------ */

#define M(svc, rpc, snake, fn)                                                                     \
    {                                                                                              \
        "/hospitality.partner.v1." svc "/" #rpc,                                                   \
            &hospitality__partner__v1__##snake##_request__descriptor,                              \
            &hospitality__partner__v1__##snake##_response__descriptor, fn,                         \
        {                                                                                          \
            .roles = HM_ROLE_SERVICE                                                               \
        }                                                                                          \
    }

static const hm_method_t inventory_methods[] = {
    M("InventoryService", CheckCapacity, check_capacity, ps_check_capacity),
    M("InventoryService", Reserve, reserve, ps_reserve),
    M("InventoryService", Release, release, ps_release),
};
static const hm_method_t pricing_methods[] = {
    M("PricingService", Quote, quote, ps_quote),
};
static const hm_method_t payment_methods[] = {
    M("PaymentService", CreatePaymentIntent, create_payment_intent, ps_create_intent),
    M("PaymentService", CancelPaymentIntent, cancel_payment_intent, ps_cancel_intent),
    M("PaymentService", Refund, refund, ps_refund),
};
static const hm_method_t admin_methods[] = {
    {"/hm.tools.partnersim.v1.PartnerSimAdmin/SetFaults",
     &hm__tools__partnersim__v1__set_faults_request__descriptor,
     &hm__tools__partnersim__v1__faults_response__descriptor,
     ps_set_faults,
     {.roles = HM_ROLE_ADMIN}},
    {"/hm.tools.partnersim.v1.PartnerSimAdmin/GetFaults",
     &hm__tools__partnersim__v1__get_faults_request__descriptor,
     &hm__tools__partnersim__v1__faults_response__descriptor,
     ps_get_faults,
     {.roles = HM_ROLE_ADMIN}},
};
static const hm_service_t inventory = {"hospitality.partner.v1.InventoryService", inventory_methods,
                                       3};
static const hm_service_t pricing = {"hospitality.partner.v1.PricingService", pricing_methods, 1};
static const hm_service_t payment = {"hospitality.partner.v1.PaymentService", payment_methods, 3};
static const hm_service_t admin = {"hm.tools.partnersim.v1.PartnerSimAdmin", admin_methods, 2};
static const hm_service_t *const services[] = {&inventory, &pricing, &payment, &admin};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "partnersim",
        .description = "STAND-IN for the inventory, pricing and payment partners (with faults)",
        .default_grpc_addr = "0.0.0.0:50059",
        .default_admin_addr = "0.0.0.0:9109",
        .services = services,
        .nservices = 4,
        .config_vars = config_vars,
        .nconfig_vars = sizeof config_vars / sizeof config_vars[0],
        .config = &ps_cfg,
        .migrations = partnersim_migrations,
        .nmigrations = partnersim_nmigrations,
        .init = ps_init,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
