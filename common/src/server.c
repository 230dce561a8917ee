/*
 * server.c - the gRPC server on the C core: worker threads, calls, health, error details.
 *
 * Model (see docs/ARCHITECTURE.md and shared/notes/grpc-c-core.md):
 * - N workers, each with its own completion queue, Postgres and Redis connection. A worker
 *   owns each call it receives from start to end, so no call state is shared between threads.
 * - Each worker keeps exactly one request posted per registered method, re-posted only after
 *   the handler returns: a busy worker then has nothing posted and new calls bind to idle
 *   workers instead of queueing behind it (pitfall 3). While draining, each worker posts
 *   DRAIN_POSTS per method, so calls the core holds are matched (and served) rather than
 *   cancelled by the shutdown.
 * - Health (Check, Watch) and unknown methods (a generic request answering UNIMPLEMENTED at
 *   once: pitfall 2) are served by CONTROL_WORKERS threads of their own, with no database:
 *   a probe never waits behind a handler blocked in Postgres.
 * - A unary call is answered with one batch: initial metadata (x-request-id), message, status
 *   (+ grpc-status-details-bin on errors) and RECV_CLOSE_ON_SERVER. Health Watch streams keep
 *   RECV_CLOSE posted separately and send a message whenever the status changes.
 * - Tags are pointers to tag_t embedded in the owning struct; a call is freed only when its
 *   outstanding batches reach zero, and a worker shuts its queue down only when it has no
 *   live calls (pitfall 1). Calls are counted and access-logged when they end, with the code
 *   the client saw (CANCELLED / DEADLINE_EXCEEDED when the call was cancelled).
 */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "hm/auth.h"
#include "hm/cache.h"
#include "hm/db.h"
#include "hm/log.h"
#include "hm/pb.h"
#include "hm/outbox.h"
#include "hm/ratelimit.h"
#include "internal.h"

#define HOUSEKEEPING_MS 100 /* worker wake-up period for Watch updates and shutdown */
#define ERROR_DOMAIN    "hospitality.mesh"
#define HEALTH_CHECK    "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH    "/grpc.health.v1.Health/Watch"
#define REFLECTION_V1   "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define REFLECTION_V1A  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#define LATENCY_BUCKETS 14
#define DRAIN_POSTS     16   /* requests posted per method per worker while draining */
#define MAX_WATCHES     1024 /* concurrent health Watch streams per process */
#define MAX_FREE_CALLS  64   /* recycled call objects kept per worker */
#define MAX_STREAMS     1024 /* HTTP/2 concurrent streams per connection */
#define MAX_ECHO        200  /* longest client string echoed in an error message */
#define CONTROL_WORKERS 2    /* threads serving health and unknown methods */
#define STOP_POLL_MS    50   /* shutdown: how often idle connections are looked for */

static const double latency_bounds[LATENCY_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};

typedef enum tag_kind {
    TAG_REQUEST, /* a posted request for a registered method completed */
    TAG_GENERIC, /* the posted generic request (unknown method) completed */
    TAG_DONE,    /* a call's final batch (or a Watch stream's send batch) completed */
    TAG_CLOSE,   /* a Watch stream's RECV_CLOSE_ON_SERVER completed */
    TAG_RECV,    /* a reflection stream's RECV_MESSAGE completed */
} tag_kind_t;

typedef struct tag {
    tag_kind_t kind;
} tag_t;

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

typedef enum builtin {
    BUILTIN_NONE,
    BUILTIN_HEALTH_CHECK,
    BUILTIN_HEALTH_WATCH,
    BUILTIN_REFLECTION, /* bidi stream: no payload read by the core */
} builtin_t;

/* A registered method: the daemon's, or a built-in health method. Immutable after start. */
typedef struct rt_method {
    const char *name;
    const hm_method_t *m;   /* NULL for built-ins */
    const char *rate_group; /* policy.rate_group, else the service name; NULL for built-ins */
    builtin_t builtin;
    void *handle; /* grpc_server_register_method */
} rt_method_t;

/* One posted request of one method on one worker. Owned by the worker. */
typedef struct slot {
    tag_t tag;
    int method;      /* index into rt.methods */
    int rank;        /* 0: always posted; > 0: posted only while draining */
    bool posted;     /* a request is outstanding on the worker's queue */
    grpc_call *call; /* filled by the core on completion */
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
} slot_t;

typedef struct generic_slot {
    tag_t tag;
    bool posted;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
} generic_slot_t;

/* A live call. Recycled through the worker's free list; the arena keeps its first block. */
typedef struct call_impl {
    hm_call_t pub;          /* what handlers see; first member */
    tag_t done;             /* final batch / Watch send batch */
    tag_t close;            /* Watch/reflection RECV_CLOSE_ON_SERVER */
    tag_t recv;             /* reflection RECV_MESSAGE */
    grpc_call *call;        /* owned reference; unref'd when refs reaches 0 */
    grpc_metadata_array md; /* request metadata; slices die with the call */
    int refs;               /* outstanding batches; the call is freed at 0 */
    int method;             /* index into rt.methods; -1 for unknown methods */
    int cancelled;          /* set by RECV_CLOSE_ON_SERVER */
    hm_code_t code;         /* status sent (metrics, access log) */
    const char *log_method; /* method name for the access log (static or arena) */
    /* Send state: everything a batch refers to lives here until the batch completes. */
    grpc_metadata initial_md[1];
    grpc_metadata trailing_md[2]; /* grpc-status-details-bin, retry-after-ms */
    int64_t retry_after_ms;       /* > 0: RESOURCE_EXHAUSTED by the rate limiter */
    size_t ntrailing;
    grpc_slice status_slice;
    grpc_byte_buffer *send_bb;
    /* Watch streams only. */
    const char *watch_name; /* health name watched (arena) */
    int last_sent;          /* last status sent, -1 before the first */
    bool send_pending;      /* a send batch is outstanding */
    bool finishing;         /* the final status has been sent */
    bool closed;            /* RECV_CLOSE_ON_SERVER completed: the call is over */
    /* Reflection streams only (on the `watches` list too, for the drain). */
    bool reflecting;           /* a ServerReflectionInfo stream */
    bool recv_pending;         /* a RECV_MESSAGE batch is outstanding */
    grpc_byte_buffer *recv_bb; /* its target */
    struct call_impl *next;    /* Watch list or free list */
    char request_id[48];
    bool traced;    /* span started: end it in call_done */
    hm_span_t span; /* the server span; ids also in the log context */
} call_impl_t;

struct hm_worker {
    int id;
    pthread_t thread;
    grpc_completion_queue *cq;
    hm_db_t *db;
    hm_cache_t *cache;
    slot_t *slots; /* [method * DRAIN_POSTS + rank] */
    generic_slot_t generic;
    int live; /* calls taken from the core and not yet freed */
    call_impl_t *free_calls;
    int nfree;            /* length of free_calls, at most MAX_FREE_CALLS */
    call_impl_t *watches; /* live Watch streams */
    bool cq_shut;
    bool control;        /* serves health and unknown methods only; no database */
    unsigned health_gen; /* last health generation pushed to Watch streams */
    uint64_t rng;        /* request-id generator state */
    /* Metrics, written by this worker only (relaxed atomics so the admin thread may read). */
    uint64_t (*counts)[HM_CODE_COUNT];        /* [nmethods + 1][code]; last row: unknown */
    uint64_t (*latency)[LATENCY_BUCKETS + 1]; /* [nmethods][bucket]; last bucket: +Inf */
    uint64_t *latency_sum_us;                 /* [nmethods] */
    long inflight;
    /* Requests posted to this worker's queue and request events it dequeued (atomics: the
     * main thread posts drain requests and reads both to see that nothing is queued). */
    uint64_t posted_n, dequeued_n;
};

static struct runtime {
    const hm_daemon_t *daemon;
    const hm_common_config_t *cfg;
    hm_crypto_t *crypto;
    hm_auth_t *auth;
    void *app;
    grpc_server *server;
    grpc_completion_queue *shutdown_cq;
    rt_method_t *methods;
    int nmethods;
    hm_worker_t *workers;       /* HM_WORKERS database workers, then CONTROL_WORKERS */
    int nworkers;               /* all of them */
    hm_worker_t *published;     /* rt.workers once complete (release/acquire): metrics read it */
    pthread_rwlock_t post_lock; /* read: check `accepting` + post; write: stop accepting */
    atomic_int accepting;       /* requests may be (re)posted; guarded by post_lock */
    atomic_int draining;        /* health NOT_SERVING, Watch streams end, drain posts */
    atomic_int stopping;        /* server shut down: workers exit once idle */
    atomic_int watches;         /* live Watch streams, all workers */
    hm_tracer_t *tracer;        /* set before workers start */
    pthread_mutex_t conn_lock;  /* guards workers' db/cache handles against their destruction
                                   while the admin thread reads their counters */
} rt = {.post_lock = PTHREAD_RWLOCK_INITIALIZER, .conn_lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- time and randomness ---- */

int64_t hm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t hm_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t hm_mono_ms(void)
{
    return hm_mono_ns() / 1000000;
}

void hm_random_bytes(void *out, size_t n)
{
    unsigned char *p = out;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            HM_ERROR("getrandom failed: %s", strerror(errno));
            abort();
        }
        p += r;
        n -= (size_t)r;
    }
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- call API for handlers ---- */

int64_t hm_call_remaining_ms(const hm_call_t *call)
{
    if (call->deadline_ms == INT64_MAX)
        return INT64_MAX;
    return call->deadline_ms - hm_mono_ms();
}

static bool slice_eq_str(grpc_slice s, const char *str)
{
    size_t n = strlen(str);
    return GRPC_SLICE_LENGTH(s) == n && memcmp(GRPC_SLICE_START_PTR(s), str, n) == 0;
}

const char *hm_call_metadata(hm_call_t *pub, const char *key, size_t *len)
{
    call_impl_t *c = (call_impl_t *)pub;
    for (size_t i = 0; i < c->md.count; i++) {
        if (slice_eq_str(c->md.metadata[i].key, key)) {
            grpc_slice v = c->md.metadata[i].value;
            if (len)
                *len = GRPC_SLICE_LENGTH(v);
            return hm_arena_strndup(&pub->arena, (const char *)GRPC_SLICE_START_PTR(v),
                                    GRPC_SLICE_LENGTH(v));
        }
    }
    return NULL;
}

const char *hm_call_peer(hm_call_t *pub)
{
    call_impl_t *c = (call_impl_t *)pub;
    char *p = grpc_call_get_peer(c->call);
    const char *copy = hm_arena_strdup(&pub->arena, p ? p : "");
    gpr_free(p);
    return copy;
}

hm_status_t hm_call_error(hm_call_t *call, hm_code_t code, const char *reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = hm_arena_vprintf(&call->arena, fmt, ap);
    va_end(ap);
    return (hm_status_t){code, reason, msg, NULL};
}

hm_status_t hm_call_invalid(hm_call_t *call, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = hm_arena_vprintf(&call->arena, fmt, ap);
    va_end(ap);
    return (hm_status_t){HM_CODE_INVALID_ARGUMENT, "VALIDATION_FAILED",
                         hm_arena_printf(&call->arena, "%s: %s", field, msg), field};
}

hm_status_t hm_call_fail(hm_call_t *call, int err, const char *what)
{
    hm_status_t st = hm_status_from_err(err);
    if (what)
        st.message = hm_arena_printf(&call->arena, "%s: %s", what, st.message);
    return st;
}

/* ---- metrics ---- */

/* Counts a finished call; dur_ns < 0 keeps it out of the latency histogram (streams). */
static void count_call(hm_worker_t *w, int method, hm_code_t code, int64_t dur_ns)
{
    int row = method < 0 ? rt.nmethods : method;
    __atomic_fetch_add(&w->counts[row][code], 1, __ATOMIC_RELAXED);
    if (method < 0 || dur_ns < 0)
        return;
    double secs = (double)dur_ns / 1e9;
    int b = 0;
    while (b < LATENCY_BUCKETS && secs > latency_bounds[b])
        b++;
    __atomic_fetch_add(&w->latency[method][b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->latency_sum_us[method], (uint64_t)(dur_ns / 1000), __ATOMIC_RELAXED);
}

static hm_worker_t *published_workers(void)
{
    return __atomic_load_n(&rt.published, __ATOMIC_ACQUIRE);
}

long hm__server_inflight(void)
{
    hm_worker_t *ws = published_workers();
    long n = 0;
    for (int i = 0; ws && i < rt.nworkers; i++)
        n += __atomic_load_n(&ws[i].inflight, __ATOMIC_RELAXED);
    return n;
}

static void counter(FILE *out, const char *name, const char *help, uint64_t v)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
            (unsigned long long)v);
}

static void gauge(FILE *out, const char *name, const char *help, uint64_t v)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name,
            (unsigned long long)v);
}

/* Postgres and Redis counters of the workers' connections, summed. */
static void store_metrics(hm_worker_t *ws, FILE *out)
{
    hm_db_stats_t d = {0}, ds;
    hm_cache_stats_t r = {0}, rs;
    pthread_mutex_lock(&rt.conn_lock);
    for (int i = 0; i < rt.nworkers; i++) {
        if (ws[i].db) {
            hm_db_stats(ws[i].db, &ds);
            d.queries += ds.queries;
            d.errors += ds.errors;
            d.reconnects += ds.reconnects;
            d.connect_failures += ds.connect_failures;
            d.tx_retries += ds.tx_retries;
            d.connected += ds.connected;
        }
        if (ws[i].cache) {
            hm_cache_stats(ws[i].cache, &rs);
            r.hits += rs.hits;
            r.misses += rs.misses;
            r.errors += rs.errors;
            r.reconnects += rs.reconnects;
            r.connected += rs.connected;
        }
    }
    pthread_mutex_unlock(&rt.conn_lock);
    counter(out, "hm_db_queries_total", "SQL statements sent by the workers.", d.queries);
    counter(out, "hm_db_errors_total", "Workers' database calls that failed.", d.errors);
    counter(out, "hm_db_reconnects_total", "Workers' Postgres connections re-established.",
            d.reconnects);
    counter(out, "hm_db_connect_failures_total", "Workers' failed Postgres connection attempts.",
            d.connect_failures);
    counter(out, "hm_db_tx_retries_total", "Transactions retried after serialization failures.",
            d.tx_retries);
    gauge(out, "hm_db_connections", "Workers' open Postgres connections.", d.connected);
    counter(out, "hm_redis_errors_total", "Workers' Redis commands failed for want of Redis.",
            r.errors);
    counter(out, "hm_redis_reconnects_total", "Workers' Redis connections re-established.",
            r.reconnects);
    gauge(out, "hm_redis_connections", "Workers' open Redis connections.", r.connected);
    counter(out, "hm_cache_hits_total", "Cache gets that found the key.", r.hits);
    counter(out, "hm_cache_misses_total", "Cache gets that did not (Redis failures included).",
            r.misses);
}

void hm__server_metrics(FILE *out)
{
    /* Published only once complete; freed only after the admin port has stopped. */
    hm_worker_t *ws = published_workers();
    if (!ws)
        return;
    fprintf(out, "# HELP hm_grpc_requests_total gRPC calls served, by method and status code.\n"
                 "# TYPE hm_grpc_requests_total counter\n");
    for (int m = 0; m <= rt.nmethods; m++) {
        const char *name = m < rt.nmethods ? rt.methods[m].name : "unknown";
        for (int code = 0; code < HM_CODE_COUNT; code++) {
            uint64_t n = 0;
            for (int i = 0; i < rt.nworkers; i++)
                n += __atomic_load_n(&ws[i].counts[m][code], __ATOMIC_RELAXED);
            if (n)
                fprintf(out, "hm_grpc_requests_total{method=\"%s\",code=\"%s\"} %llu\n", name,
                        hm_code_name((hm_code_t)code), (unsigned long long)n);
        }
    }
    fprintf(out, "# HELP hm_grpc_request_duration_seconds Unary calls: start to status sent.\n"
                 "# TYPE hm_grpc_request_duration_seconds histogram\n");
    for (int m = 0; m < rt.nmethods; m++) {
        uint64_t total = 0, sum_us = 0;
        uint64_t b[LATENCY_BUCKETS + 1] = {0};
        for (int i = 0; i < rt.nworkers; i++) {
            for (int k = 0; k <= LATENCY_BUCKETS; k++)
                b[k] += __atomic_load_n(&ws[i].latency[m][k], __ATOMIC_RELAXED);
            sum_us += __atomic_load_n(&ws[i].latency_sum_us[m], __ATOMIC_RELAXED);
        }
        for (int k = 0; k <= LATENCY_BUCKETS; k++)
            total += b[k];
        if (total == 0)
            continue;
        uint64_t run = 0;
        for (int k = 0; k < LATENCY_BUCKETS; k++) {
            run += b[k];
            fprintf(out, "hm_grpc_request_duration_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
                    rt.methods[m].name, latency_bounds[k], (unsigned long long)run);
        }
        fprintf(out,
                "hm_grpc_request_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n"
                "hm_grpc_request_duration_seconds_sum{method=\"%s\"} %.6f\n"
                "hm_grpc_request_duration_seconds_count{method=\"%s\"} %llu\n",
                rt.methods[m].name, (unsigned long long)total, rt.methods[m].name,
                (double)sum_us / 1e6, rt.methods[m].name, (unsigned long long)total);
    }
    store_metrics(ws, out);
    fprintf(out,
            "# HELP hm_grpc_inflight_calls Calls being served now.\n"
            "# TYPE hm_grpc_inflight_calls gauge\nhm_grpc_inflight_calls %ld\n"
            "# HELP hm_grpc_watch_streams Open health Watch streams.\n"
            "# TYPE hm_grpc_watch_streams gauge\nhm_grpc_watch_streams %d\n",
            hm__server_inflight(), atomic_load(&rt.watches));
}

/* ---- call objects ---- */

static void access_log(call_impl_t *c, hm_code_t code, int64_t dur_ns)
{
    if (!rt.cfg->access_log)
        return;
    bool health = c->method >= 0 && rt.methods[c->method].builtin != BUILTIN_NONE;
    hm_log_level_t lvl = health ? HM_LOG_DEBUG : HM_LOG_INFO;
    if ((int)lvl < hm__log_level)
        return;
    char fields[512];
    unsigned len = 0;
    len += (unsigned)snprintf(fields, sizeof(fields), "\"method\":\"");
    len = hm_json_escape(fields, sizeof(fields), len, c->log_method);
    len += (unsigned)snprintf(fields + len, sizeof(fields) - len,
                              "\",\"code\":\"%s\",\"duration_us\":%lld", hm_code_name(code),
                              (long long)(dur_ns / 1000));
    if (c->pub.principal && len < sizeof(fields) - 16) {
        len += (unsigned)snprintf(fields + len, sizeof(fields) - len, ",\"subject\":\"");
        len = hm_json_escape(fields, sizeof(fields), len, c->pub.principal->subject);
        if (len < sizeof(fields) - 1)
            fields[len++] = '"', fields[len] = '\0';
    }
    hm_log_ctx_t lctx = {c->pub.request_id, c->traced ? c->span.trace_id : NULL,
                         c->traced ? c->span.span_id : NULL};
    hm_log_set_ctx(&lctx);
    hm_log_write(lvl, fields, "call");
    hm_log_set_ctx(NULL);
}

static call_impl_t *call_new(hm_worker_t *w, int method)
{
    call_impl_t *c = w->free_calls;
    if (c) {
        w->free_calls = c->next;
        w->nfree--;
    } else {
        c = hm_xcalloc(1, sizeof(*c));
        hm_arena_init(&c->pub.arena, 0);
        c->done.kind = TAG_DONE;
        c->close.kind = TAG_CLOSE;
        c->recv.kind = TAG_RECV;
    }
    c->next = NULL;
    c->method = method;
    c->refs = 0;
    c->cancelled = 0;
    c->code = HM_CODE_OK;
    c->log_method = method >= 0 ? rt.methods[method].name : "unknown";
    c->ntrailing = 0;
    c->retry_after_ms = 0;
    c->status_slice = grpc_empty_slice();
    c->send_bb = NULL;
    c->watch_name = NULL;
    c->last_sent = -1;
    c->send_pending = false;
    c->finishing = false;
    c->closed = false;
    c->reflecting = false;
    c->recv_pending = false;
    c->recv_bb = NULL;
    c->pub.method = method >= 0 ? rt.methods[method].m : NULL;
    c->pub.db = w->db;
    c->pub.cache = w->cache;
    c->pub.crypto = rt.crypto;
    c->pub.app = rt.app;
    c->pub.worker = w;
    c->pub.request_id = "";
    c->pub.traceparent = NULL;
    c->pub.principal = NULL;
    c->pub.end_user = NULL;
    c->pub.published = false;
    c->pub.span = NULL;
    c->traced = false;
    c->pub.deadline_ms = INT64_MAX;
    c->pub.start_ns = hm_mono_ns();
    w->live++;
    __atomic_store_n(&w->inflight, w->live, __ATOMIC_RELAXED);
    return c;
}

/* The call is over: count it and log it with the code the client actually saw. */
static void call_done(hm_worker_t *w, call_impl_t *c)
{
    int64_t dur = hm_mono_ns() - c->pub.start_ns;
    hm_code_t code = c->code;
    if (c->cancelled)
        code = hm_call_remaining_ms(&c->pub) <= 0 ? HM_CODE_DEADLINE_EXCEEDED : HM_CODE_CANCELLED;
    count_call(w, c->method, code, c->watch_name || c->reflecting ? -1 : dur);
    access_log(c, code, dur);
    if (c->traced) {
        if (hm_span_recording(rt.tracer, &c->span)) {
            if (code != c->code)
                hm_span_set_grpc_status(&c->span, code, NULL);
            hm_span_set_grpc_peer(&c->span, hm_call_peer(&c->pub));
        }
        hm_trace_end(rt.tracer, &c->span);
        c->traced = false;
    }
}

static void call_free(hm_worker_t *w, call_impl_t *c)
{
    call_done(w, c);
    if (c->watch_name)
        atomic_fetch_sub(&rt.watches, 1);
    if (c->send_bb)
        grpc_byte_buffer_destroy(c->send_bb);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    grpc_slice_unref(c->status_slice);
    for (size_t i = 0; i < c->ntrailing; i++)
        grpc_slice_unref(c->trailing_md[i].value);
    grpc_metadata_array_destroy(&c->md);
    if (c->call)
        grpc_call_unref(c->call);
    c->call = NULL;
    w->live--;
    __atomic_store_n(&w->inflight, w->live, __ATOMIC_RELAXED);
    if (w->nfree >= MAX_FREE_CALLS) {
        hm_arena_deinit(&c->pub.arena);
        free(c);
        return;
    }
    hm_arena_reset(&c->pub.arena);
    c->next = w->free_calls;
    w->free_calls = c;
    w->nfree++;
}

static void call_unref(hm_worker_t *w, call_impl_t *c)
{
    if (--c->refs == 0)
        call_free(w, c);
}

/* The request id: the client's x-request-id when sane, else 32 random hex digits. */
static void set_request_id(hm_worker_t *w, call_impl_t *c)
{
    for (size_t i = 0; i < c->md.count; i++) {
        if (!slice_eq_str(c->md.metadata[i].key, "x-request-id"))
            continue;
        grpc_slice v = c->md.metadata[i].value;
        size_t n = GRPC_SLICE_LENGTH(v);
        const unsigned char *p = GRPC_SLICE_START_PTR(v);
        bool ok = n > 0 && n < sizeof(c->request_id);
        for (size_t k = 0; ok && k < n; k++)
            ok = (p[k] >= '0' && p[k] <= '9') || (p[k] >= 'a' && p[k] <= 'z') ||
                 (p[k] >= 'A' && p[k] <= 'Z') || p[k] == '-' || p[k] == '_' || p[k] == '.';
        if (ok) {
            memcpy(c->request_id, p, n);
            c->request_id[n] = '\0';
            c->pub.request_id = c->request_id;
            return;
        }
    }
    static const char digits[] = "0123456789abcdef";
    uint64_t a = splitmix(&w->rng), b = splitmix(&w->rng);
    for (int i = 15; i >= 0; i--, a >>= 4, b >>= 4) {
        c->request_id[i] = digits[a & 15];
        c->request_id[16 + i] = digits[b & 15];
    }
    c->request_id[32] = '\0';
    c->pub.request_id = c->request_id;
}

static void set_deadline(call_impl_t *c, gpr_timespec deadline)
{
    gpr_timespec mono = gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(mono, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0) {
        c->pub.deadline_ms = INT64_MAX;
        return;
    }
    /* gpr's monotonic clock and CLOCK_MONOTONIC differ by an offset: convert via "now". */
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    gpr_timespec left = gpr_time_sub(mono, now);
    int64_t left_ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
    c->pub.deadline_ms = hm_mono_ms() + left_ms;
}

static const char *metadata_value(call_impl_t *c, const char *key)
{
    for (size_t i = 0; i < c->md.count; i++)
        if (slice_eq_str(c->md.metadata[i].key, key))
            return hm_arena_strndup(&c->pub.arena,
                                    (const char *)GRPC_SLICE_START_PTR(c->md.metadata[i].value),
                                    GRPC_SLICE_LENGTH(c->md.metadata[i].value));
    return NULL;
}

/* ---- encoding ---- */

static grpc_byte_buffer *encode(const ProtobufCMessage *msg)
{
    size_t n = msg ? protobuf_c_message_get_packed_size(msg) : 0;
    grpc_slice s = grpc_slice_malloc(n);
    if (n)
        protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Decodes a received buffer with the call's arena; NULL on a malformed message. */
static ProtobufCMessage *decode(call_impl_t *c, grpc_byte_buffer *bb,
                                const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    ProtobufCMessage *m = protobuf_c_message_unpack(
        desc, hm_arena_pb(&c->pub.arena), GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return m;
}

static void pack_any(hm_arena_t *a, Google__Protobuf__Any *any, const char *type,
                     const ProtobufCMessage *msg)
{
    google__protobuf__any__init(any);
    any->type_url = hm_arena_printf(a, "type.googleapis.com/%s", type);
    any->value.len = protobuf_c_message_get_packed_size(msg);
    any->value.data = hm_arena_alloc(a, any->value.len ? any->value.len : 1);
    protobuf_c_message_pack(msg, any->value.data);
}

/* Trailing grpc-status-details-bin: google.rpc.Status with ErrorInfo and RequestInfo. */
static void add_status_details(call_impl_t *c, hm_status_t st)
{
    hm_arena_t *a = &c->pub.arena;
    Google__Rpc__ErrorInfo info;
    google__rpc__error_info__init(&info);
    info.reason = (char *)(st.reason ? st.reason : hm_code_name(st.code));
    info.domain = ERROR_DOMAIN;
    Google__Rpc__ErrorInfo__MetadataEntry field_entry, *entries[1];
    if (st.field) {
        google__rpc__error_info__metadata_entry__init(&field_entry);
        field_entry.key = "field";
        field_entry.value = (char *)st.field;
        entries[0] = &field_entry;
        info.metadata = entries;
        info.n_metadata = 1;
    }
    Google__Rpc__RequestInfo req;
    google__rpc__request_info__init(&req);
    req.request_id = (char *)c->pub.request_id;

    Google__Protobuf__Any any[3], *anys[3] = {&any[0], &any[1], &any[2]};
    pack_any(a, &any[0], "google.rpc.ErrorInfo", &info.base);
    pack_any(a, &any[1], "google.rpc.RequestInfo", &req.base);
    size_t ndetails = 2;
    Google__Rpc__RetryInfo retry;
    Google__Protobuf__Duration delay;
    if (c->retry_after_ms > 0) {
        google__rpc__retry_info__init(&retry);
        google__protobuf__duration__init(&delay);
        delay.seconds = c->retry_after_ms / 1000;
        delay.nanos = (int32_t)(c->retry_after_ms % 1000) * 1000000;
        retry.retry_delay = &delay;
        pack_any(a, &any[ndetails++], "google.rpc.RetryInfo", &retry.base);
    }

    Google__Rpc__Status status;
    google__rpc__status__init(&status);
    status.code = (int32_t)st.code;
    status.message = (char *)(st.message ? st.message : "");
    status.details = anys;
    status.n_details = ndetails;
    size_t n = protobuf_c_message_get_packed_size(&status.base);
    grpc_slice v = grpc_slice_malloc(n);
    protobuf_c_message_pack(&status.base, GRPC_SLICE_START_PTR(v));
    c->trailing_md[0].key = grpc_slice_from_static_string("grpc-status-details-bin");
    c->trailing_md[0].value = v;
    c->ntrailing = 1;
    if (c->retry_after_ms > 0) {
        char ms[24];
        snprintf(ms, sizeof ms, "%lld", (long long)c->retry_after_ms);
        c->trailing_md[1].key = grpc_slice_from_static_string("retry-after-ms");
        c->trailing_md[1].value = grpc_slice_from_copied_string(ms);
        c->ntrailing = 2;
    }
}

/* A client-supplied string cut to MAX_ECHO bytes (on a UTF-8 boundary) for error messages. */
static const char *echo(call_impl_t *c, const char *s)
{
    size_t n = strlen(s);
    if (n <= MAX_ECHO)
        return s;
    n = MAX_ECHO;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return hm_arena_printf(&c->pub.arena, "%.*s...", (int)n, s);
}

/* ---- sending ---- */

static void init_metadata(call_impl_t *c)
{
    c->initial_md[0].key = grpc_slice_from_static_string("x-request-id");
    c->initial_md[0].value = grpc_slice_from_static_string(c->request_id);
}

/* Starts the final batch of a unary call (or a generic one): status, optional message. */
static void send_final(hm_worker_t *w, call_impl_t *c, hm_status_t st, grpc_byte_buffer *msg)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    init_metadata(c);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 1;
    ops[n].data.send_initial_metadata.metadata = c->initial_md;
    n++;
    if (msg && st.code == HM_CODE_OK) {
        c->send_bb = msg;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = msg;
        n++;
    } else if (msg) {
        grpc_byte_buffer_destroy(msg);
    }
    if (st.code != HM_CODE_OK) {
        add_status_details(c, st);
        c->status_slice =
            grpc_slice_from_copied_string(st.message ? st.message : hm_code_name(st.code));
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)st.code;
    ops[n].data.send_status_from_server.status_details =
        st.code != HM_CODE_OK ? &c->status_slice : NULL;
    ops[n].data.send_status_from_server.trailing_metadata_count = c->ntrailing;
    ops[n].data.send_status_from_server.trailing_metadata = c->trailing_md;
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;
    c->code = st.code;
    if (c->traced && hm_span_recording(rt.tracer, &c->span))
        hm_span_set_grpc_status(&c->span, st.code, st.message);
    c->refs++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->done, NULL);
    if (e != GRPC_CALL_OK) {
        HM_ERROR("start_batch failed: %d", (int)e);
        call_unref(w, c);
    }
}

/* ---- health ---- */

static hm_status_t health_check(call_impl_t *c, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)in;
    int st = hm__health_get(req->service ? req->service : "");
    if (st == HM__HEALTH_SERVICE_UNKNOWN)
        return hm_call_error(&c->pub, HM_CODE_NOT_FOUND, "NOT_FOUND", "unknown service \"%s\"",
                             echo(c, req->service));
    Grpc__Health__V1__HealthCheckResponse *resp = hm_arena_alloc(&c->pub.arena, sizeof(*resp));
    grpc__health__v1__health_check_response__init(resp);
    resp->status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static grpc_byte_buffer *health_message(int status)
{
    Grpc__Health__V1__HealthCheckResponse resp;
    grpc__health__v1__health_check_response__init(&resp);
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    return encode(&resp.base);
}

/* Sends the next Watch message if the status changed, or ends the stream while draining. */
static void watch_pump(hm_worker_t *w, call_impl_t *c)
{
    if (c->closed || c->send_pending || c->finishing)
        return;
    bool draining = atomic_load(&rt.draining);
    int st = draining ? HM__HEALTH_NOT_SERVING : hm__health_get(c->watch_name);
    if (st == c->last_sent && !draining)
        return;
    grpc_op ops[3];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    if (c->last_sent < 0) {
        init_metadata(c);
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = 1;
        ops[n].data.send_initial_metadata.metadata = c->initial_md;
        n++;
    }
    if (c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    if (st != c->last_sent) {
        c->send_bb = health_message(st);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->send_bb;
        n++;
        c->last_sent = st;
    }
    if (draining) {
        c->status_slice = grpc_slice_from_static_string("server shutting down");
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = GRPC_STATUS_UNAVAILABLE;
        ops[n].data.send_status_from_server.status_details = &c->status_slice;
        n++;
        c->finishing = true;
        c->code = HM_CODE_UNAVAILABLE;
    }
    c->send_pending = true;
    c->refs++;
    if (grpc_call_start_batch(c->call, ops, n, &c->done, NULL) != GRPC_CALL_OK) {
        c->send_pending = false;
        c->finishing = true;
        call_unref(w, c);
    }
}

static void watch_unlink(hm_worker_t *w, call_impl_t *c)
{
    for (call_impl_t **p = &w->watches; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            c->next = NULL;
            return;
        }
    }
}

static void watch_start(hm_worker_t *w, call_impl_t *c, const ProtobufCMessage *in)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)in;
    c->watch_name = hm_arena_strdup(&c->pub.arena, req->service ? req->service : "");
    atomic_fetch_add(&rt.watches, 1); /* released in call_free */
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->refs++;
    if (grpc_call_start_batch(c->call, &op, 1, &c->close, NULL) != GRPC_CALL_OK) {
        call_unref(w, c);
        return;
    }
    c->next = w->watches;
    w->watches = c;
    watch_pump(w, c);
}

static void watch_event(hm_worker_t *w, call_impl_t *c, tag_kind_t kind)
{
    if (kind == TAG_CLOSE) {
        /* The call is over: status sent, or the client went away. No more sends. */
        c->closed = true;
        watch_unlink(w, c);
    } else {
        c->send_pending = false;
        watch_pump(w, c); /* takes its own reference when it sends */
    }
    call_unref(w, c);
}

/* ---- reflection streams ---- */

/* Ends a reflection stream with `code` (the client's next message, if any, is ignored). */
static void reflect_finish(hm_worker_t *w, call_impl_t *c, grpc_status_code code, const char *msg)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    if (c->last_sent < 0) {
        init_metadata(c);
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = 1;
        ops[n].data.send_initial_metadata.metadata = c->initial_md;
        n++;
        c->last_sent = 0;
    }
    grpc_slice_unref(c->status_slice);
    c->status_slice = grpc_slice_from_static_string(msg);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details = msg[0] ? &c->status_slice : NULL;
    n++;
    c->finishing = true;
    c->code = (hm_code_t)code;
    c->send_pending = true;
    c->refs++;
    if (grpc_call_start_batch(c->call, ops, n, &c->done, NULL) != GRPC_CALL_OK) {
        c->send_pending = false;
        call_unref(w, c);
    }
}

/* Waits for the client's next request message. */
static void reflect_recv(hm_worker_t *w, call_impl_t *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    c->recv_bb = NULL;
    c->recv_pending = true;
    c->refs++;
    if (grpc_call_start_batch(c->call, &op, 1, &c->recv, NULL) != GRPC_CALL_OK) {
        c->recv_pending = false;
        call_unref(w, c);
    }
}

static void reflect_start(hm_worker_t *w, call_impl_t *c)
{
    c->reflecting = true;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->refs++;
    if (grpc_call_start_batch(c->call, &op, 1, &c->close, NULL) != GRPC_CALL_OK) {
        call_unref(w, c);
        return;
    }
    c->next = w->watches;
    w->watches = c;
    reflect_recv(w, c);
}

/* A request message arrived (or the client half-closed: recv_bb NULL): answer it. */
static void reflect_received(hm_worker_t *w, call_impl_t *c, bool ok)
{
    c->recv_pending = false;
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    if (!ok || c->closed || c->finishing) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
    } else if (!bb) {
        reflect_finish(w, c, GRPC_STATUS_OK, "");
    } else {
        grpc_byte_buffer_reader reader;
        grpc_slice all = grpc_empty_slice();
        if (grpc_byte_buffer_reader_init(&reader, bb)) {
            all = grpc_byte_buffer_reader_readall(&reader);
            grpc_byte_buffer_reader_destroy(&reader);
        }
        grpc_byte_buffer_destroy(bb);
        uint8_t *out = NULL;
        size_t outlen = 0;
        int rc =
            hm__reflection_answer(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), &out, &outlen);
        grpc_slice_unref(all);
        if (rc != 0) {
            reflect_finish(w, c, GRPC_STATUS_INVALID_ARGUMENT,
                           "reflection request could not be decoded");
        } else {
            grpc_slice s = grpc_slice_from_copied_buffer((const char *)out, outlen);
            free(out);
            if (c->send_bb)
                grpc_byte_buffer_destroy(c->send_bb);
            c->send_bb = grpc_raw_byte_buffer_create(&s, 1);
            grpc_slice_unref(s);
            grpc_op ops[2];
            memset(ops, 0, sizeof(ops));
            size_t n = 0;
            if (c->last_sent < 0) {
                init_metadata(c);
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                ops[n].data.send_initial_metadata.count = 1;
                ops[n].data.send_initial_metadata.metadata = c->initial_md;
                n++;
                c->last_sent = 0;
            }
            ops[n].op = GRPC_OP_SEND_MESSAGE;
            ops[n].data.send_message.send_message = c->send_bb;
            n++;
            c->send_pending = true;
            c->refs++;
            if (grpc_call_start_batch(c->call, ops, n, &c->done, NULL) != GRPC_CALL_OK) {
                c->send_pending = false;
                call_unref(w, c);
            }
        }
    }
    call_unref(w, c); /* the receive batch's reference */
}

/* A send batch completed: wait for the next request, unless the stream is ending. */
static void reflect_sent(hm_worker_t *w, call_impl_t *c)
{
    c->send_pending = false;
    if (!c->finishing && !c->closed) {
        if (atomic_load(&rt.draining))
            reflect_finish(w, c, GRPC_STATUS_UNAVAILABLE, "server shutting down");
        else
            reflect_recv(w, c);
    }
    call_unref(w, c);
}

/* Draining: a stream idle between requests is ended so the drain need not wait for it. */
static void reflect_drain(hm_worker_t *w, call_impl_t *c)
{
    if (!c->closed && !c->finishing && !c->send_pending)
        reflect_finish(w, c, GRPC_STATUS_UNAVAILABLE, "server shutting down");
}

/* ---- serving ---- */

/* Whether worker w serves method m: control workers serve the built-ins, the others the rest. */
static bool serves(const hm_worker_t *w, int m)
{
    return w->control == (rt.methods[m].builtin != BUILTIN_NONE);
}

/*
 * Posts one request. Called by the owning worker, or by the main thread for the drain slots
 * (rank > 0) before the worker touches them: `posted` is set before the request so the
 * worker's completion (which clears it) always comes after.
 */
static void post_request(hm_worker_t *w, slot_t *s)
{
    if (s->posted)
        return;
    pthread_rwlock_rdlock(&rt.post_lock);
    if (!atomic_load(&rt.accepting)) {
        pthread_rwlock_unlock(&rt.post_lock);
        return;
    }
    grpc_metadata_array_init(&s->md);
    s->call = NULL;
    s->payload = NULL;
    s->posted = true;
    __atomic_fetch_add(&w->posted_n, 1, __ATOMIC_RELAXED);
    /* Streams registered without a payload must not ask for one (PAYLOAD_TYPE_MISMATCH). */
    grpc_byte_buffer **payload =
        rt.methods[s->method].builtin == BUILTIN_REFLECTION ? NULL : &s->payload;
    grpc_call_error e =
        grpc_server_request_registered_call(rt.server, rt.methods[s->method].handle, &s->call,
                                            &s->deadline, &s->md, payload, w->cq, w->cq, &s->tag);
    pthread_rwlock_unlock(&rt.post_lock);
    if (e != GRPC_CALL_OK) {
        __atomic_fetch_sub(&w->posted_n, 1, __ATOMIC_RELAXED);
        s->posted = false;
        grpc_metadata_array_destroy(&s->md);
        HM_ERROR("request_registered_call failed: %d", (int)e);
    }
}

static void post_generic(hm_worker_t *w)
{
    generic_slot_t *g = &w->generic;
    if (g->posted)
        return;
    pthread_rwlock_rdlock(&rt.post_lock);
    if (!atomic_load(&rt.accepting)) {
        pthread_rwlock_unlock(&rt.post_lock);
        return;
    }
    grpc_call_details_init(&g->details);
    grpc_metadata_array_init(&g->md);
    g->call = NULL;
    g->posted = true;
    __atomic_fetch_add(&w->posted_n, 1, __ATOMIC_RELAXED);
    grpc_call_error e =
        grpc_server_request_call(rt.server, &g->call, &g->details, &g->md, w->cq, w->cq, &g->tag);
    pthread_rwlock_unlock(&rt.post_lock);
    if (e != GRPC_CALL_OK) {
        __atomic_fetch_sub(&w->posted_n, 1, __ATOMIC_RELAXED);
        g->posted = false;
        grpc_call_details_destroy(&g->details);
        grpc_metadata_array_destroy(&g->md);
    }
}

/* Re-posts a slot after its call: rank 0 always, the drain extras only while draining. */
static void repost(hm_worker_t *w, slot_t *s)
{
    if (s->rank == 0 || atomic_load(&rt.draining))
        post_request(w, s);
}

/* Runs a decoded unary request through its handler. */
static hm_status_t run_handler(hm_worker_t *w, call_impl_t *c, const rt_method_t *m,
                               const ProtobufCMessage *req, ProtobufCMessage **resp)
{
    if (m->builtin == BUILTIN_HEALTH_CHECK)
        return health_check(c, req, resp);
    if (w->db)
        hm_db_set_deadline(w->db,
                           c->pub.deadline_ms == INT64_MAX ? -1 : hm_call_remaining_ms(&c->pub));
    hm_status_t st = m->m->handler(&c->pub, req, resp);
    if (w->db)
        hm_db_end_call(w->db);
    if (c->pub.published)
        hm_relay_kick(hm_relay()); /* its transaction has committed (or rolled back) by now */
    if (st.code == HM_CODE_OK && *resp && (*resp)->descriptor != m->m->response) {
        HM_ERROR("handler of %s returned a %s, not a %s", m->name, (*resp)->descriptor->name,
                 m->m->response->name);
        st = hm_status_from_err(HM_EINTERNAL);
    }
    if ((unsigned)st.code >= HM_CODE_COUNT) {
        HM_ERROR("handler of %s returned status code %d", m->name, (int)st.code);
        st = hm_status_from_err(HM_EINTERNAL);
    }
    return st;
}

/* The caller's principal from its credentials; a service caller may name the end user it
 * acts for (kept for audit, never used for permissions). */
static hm_status_t authenticate(call_impl_t *c)
{
    const hm_principal_t *p = NULL;
    hm_status_t st =
        hm_auth_authenticate(rt.auth, &c->pub.arena, metadata_value(c, HM_AUTH_MD_AUTHORIZATION),
                             metadata_value(c, HM_AUTH_MD_API_KEY), &p);
    if (!hm_status_ok(st))
        return st;
    c->pub.principal = p;
    if (p->roles & HM_ROLE_SERVICE)
        c->pub.end_user = metadata_value(c, HM_AUTH_MD_END_USER);
    return st;
}

/*
 * Takes a token from the caller's bucket of the method's group (hm/ratelimit.h): by principal
 * subject, or "addr:<host>" for anonymous callers of open methods; service callers only when a
 * "service" rule exists. Redis trouble allows the call (counted by the limiter).
 */
static hm_status_t rate_limit(hm_worker_t *w, call_impl_t *c, const rt_method_t *m)
{
    hm_ratelimit_t *rl = hm__ratelimit();
    if (!hm_ratelimit_enabled(rl))
        return HM_STATUS_OK;
    const hm_principal_t *p = c->pub.principal;
    const char *group = m->rate_group, *who;
    if (p && (p->roles & HM_ROLE_SERVICE)) {
        if (!hm_ratelimit_has_group(rl, HM_RATELIMIT_SERVICE_GROUP))
            return HM_STATUS_OK;
        group = HM_RATELIMIT_SERVICE_GROUP;
        who = p->subject;
    } else if (p) {
        who = p->subject;
    } else {
        /* "ipv4:127.0.0.1:5555" -> "addr:ipv4:127.0.0.1": the port changes per connection. */
        char *peer = (char *)hm_call_peer(&c->pub), *colon = strrchr(peer, ':');
        if (colon && colon != strchr(peer, ':'))
            *colon = '\0';
        who = hm_arena_printf(&c->pub.arena, "addr:%s", peer);
    }
    int64_t retry = 0;
    if (hm_ratelimit_take(rl, w->cache, group, who, &retry) != HM_ERATE)
        return HM_STATUS_OK;
    c->retry_after_ms = retry;
    return hm_call_error(&c->pub, HM_CODE_RESOURCE_EXHAUSTED, "RATE_LIMITED",
                         "rate limit exceeded; retry in %lld ms", (long long)retry);
}

static void serve_registered(hm_worker_t *w, slot_t *s, bool ok)
{
    s->posted = false;
    if (!ok || !s->call || w->cq_shut) {
        /* Shutdown: the request was never matched (or arrived after the queue closed). */
        if (s->call)
            grpc_call_unref(s->call);
        s->call = NULL;
        grpc_metadata_array_destroy(&s->md);
        if (s->payload)
            grpc_byte_buffer_destroy(s->payload);
        s->payload = NULL;
        return;
    }
    const rt_method_t *m = &rt.methods[s->method];
    call_impl_t *c = call_new(w, s->method);
    c->call = s->call;
    c->md = s->md; /* the slot's array is re-initialised when re-posted */
    grpc_byte_buffer *payload = s->payload;
    s->call = NULL;
    s->payload = NULL;
    set_deadline(c, s->deadline);
    set_request_id(w, c);
    if (m->builtin == BUILTIN_REFLECTION) {
        reflect_start(w, c);
        repost(w, s);
        return;
    }
    c->pub.traceparent = metadata_value(c, "traceparent");
    /* Health probes get a span only when the caller asked for one (a traceparent). */
    if (!m->builtin || c->pub.traceparent) {
        hm_trace_start_server(rt.tracer, c->pub.traceparent, metadata_value(c, "tracestate"),
                              c->log_method + 1, &c->span);
        if (hm_span_recording(rt.tracer, &c->span))
            hm_span_set_rpc(&c->span, c->log_method);
        c->traced = true;
        c->pub.span = &c->span;
    }

    hm_log_ctx_t lctx = {c->pub.request_id, c->traced ? c->span.trace_id : NULL,
                         c->traced ? c->span.span_id : NULL};
    hm_log_set_ctx(&lctx);

    const ProtobufCMessageDescriptor *req_desc =
        m->builtin ? &grpc__health__v1__health_check_request__descriptor : m->m->request;
    bool open = m->builtin || m->m->policy.open;
    hm_status_t st = HM_STATUS_OK;
    ProtobufCMessage *req = NULL, *resp = NULL;
    /* Authenticate before decoding: anonymous callers cannot make us parse their messages. */
    if (!open)
        st = authenticate(c);
    if (hm_status_ok(st) && !m->builtin)
        st = rate_limit(w, c, m);
    if (!hm_status_ok(st)) {
        if (payload)
            grpc_byte_buffer_destroy(payload);
    } else if (!payload) {
        /* No message: the client sent none, or cancelled before it arrived. */
        st = (hm_status_t){HM_CODE_INVALID_ARGUMENT, "MALFORMED_REQUEST", "request message missing",
                           NULL};
    } else {
        req = decode(c, payload, req_desc);
        grpc_byte_buffer_destroy(payload);
        if (req && !hm_pb_repackable(req))
            req = NULL; /* decodable by protobuf-c only: refuse before anyone re-packs it */
        if (!req)
            st = (hm_status_t){HM_CODE_INVALID_ARGUMENT, "MALFORMED_REQUEST",
                               "request message could not be decoded", NULL};
    }

    if (hm_status_ok(st) && m->builtin == BUILTIN_HEALTH_WATCH) {
        if (atomic_load(&rt.watches) >= MAX_WATCHES) {
            st = (hm_status_t){HM_CODE_RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED",
                               "too many health Watch streams", NULL};
        } else {
            hm_log_set_ctx(NULL);
            watch_start(w, c, req);
            repost(w, s);
            return;
        }
    }
    if (hm_status_ok(st) && hm_call_remaining_ms(&c->pub) <= 0)
        st = (hm_status_t){HM_CODE_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED",
                           "deadline expired before the call was served", NULL};
    if (hm_status_ok(st) && !open)
        st = hm_auth_authorize(c->pub.principal, &m->m->policy, req, &c->pub.arena);
    if (hm_status_ok(st))
        st = run_handler(w, c, m, req, &resp);
    hm_log_set_ctx(NULL);
    send_final(w, c, st, hm_status_ok(st) ? encode(resp) : NULL);
    repost(w, s);
}

static void serve_generic(hm_worker_t *w, bool ok)
{
    generic_slot_t *g = &w->generic;
    g->posted = false;
    if (!ok || !g->call || w->cq_shut) {
        if (g->call)
            grpc_call_unref(g->call);
        g->call = NULL;
        grpc_call_details_destroy(&g->details);
        grpc_metadata_array_destroy(&g->md);
        return;
    }
    call_impl_t *c = call_new(w, -1);
    c->call = g->call;
    c->md = g->md;
    g->call = NULL;
    set_request_id(w, c);
    c->log_method =
        hm_arena_strndup(&c->pub.arena, (const char *)GRPC_SLICE_START_PTR(g->details.method),
                         GRPC_SLICE_LENGTH(g->details.method));
    grpc_call_details_destroy(&g->details);
    hm_status_t st = hm_call_error(&c->pub, HM_CODE_UNIMPLEMENTED, "UNIMPLEMENTED",
                                   "unknown method %s", echo(c, c->log_method));
    c->log_method = echo(c, c->log_method);
    /* The status ends the stream; the request message is never read (nor buffered). */
    send_final(w, c, st, NULL);
    post_generic(w);
}

static void housekeeping(hm_worker_t *w)
{
    bool draining = atomic_load(&rt.draining);
    unsigned gen = hm__health_generation();
    if (gen != w->health_gen || draining) {
        w->health_gen = gen;
        for (call_impl_t *c = w->watches, *next; c; c = next) {
            next = c->next;
            if (!c->reflecting)
                watch_pump(w, c);
            else if (draining)
                reflect_drain(w, c);
        }
    }
    if (atomic_load(&rt.stopping) && w->live == 0 && !w->cq_shut) {
        w->cq_shut = true;
        grpc_completion_queue_shutdown(w->cq);
    }
}

static void *worker_main(void *arg)
{
    hm_worker_t *w = arg;
    for (int i = 0; i < rt.nmethods; i++)
        if (serves(w, i))
            post_request(w, &w->slots[i * DRAIN_POSTS]);
    if (w->control)
        post_generic(w);
    for (;;) {
        gpr_timespec tick = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(HOUSEKEEPING_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(w->cq, tick, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            tag_t *t = ev.tag;
            if (t->kind == TAG_REQUEST || t->kind == TAG_GENERIC)
                __atomic_fetch_add(&w->dequeued_n, 1, __ATOMIC_RELAXED);
            switch (t->kind) {
            case TAG_REQUEST:
                serve_registered(w, container_of(t, slot_t, tag), ev.success);
                break;
            case TAG_GENERIC:
                serve_generic(w, ev.success);
                break;
            case TAG_DONE: {
                call_impl_t *c = container_of(t, call_impl_t, done);
                if (c->watch_name)
                    watch_event(w, c, TAG_DONE);
                else if (c->reflecting)
                    reflect_sent(w, c);
                else
                    call_unref(w, c);
                break;
            }
            case TAG_CLOSE: {
                call_impl_t *c = container_of(t, call_impl_t, close);
                if (c->watch_name)
                    watch_event(w, c, TAG_CLOSE);
                else if (c->reflecting) {
                    c->closed = true;
                    watch_unlink(w, c);
                    call_unref(w, c);
                } else
                    call_unref(w, c);
                break;
            }
            case TAG_RECV:
                reflect_received(w, container_of(t, call_impl_t, recv), ev.success);
                break;
            }
        }
        housekeeping(w);
    }
    while (w->free_calls) {
        call_impl_t *c = w->free_calls;
        w->free_calls = c->next;
        hm_arena_deinit(&c->pub.arena);
        free(c);
    }
    w->nfree = 0;
    return NULL;
}

/* ---- start and stop ---- */

static int add_method(int *n, const char *name, const hm_method_t *m, const char *service,
                      builtin_t b, char *err, size_t errlen)
{
    rt_method_t *r = &rt.methods[(*n)++];
    r->name = name;
    r->m = m;
    r->rate_group = m ? (m->policy.rate_group ? m->policy.rate_group : service) : NULL;
    r->builtin = b;
    r->handle = grpc_server_register_method(
        rt.server, name, NULL,
        b == BUILTIN_REFLECTION ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
        0);
    if (!r->handle) {
        snprintf(err, errlen, "cannot register method %s (registered twice?)", name);
        return HM_EINVAL;
    }
    return 0;
}

/* Frees what hm__server_start built, except the metrics (see hm__server_release). */
static void destroy_server_parts(void)
{
    if (rt.server)
        grpc_server_destroy(rt.server);
    rt.server = NULL;
    if (rt.shutdown_cq) {
        grpc_completion_queue_shutdown(rt.shutdown_cq);
        grpc_completion_queue_destroy(rt.shutdown_cq);
    }
    rt.shutdown_cq = NULL;
    for (int i = 0; rt.workers && i < rt.nworkers; i++) {
        hm_worker_t *w = &rt.workers[i];
        if (w->cq) {
            grpc_completion_queue_shutdown(w->cq);
            while (
                grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
                GRPC_QUEUE_SHUTDOWN)
                ;
            grpc_completion_queue_destroy(w->cq);
        }
        w->cq = NULL;
        pthread_mutex_lock(&rt.conn_lock);
        hm_db_destroy(w->db);
        w->db = NULL;
        if (w->cache)
            hm_cache_destroy(w->cache);
        w->cache = NULL;
        pthread_mutex_unlock(&rt.conn_lock);
        free(w->slots);
        w->slots = NULL;
    }
}

int hm__server_start(const hm__runtime_opts_t *o, char *err, size_t errlen)
{
    const hm_daemon_t *d = o->daemon;
    rt.daemon = d;
    rt.cfg = o->cfg;
    rt.tracer = o->tracer;
    rt.crypto = o->crypto;
    rt.auth = o->auth;
    rt.app = o->app;
    atomic_store(&rt.accepting, 1);

    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)o->cfg->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = (int)o->cfg->max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = MAX_STREAMS;
    grpc_channel_args cargs = {3, args};
    rt.server = grpc_server_create(&cargs, NULL);

    bool reflection =
        hm__reflection_enabled() && hm__reflection_init(d->services, d->nservices) == 0;
    size_t total = 4;
    for (size_t i = 0; i < d->nservices; i++)
        total += d->services[i]->nmethods;
    rt.methods = hm_xcalloc(total, sizeof(*rt.methods));
    int n = 0, rc = 0;
    rc = add_method(&n, HEALTH_CHECK, NULL, NULL, BUILTIN_HEALTH_CHECK, err, errlen);
    if (!rc)
        rc = add_method(&n, HEALTH_WATCH, NULL, NULL, BUILTIN_HEALTH_WATCH, err, errlen);
    if (!rc && reflection)
        rc = add_method(&n, REFLECTION_V1, NULL, NULL, BUILTIN_REFLECTION, err, errlen);
    if (!rc && reflection)
        rc = add_method(&n, REFLECTION_V1A, NULL, NULL, BUILTIN_REFLECTION, err, errlen);
    for (size_t i = 0; !rc && i < d->nservices; i++)
        for (size_t k = 0; !rc && k < d->services[i]->nmethods; k++)
            rc = add_method(&n, d->services[i]->methods[k].name, &d->services[i]->methods[k],
                            d->services[i]->name, BUILTIN_NONE, err, errlen);
    rt.nmethods = n;

    rt.nworkers = (int)o->cfg->workers + CONTROL_WORKERS;
    rt.workers = hm_xcalloc((size_t)rt.nworkers, sizeof(*rt.workers));
    for (int i = 0; i < rt.nworkers; i++) {
        hm_worker_t *w = &rt.workers[i];
        w->id = i;
        w->control = i >= (int)o->cfg->workers;
        w->cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(rt.server, w->cq, NULL);
        w->slots = hm_xcalloc((size_t)rt.nmethods * DRAIN_POSTS, sizeof(*w->slots));
        for (int k = 0; k < rt.nmethods * DRAIN_POSTS; k++) {
            w->slots[k].tag.kind = TAG_REQUEST;
            w->slots[k].method = k / DRAIN_POSTS;
            w->slots[k].rank = k % DRAIN_POSTS;
        }
        w->generic.tag.kind = TAG_GENERIC;
        w->counts = hm_xcalloc((size_t)rt.nmethods + 1, sizeof(*w->counts));
        w->latency = hm_xcalloc((size_t)rt.nmethods, sizeof(*w->latency));
        w->latency_sum_us = hm_xcalloc((size_t)rt.nmethods, sizeof(*w->latency_sum_us));
        hm_random_bytes(&w->rng, sizeof(w->rng));
        if (w->control)
            continue;
        if (o->cfg->database_url && *o->cfg->database_url)
            w->db = hm_db_create(o->cfg->database_url, o->cfg->statement_timeout_ms);
        w->cache = hm_cache_create(o->cfg->redis_addr, o->cfg->redis_timeout_ms);
    }
    rt.shutdown_cq = grpc_completion_queue_create_for_pluck(NULL);
    __atomic_store_n(&rt.published, rt.workers, __ATOMIC_RELEASE);

    if (rc) {
        destroy_server_parts();
        return rc;
    }
    const hm__tls_t *tls = hm__server_tls();
    grpc_server_credentials *creds;
    if (tls && tls->on) {
        grpc_ssl_pem_key_cert_pair pair = {tls->key_pem, tls->cert_pem};
        grpc_ssl_client_certificate_request_type req =
            !tls->ca_pem ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : tls->client_auth == HM__TLS_REQUIRE
                ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : tls->client_auth == HM__TLS_OPTIONAL ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                                   : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
        creds = grpc_ssl_server_credentials_create_ex(tls->ca_pem, &pair, 1, req, NULL);
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    int port = grpc_server_add_http2_port(rt.server, o->cfg->grpc_addr, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) {
        snprintf(err, errlen, "HM_GRPC_ADDR: cannot listen on %s", o->cfg->grpc_addr);
        destroy_server_parts();
        return HM_EIO;
    }
    grpc_server_start(rt.server);
    for (int i = 0; i < rt.nworkers; i++) {
        if (pthread_create(&rt.workers[i].thread, NULL, worker_main, &rt.workers[i]) != 0) {
            HM_ERROR("cannot start worker thread %d: %s", i, strerror(errno));
            abort(); /* workers already running own calls: no clean way back */
        }
    }
    HM_INFO("serving gRPC%s on %s with %d workers (+%d for health), %d methods",
            !tls || !tls->on                                     ? ""
            : tls->ca_pem && tls->client_auth == HM__TLS_REQUIRE ? " (mTLS)"
                                                                 : " (TLS)",
            o->cfg->grpc_addr, rt.nworkers - CONTROL_WORKERS, CONTROL_WORKERS, rt.nmethods);
    return 0;
}

/*
 * Begins the drain: Watch streams end, and the main thread posts DRAIN_POSTS requests per
 * method on every worker (busy ones included), so calls the core still holds are matched to a
 * worker queue and served instead of being cancelled when the server shuts down.
 */
void hm__server_drain(void)
{
    if (atomic_exchange(&rt.draining, 1))
        return;
    for (int i = 0; i < rt.nworkers; i++) {
        hm_worker_t *w = &rt.workers[i];
        for (int m = 0; m < rt.nmethods; m++)
            if (serves(w, m))
                for (int r = 1; r < DRAIN_POSTS; r++)
                    post_request(w, &w->slots[m * DRAIN_POSTS + r]);
    }
}

/* True when no worker holds a call and nothing is queued for one (after the shutdown call,
 * every posted request comes back, matched or failed). */
static bool all_idle(void)
{
    for (int i = 0; i < rt.nworkers; i++) {
        hm_worker_t *w = &rt.workers[i];
        if (__atomic_load_n(&w->inflight, __ATOMIC_RELAXED) != 0 ||
            __atomic_load_n(&w->posted_n, __ATOMIC_RELAXED) !=
                __atomic_load_n(&w->dequeued_n, __ATOMIC_RELAXED))
            return false;
    }
    return true;
}

void hm__server_stop(int64_t grace_ms)
{
    static tag_t shutdown_tag = {TAG_DONE};
    int64_t until = hm_mono_ms() + grace_ms;
    hm__server_drain();
    pthread_rwlock_wrlock(&rt.post_lock);
    atomic_store(&rt.accepting, 0);
    pthread_rwlock_unlock(&rt.post_lock);
    grpc_server_shutdown_and_notify(rt.server, rt.shutdown_cq, &shutdown_tag);
    /* The notification comes only once every connection has closed: when no call is left,
     * cancelling "all calls" closes the idle connections that would otherwise hold it. */
    bool done = false, cancelled = false;
    while (!done) {
        int64_t now = hm_mono_ms();
        if (now >= until) {
            HM_WARN("grace period of %lld ms over with %ld calls in flight: cancelling them",
                    (long long)grace_ms, hm__server_inflight());
            grpc_server_cancel_all_calls(rt.server);
            for (int i = 0; i < rt.nworkers; i++)
                hm_db_abort(rt.workers[i].db); /* handlers blocked in Postgres return */
            grpc_completion_queue_pluck(rt.shutdown_cq, &shutdown_tag,
                                        gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            break;
        }
        int64_t wait = until - now < STOP_POLL_MS ? until - now : STOP_POLL_MS;
        gpr_timespec t =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(wait, GPR_TIMESPAN));
        done = grpc_completion_queue_pluck(rt.shutdown_cq, &shutdown_tag, t, NULL).type ==
               GRPC_OP_COMPLETE;
        if (!done && !cancelled && all_idle()) {
            grpc_server_cancel_all_calls(rt.server);
            cancelled = true;
        }
    }
    atomic_store(&rt.stopping, 1);
    for (int i = 0; i < rt.nworkers; i++)
        pthread_join(rt.workers[i].thread, NULL);
    destroy_server_parts();
}

void hm__server_release(void)
{
    __atomic_store_n(&rt.published, NULL, __ATOMIC_RELEASE);
    for (int i = 0; rt.workers && i < rt.nworkers; i++) {
        free(rt.workers[i].counts);
        free(rt.workers[i].latency);
        free(rt.workers[i].latency_sum_us);
    }
    free(rt.workers);
    rt.workers = NULL;
    free(rt.methods);
    rt.methods = NULL;
    hm__reflection_deinit();
}
