/*
 * trace.c - W3C trace context, spans and their export over OTLP/HTTP JSON (hm/trace.h).
 *
 * Hot path (every call): parsing or generating ids, filling a fixed-size span, and at the end
 * one memcpy into the export ring under `lock`. Ids come from a per-thread xoshiro256**
 * generator seeded from getrandom (re-seeded in a forked child), so no call takes a lock or
 * makes a system call for them. Sampling of new traces compares 53 random bits of the trace
 * id with the ratio, so the decision is a function of the trace id.
 *
 * The ring: `cap` slots, the queued spans are slots head .. head+count-1 (mod cap). Producers
 * copy into slot head+count and increment count, under the lock. The exporter notes head and
 * n = min(count, HM_TRACE_BATCH_MAX) under the lock, renders those n slots without it (no
 * producer writes them: producers only write past head+count), then advances head and
 * decrements count under the lock again. So the lock is never held across rendering or the
 * network, and a full ring means a dropped span, never a wait.
 *
 * Export: one libcurl easy handle owned by the exporter thread (so the connection to the
 * collector is kept alive between batches), JSON rendered into a buffer the thread reuses.
 * 2xx is success (a partialSuccess.rejectedSpans count in the answer is subtracted and counted
 * as failed); 429, 502, 503 and 504 are retried up to EXPORT_ATTEMPTS times in all, after
 * Retry-After when the collector sent one (capped at RETRY_AFTER_MAX_MS), else after an
 * exponential backoff with jitter; anything else, including transport errors, drops the batch
 * and counts it. Failures are logged when exporting starts failing and when it recovers, not
 * once per batch.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "hm/arena.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/server.h"
#include "hm/trace.h"

#define SEC 1000LL
#define MIN (60LL * SEC)

#define OTLP_TRACES_PATH   "/v1/traces"
#define CONNECT_TIMEOUT_MS 1000L
#define TOTAL_TIMEOUT_MS   5000L
#define EXPORT_ATTEMPTS    4          /* requests per batch at most, the first included */
#define BACKOFF_BASE_MS    250        /* first backoff without Retry-After; doubles per retry */
#define BACKOFF_MAX_MS     5000       /* longest backoff without Retry-After */
#define RETRY_AFTER_MAX_MS 30000      /* longest Retry-After honoured */
#define RESPONSE_MAX       65536      /* bytes of a collector's answer kept (for partialSuccess) */
#define SPAN_JSON_MIN      1024       /* JSON bytes reserved per span before rendering it */
#define BUF_KEEP           (4u << 20) /* an export buffer grown past this is freed after use */

/* ---- configuration table ---- */

#define TRACE(field, nm, ty, df, lo, hi, ch, fl, hp)                                               \
    HM_CFG_VAR(hm_trace_config_t, field, nm, ty, df, lo, hi, ch, fl, hp)

const hm_cfg_var_t hm_trace_config_vars[] = {
    TRACE(otlp_endpoint, "HM_OTLP_ENDPOINT", HM_CFG_STR, NULL, 1, 0, NULL, 0,
          "OTLP/HTTP collector URL (http://host:4318); spans go to <url>/v1/traces; "
          "unset = no export"),
    TRACE(sample_ratio, "HM_TRACE_SAMPLE_RATIO", HM_CFG_STR, "1.0", 1, 0, NULL, 0,
          "share of new traces sampled, 0 to 1 (calls with a parent follow the parent)"),
    TRACE(queue_size, "HM_TRACE_QUEUE", HM_CFG_INT, "4096", 16, 65536, NULL, 0,
          "spans waiting for export at most; more are dropped and counted"),
    TRACE(batch_ms, "HM_TRACE_BATCH_MS", HM_CFG_DURATION, "1s", 10, 1 * MIN, NULL, 0,
          "longest wait before queued spans are exported"),
};

const size_t hm_trace_config_nvars = sizeof hm_trace_config_vars / sizeof hm_trace_config_vars[0];

/* ---- the tracer ---- */

/* A growable byte buffer, owned by the exporter thread. */
typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

struct hm_tracer {
    uint64_t sample_below; /* a new trace is sampled when 53 random bits of its id are below */
    double ratio;          /* HM_TRACE_SAMPLE_RATIO, for /metrics */
    bool exporting;        /* an endpoint is configured and the exporter thread runs */
    char *url;             /* <endpoint>/v1/traces; NULL without an endpoint */
    int64_t batch_ms;      /* HM_TRACE_BATCH_MS */
    char *prefix;          /* request body up to the first span: resource and scope */

    /* The ring and the exporter's hand-shakes, all guarded by `lock`. */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* exporter waits: spans to send, a flush, stop */
    pthread_cond_t idle; /* flushers wait: flush_done advanced, stop */
    hm_span_t *ring;     /* cap slots; queued spans are head .. head+count-1 (mod cap) */
    size_t cap, head, count;
    size_t threshold;    /* count at which the exporter is woken before its timer */
    uint64_t flush_req;  /* flushes requested (a generation) */
    uint64_t flush_done; /* flushes completed: the ring was empty with no request in flight */
    bool paused;         /* testing: no export unless flushed */
    bool stop;           /* hm_tracer_destroy(): the exporter exits */

    atomic_bool aborting; /* stop, readable by curl's progress callback without the lock */
    pthread_t thread;     /* the exporter; joined by destroy */

    /* Exporter thread only. */
    CURL *curl;
    struct curl_slist *headers;
    buf_t body;     /* request body being built */
    buf_t response; /* collector's answer, at most RESPONSE_MAX bytes */
    bool failing;   /* the last batch failed (log on the transitions only) */

    /* Counters; relaxed atomics (see hm_trace_stats_t). */
    atomic_uint_fast64_t exported, dropped, failed, export_failures, retries;
};

/* ---- randomness: per-thread xoshiro256** ---- */

/* One generator per thread, seeded on first use and again after a fork. */
static _Thread_local struct {
    uint64_t s[4];
    unsigned gen; /* fork_gen when seeded */
    bool seeded;
} rng;

/* Bumped in a forked child, so the child's threads re-seed rather than repeat the parent. */
static atomic_uint fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);

    if (!rng.seeded || rng.gen != gen) {
        pthread_once(&atfork_once, register_atfork);
        do {
            hm_random_bytes(rng.s, sizeof rng.s);
        } while ((rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]) == 0); /* the one bad state */
        rng.gen = gen;
        rng.seeded = true;
    }
    uint64_t *s = rng.s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* ---- hex ---- */

static const char hexdig[] = "0123456789abcdef";

static void hex64(uint64_t v, char out[16])
{
    for (int i = 15; i >= 0; i--) {
        out[i] = hexdig[v & 0xf];
        v >>= 4;
    }
}

static bool hexlc(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

/* True when s[0..n) is lower-case hex with at least one non-zero digit. */
static bool id_ok(const char *s, size_t n)
{
    bool nonzero = false;

    for (size_t i = 0; i < n; i++) {
        if (!hexlc(s[i]))
            return false;
        nonzero |= s[i] != '0';
    }
    return nonzero;
}

/* ---- W3C trace context ---- */

int hm_trace_parse_traceparent(const char *s, hm_trace_ctx_t *out)
{
    if (s == NULL)
        return HM_EINVAL;
    size_t len = strnlen(s, HM_TRACEPARENT_LEN + 1);

    if (len < HM_TRACEPARENT_LEN || !hexlc(s[0]) || !hexlc(s[1]))
        return HM_EINVAL;
    if (s[0] == 'f' && s[1] == 'f')
        return HM_EINVAL; /* version 255 is forbidden */
    if (s[0] == '0' && s[1] == '0') {
        if (len != HM_TRACEPARENT_LEN)
            return HM_EINVAL; /* version 00 has exactly four fields */
    } else if (len > HM_TRACEPARENT_LEN && s[HM_TRACEPARENT_LEN] != '-') {
        return HM_EINVAL; /* a later version may only add fields after a '-' */
    }
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return HM_EINVAL;
    if (!id_ok(s + 3, HM_TRACE_ID_LEN) || !id_ok(s + 36, HM_SPAN_ID_LEN))
        return HM_EINVAL;
    if (!hexlc(s[53]) || !hexlc(s[54]))
        return HM_EINVAL;
    memcpy(out->trace_id, s + 3, HM_TRACE_ID_LEN);
    out->trace_id[HM_TRACE_ID_LEN] = '\0';
    memcpy(out->parent_id, s + 36, HM_SPAN_ID_LEN);
    out->parent_id[HM_SPAN_ID_LEN] = '\0';
    out->flags = (uint8_t)(hexval(s[53]) << 4 | hexval(s[54]));
    return 0;
}

void hm_trace_format_traceparent(const hm_trace_ctx_t *ctx, char out[HM_TRACEPARENT_LEN + 1])
{
    unsigned flags = ctx->flags & HM_TRACE_FLAG_SAMPLED;

    memcpy(out, "00-", 3);
    memcpy(out + 3, ctx->trace_id, HM_TRACE_ID_LEN);
    out[35] = '-';
    memcpy(out + 36, ctx->parent_id, HM_SPAN_ID_LEN);
    out[52] = '-';
    out[53] = hexdig[flags >> 4];
    out[54] = hexdig[flags & 0xf];
    out[55] = '\0';
}

/* A tracestate worth carrying: 1..HM_TRACESTATE_MAX printable ASCII characters (what gRPC
 * metadata may carry; anything else would fail the outgoing call). */
static size_t tracestate_len(const char *s)
{
    if (s == NULL)
        return 0;
    size_t n = strnlen(s, HM_TRACESTATE_MAX + 1);

    if (n > HM_TRACESTATE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            return 0;
    }
    return n;
}

/* ---- spans ---- */

/* Longest prefix of s[0..n) of at most max bytes that does not end inside a UTF-8 character. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--; /* s[n] continues a character: cut before its first byte */
    return n;
}

/* Appends s[0..n) and a NUL to the span's text area; false when it does not fit. */
static bool text_put(hm_span_t *span, const char *s, size_t n, uint16_t *off, uint16_t *len)
{
    if (n + 1 > (size_t)(HM_SPAN_TEXT_MAX - span->text_len))
        return false;
    *off = span->text_len;
    *len = (uint16_t)n;
    memcpy(span->text + span->text_len, s, n);
    span->text[span->text_len + n] = '\0';
    span->text_len = (uint16_t)(span->text_len + n + 1);
    return true;
}

static int64_t realtime_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Everything but ids and flags. */
static void span_init(hm_span_t *span, hm_span_kind_t kind, const char *name)
{
    span->ended = false;
    span->kind = kind;
    span->status = HM_SPAN_STATUS_UNSET;
    span->start_ns = realtime_ns();
    span->end_ns = 0;
    span->start_mono_ns = hm_mono_ns();
    size_t n = name != NULL ? utf8_cut(name, strlen(name), HM_SPAN_NAME_MAX - 1) : 0;
    memcpy(span->name, name != NULL ? name : "", n);
    span->name[n] = '\0';
    span->tracestate_off = span->tracestate_len = 0;
    span->status_msg_off = span->status_msg_len = 0;
    span->nattrs = 0;
    span->dropped_attrs = 0;
    span->text_len = 0;
}

static void new_span_id(char out[HM_SPAN_ID_LEN + 1])
{
    uint64_t v;

    do {
        v = rng_next();
    } while (v == 0);
    hex64(v, out);
    out[HM_SPAN_ID_LEN] = '\0';
}

/* A new trace id in span->trace_id and the sampling decision in span->flags. */
static void new_trace(const hm_tracer_t *tracer, hm_span_t *span)
{
    uint64_t hi, lo;

    do {
        hi = rng_next();
        lo = rng_next();
    } while ((hi | lo) == 0);
    hex64(hi, span->trace_id);
    hex64(lo, span->trace_id + 16);
    span->trace_id[HM_TRACE_ID_LEN] = '\0';
    span->parent_span_id[0] = '\0';
    bool sampled = tracer == NULL || (lo >> 11) < tracer->sample_below;
    span->flags = sampled ? HM_TRACE_FLAG_SAMPLED : 0;
}

void hm_trace_start_server(hm_tracer_t *tracer, const char *traceparent, const char *tracestate,
                           const char *name, hm_span_t *out)
{
    hm_trace_ctx_t ctx;

    span_init(out, HM_SPAN_SERVER, name);
    if (hm_trace_parse_traceparent(traceparent, &ctx) == 0) {
        memcpy(out->trace_id, ctx.trace_id, sizeof out->trace_id);
        memcpy(out->parent_span_id, ctx.parent_id, sizeof out->parent_span_id);
        out->flags = ctx.flags & HM_TRACE_FLAG_SAMPLED;
        size_t n = tracestate_len(tracestate);
        if (n > 0)
            text_put(out, tracestate, n, &out->tracestate_off, &out->tracestate_len);
    } else {
        new_trace(tracer, out); /* absent or invalid: the spec says start a new trace */
    }
    new_span_id(out->span_id);
}

static void start_child(hm_tracer_t *tracer, const hm_span_t *parent, hm_span_kind_t kind,
                        const char *name, hm_span_t *out)
{
    span_init(out, kind, name);
    if (parent != NULL) {
        memcpy(out->trace_id, parent->trace_id, sizeof out->trace_id);
        memcpy(out->parent_span_id, parent->span_id, sizeof out->parent_span_id);
        out->flags = parent->flags;
        if (parent->tracestate_len > 0)
            text_put(out, parent->text + parent->tracestate_off, parent->tracestate_len,
                     &out->tracestate_off, &out->tracestate_len);
    } else {
        new_trace(tracer, out);
    }
    new_span_id(out->span_id);
}

void hm_trace_start_client(hm_tracer_t *tracer, const hm_span_t *parent, const char *name,
                           hm_span_t *out)
{
    start_child(tracer, parent, HM_SPAN_CLIENT, name, out);
}

void hm_trace_start_internal(hm_tracer_t *tracer, const hm_span_t *parent, const char *name,
                             hm_span_t *out)
{
    start_child(tracer, parent, HM_SPAN_INTERNAL, name, out);
}

/* The attribute named key[0..n), or NULL. */
static hm_span_attr_t *find_attr(hm_span_t *span, const char *key, size_t n)
{
    for (unsigned i = 0; i < span->nattrs; i++) {
        hm_span_attr_t *a = &span->attrs[i];
        if (a->key_len == n && memcmp(span->text + a->key_off, key, n) == 0)
            return a;
    }
    return NULL;
}

/*
 * The slot for attribute `key`, existing or new (with its key stored), provided `value_size`
 * more bytes of text also fit; NULL (and the attribute counted as dropped) otherwise, so an
 * attribute is stored whole or not at all.
 */
static hm_span_attr_t *attr_slot(hm_span_t *span, const char *key, size_t value_size)
{
    size_t n = utf8_cut(key, strlen(key), HM_SPAN_VALUE_MAX);
    hm_span_attr_t *a = find_attr(span, key, n);
    size_t room = (size_t)(HM_SPAN_TEXT_MAX - span->text_len);

    if (a != NULL) {
        if (value_size <= room)
            return a;
    } else if (span->nattrs < HM_SPAN_ATTRS_MAX && n + 1 + value_size <= room) {
        a = &span->attrs[span->nattrs++];
        text_put(span, key, n, &a->key_off, &a->key_len);
        a->is_int = true;
        a->ival = 0;
        a->str_off = a->str_len = 0;
        return a;
    }
    span->dropped_attrs++;
    return NULL;
}

static void set_attr_strn(hm_span_t *span, const char *key, const char *value, size_t n)
{
    n = utf8_cut(value, n, HM_SPAN_VALUE_MAX);
    hm_span_attr_t *a = attr_slot(span, key, n + 1);

    if (a == NULL)
        return;
    a->is_int = false;
    text_put(span, value, n, &a->str_off, &a->str_len); /* fits: attr_slot checked */
}

void hm_span_set_attr_str(hm_span_t *span, const char *key, const char *value)
{
    if (value == NULL)
        value = "";
    set_attr_strn(span, key, value, strlen(value));
}

void hm_span_set_attr_int(hm_span_t *span, const char *key, int64_t value)
{
    hm_span_attr_t *a = attr_slot(span, key, 0);

    if (a == NULL)
        return;
    a->is_int = true;
    a->ival = value;
}

void hm_span_set_status(hm_span_t *span, hm_span_status_t status, const char *message)
{
    span->status = status;
    span->status_msg_len = 0;
    if (status == HM_SPAN_STATUS_ERROR && message != NULL && message[0] != '\0') {
        size_t n = utf8_cut(message, strlen(message), HM_SPAN_VALUE_MAX);
        if (!text_put(span, message, n, &span->status_msg_off, &span->status_msg_len))
            span->status_msg_len = 0; /* no room: the code alone says it failed */
    }
}

void hm_span_set_rpc(hm_span_t *span, const char *full_method)
{
    const char *m = full_method[0] == '/' ? full_method + 1 : full_method;
    const char *slash = strrchr(m, '/');

    hm_span_set_attr_str(span, "rpc.system", "grpc");
    if (slash == NULL) {
        hm_span_set_attr_str(span, "rpc.method", m);
        return;
    }
    set_attr_strn(span, "rpc.service", m, (size_t)(slash - m));
    hm_span_set_attr_str(span, "rpc.method", slash + 1);
}

/* Codes that make a SERVER span an error (OpenTelemetry's gRPC conventions): the others are
 * the client's doing, not the server's failure. */
static bool server_error(hm_code_t code)
{
    switch (code) {
    case HM_CODE_UNKNOWN:
    case HM_CODE_DEADLINE_EXCEEDED:
    case HM_CODE_UNIMPLEMENTED:
    case HM_CODE_INTERNAL:
    case HM_CODE_UNAVAILABLE:
    case HM_CODE_DATA_LOSS:
        return true;
    default:
        return false;
    }
}

void hm_span_set_grpc_status(hm_span_t *span, hm_code_t code, const char *message)
{
    hm_span_set_attr_int(span, "rpc.grpc.status_code", (int64_t)code);
    bool error = span->kind == HM_SPAN_SERVER ? server_error(code) : code != HM_CODE_OK;
    if (error)
        hm_span_set_status(span, HM_SPAN_STATUS_ERROR,
                           message != NULL && message[0] != '\0' ? message : hm_code_name(code));
}

void hm_span_set_grpc_peer(hm_span_t *span, const char *peer)
{
    const char *addr = peer, *end = NULL, *port = NULL;

    if (peer == NULL)
        return;
    if (strncmp(peer, "ipv4:", 5) == 0) {
        addr = peer + 5;
        end = strrchr(addr, ':');
        port = end != NULL ? end + 1 : NULL;
    } else if (strncmp(peer, "ipv6:[", 6) == 0) {
        addr = peer + 6;
        end = strstr(addr, "]:");
        port = end != NULL ? end + 2 : NULL;
    } else if (strncmp(peer, "ipv6:%5B", 8) == 0 || strncmp(peer, "ipv6:%5b", 8) == 0) {
        addr = peer + 8; /* newer cores percent-encode the brackets */
        end = strstr(addr, "%5D:");
        if (end == NULL)
            end = strstr(addr, "%5d:");
        port = end != NULL ? end + 4 : NULL;
    } else if (strncmp(peer, "unix:", 5) == 0) {
        addr = peer + 5;
    }
    if (end == NULL) {
        hm_span_set_attr_str(span, "network.peer.address", addr);
        return;
    }
    set_attr_strn(span, "network.peer.address", addr, (size_t)(end - addr));
    char *stop;
    long p = strtol(port, &stop, 10);
    if (stop != port && *stop == '\0' && p > 0 && p < 65536)
        hm_span_set_attr_int(span, "network.peer.port", p);
}

const char *hm_span_tracestate(const hm_span_t *span)
{
    return span->tracestate_len > 0 ? span->text + span->tracestate_off : NULL;
}

void hm_trace_child_traceparent(const hm_span_t *span, char out[HM_TRACEPARENT_LEN + 1])
{
    hm_trace_ctx_t ctx;

    memcpy(ctx.trace_id, span->trace_id, sizeof ctx.trace_id);
    memcpy(ctx.parent_id, span->span_id, sizeof ctx.parent_id);
    ctx.flags = span->flags;
    hm_trace_format_traceparent(&ctx, out);
}

bool hm_span_recording(const hm_tracer_t *tracer, const hm_span_t *span)
{
    return tracer != NULL && tracer->exporting && hm_span_sampled(span);
}

void hm_trace_end(hm_tracer_t *tracer, hm_span_t *span)
{
    if (!span->ended) {
        span->ended = true;
        int64_t dur = hm_mono_ns() - span->start_mono_ns;
        span->end_ns = span->start_ns + (dur > 0 ? dur : 0);
    }
    if (!hm_span_recording(tracer, span))
        return;

    /* Only the used part of the text area is copied. */
    size_t size = offsetof(hm_span_t, text) + span->text_len;
    bool wake = false;

    pthread_mutex_lock(&tracer->lock);
    if (tracer->count == tracer->cap) {
        pthread_mutex_unlock(&tracer->lock);
        atomic_fetch_add_explicit(&tracer->dropped, 1, memory_order_relaxed);
        return;
    }
    memcpy(&tracer->ring[(tracer->head + tracer->count) % tracer->cap], span, size);
    tracer->count++;
    wake = tracer->count == tracer->threshold;
    pthread_mutex_unlock(&tracer->lock);
    if (wake)
        pthread_cond_signal(&tracer->wake);
}

/* ---- rendering OTLP/JSON ---- */

static void buf_reserve(buf_t *b, size_t n)
{
    if (b->cap - b->len >= n)
        return;
    size_t cap = b->cap > 0 ? b->cap : 4096;
    while (cap - b->len < n)
        cap *= 2;
    b->p = hm_xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_add(buf_t *b, const char *s, size_t n)
{
    buf_reserve(b, n + 1);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Appends a string literal (length known at compile time). */
#define BUF_LIT(b, lit) buf_add((b), (lit), sizeof(lit) - 1)

/* Appends v in decimal: the hot path of rendering, without printf's format parsing. */
static void buf_int(buf_t *b, int64_t v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    buf_add(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Appends s as a quoted JSON string. hm_json_escape() writes at most 6 bytes per input byte
 * (a \u00XX escape), so reserving that much means it never truncates. */
static void buf_json(buf_t *b, const char *s)
{
    size_t n = strlen(s);

    buf_reserve(b, 6 * n + 3);
    b->p[b->len++] = '"';
    b->len += hm_json_escape(b->p + b->len, (unsigned)(b->cap - b->len), 0, s);
    b->p[b->len++] = '"';
    b->p[b->len] = '\0';
}

/* {"key":...,"value":{"stringValue":...}} or {"intValue":"<decimal>"}: OTLP/JSON sends 64-bit
 * integers as strings. */
static void render_attr_str(buf_t *b, const char *key, const char *val)
{
    buf_str(b, "{\"key\":");
    buf_json(b, key);
    buf_str(b, ",\"value\":{\"stringValue\":");
    buf_json(b, val);
    buf_str(b, "}}");
}

static void render_attr_int(buf_t *b, const char *key, int64_t val)
{
    buf_str(b, "{\"key\":");
    buf_json(b, key);
    BUF_LIT(b, ",\"value\":{\"intValue\":\"");
    buf_int(b, val);
    BUF_LIT(b, "\"}}");
}

static void render_span(buf_t *b, const hm_span_t *s)
{
    buf_reserve(b, SPAN_JSON_MIN);
    /* Ids are lower-case hex of fixed length: no escaping, no printf. */
    BUF_LIT(b, "{\"traceId\":\"");
    buf_add(b, s->trace_id, HM_TRACE_ID_LEN);
    BUF_LIT(b, "\",\"spanId\":\"");
    buf_add(b, s->span_id, HM_SPAN_ID_LEN);
    BUF_LIT(b, "\"");
    if (s->parent_span_id[0] != '\0') {
        BUF_LIT(b, ",\"parentSpanId\":\"");
        buf_add(b, s->parent_span_id, HM_SPAN_ID_LEN);
        BUF_LIT(b, "\"");
    }
    if (s->tracestate_len > 0) {
        buf_str(b, ",\"traceState\":");
        buf_json(b, s->text + s->tracestate_off);
    }
    buf_str(b, ",\"name\":");
    buf_json(b, s->name);
    BUF_LIT(b, ",\"kind\":");
    buf_int(b, (int64_t)s->kind);
    BUF_LIT(b, ",\"startTimeUnixNano\":\"");
    buf_int(b, s->start_ns);
    BUF_LIT(b, "\",\"endTimeUnixNano\":\"");
    buf_int(b, s->end_ns);
    BUF_LIT(b, "\",\"attributes\":[");
    for (unsigned i = 0; i < s->nattrs; i++) {
        const hm_span_attr_t *a = &s->attrs[i];
        if (i > 0)
            buf_add(b, ",", 1);
        if (a->is_int)
            render_attr_int(b, s->text + a->key_off, a->ival);
        else
            render_attr_str(b, s->text + a->key_off, s->text + a->str_off);
    }
    buf_add(b, "]", 1);
    if (s->dropped_attrs > 0)
        buf_printf(b, ",\"droppedAttributesCount\":%u", (unsigned)s->dropped_attrs);
    BUF_LIT(b, ",\"status\":{\"code\":");
    buf_int(b, (int64_t)s->status);
    if (s->status_msg_len > 0) {
        buf_str(b, ",\"message\":");
        buf_json(b, s->text + s->status_msg_off);
    }
    buf_str(b, "}}");
}

/* The request body's head, the same for every batch: the resource (who sends) and the
 * instrumentation scope, up to the opening of the spans array. */
static char *render_prefix(const char *service_name)
{
    buf_t b = {0};
    char host[256], instance[HM_UUID_LEN + 1];

    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    hm_uuid_v4(instance);
    buf_str(&b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    render_attr_str(&b, "service.name", service_name);
    buf_add(&b, ",", 1);
    render_attr_str(&b, "service.version", HM_VERSION);
    buf_add(&b, ",", 1);
    render_attr_str(&b, "service.instance.id", instance);
    buf_add(&b, ",", 1);
    render_attr_str(&b, "host.name", host);
    buf_add(&b, ",", 1);
    render_attr_int(&b, "process.pid", (int64_t)getpid());
    buf_str(&b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"libhm\",\"version\":\"" HM_VERSION
                "\"},\"spans\":[");
    return b.p;
}

#define BODY_SUFFIX "]}]}]}"

/* ---- export ---- */

static size_t on_response(char *data, size_t size, size_t n, void *arg)
{
    buf_t *b = arg;
    size_t len = size * n;
    size_t keep = len;

    if (b->len + keep > RESPONSE_MAX)
        keep = b->len < RESPONSE_MAX ? RESPONSE_MAX - b->len : 0;
    if (keep > 0)
        buf_add(b, data, keep);
    return len; /* the rest is read and ignored */
}

/* curl's progress callback: a non-zero return aborts the transfer (hm_tracer_destroy). */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    hm_tracer_t *t = arg;

    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return atomic_load_explicit(&t->aborting, memory_order_relaxed) ? 1 : 0;
}

/* Spans the collector refused in a 2xx answer (ExportTraceServiceResponse.partialSuccess). */
static uint64_t rejected_spans(const buf_t *response)
{
    if (response->len == 0)
        return 0;
    json_t *root = json_loadb(response->p, response->len, 0, NULL);
    json_t *v = json_object_get(json_object_get(root, "partialSuccess"), "rejectedSpans");
    uint64_t n = 0;

    if (json_is_integer(v) && json_integer_value(v) > 0)
        n = (uint64_t)json_integer_value(v);
    else if (json_is_string(v))
        n = strtoull(json_string_value(v), NULL, 10); /* int64 travels as a string */
    json_decref(root);
    return n;
}

/* Sleeps up to ms, waking early on stop; false when stopping. Called without the lock. */
static bool sleep_unless_stopped(hm_tracer_t *t, int64_t ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        if (pthread_cond_timedwait(&t->wake, &t->lock, &ts) == ETIMEDOUT)
            break;
    }
    bool stop = t->stop;
    pthread_mutex_unlock(&t->lock);
    return !stop;
}

static bool retryable(long http)
{
    return http == 429 || http == 502 || http == 503 || http == 504;
}

/* Posts the rendered body (t->body) with retries; counts and logs the outcome. */
static void post_batch(hm_tracer_t *t, size_t nspans)
{
    long http = 0;
    CURLcode rc = CURLE_OK;

    curl_easy_setopt(t->curl, CURLOPT_POSTFIELDS, t->body.p);
    curl_easy_setopt(t->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body.len);
    for (int attempt = 1;; attempt++) {
        t->response.len = 0;
        http = 0;
        rc = curl_easy_perform(t->curl);
        if (rc == CURLE_OK)
            curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &http);
        if (rc != CURLE_OK || !retryable(http) || attempt == EXPORT_ATTEMPTS)
            break;

        curl_off_t after = 0;
        int64_t delay;
        curl_easy_getinfo(t->curl, CURLINFO_RETRY_AFTER, &after);
        if (after > 0) {
            delay = after < RETRY_AFTER_MAX_MS / 1000 ? (int64_t)after * 1000 : RETRY_AFTER_MAX_MS;
        } else {
            int64_t cap = (int64_t)BACKOFF_BASE_MS << (attempt - 1);
            if (cap > BACKOFF_MAX_MS)
                cap = BACKOFF_MAX_MS;
            delay = cap / 2 + (int64_t)(rng_next() % (uint64_t)(cap / 2 + 1)); /* jitter */
        }
        atomic_fetch_add_explicit(&t->retries, 1, memory_order_relaxed);
        if (!sleep_unless_stopped(t, delay)) {
            rc = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
    }

    if (rc == CURLE_OK && http >= 200 && http < 300) {
        uint64_t rejected = rejected_spans(&t->response);
        if (rejected > nspans)
            rejected = nspans;
        atomic_fetch_add_explicit(&t->exported, nspans - rejected, memory_order_relaxed);
        atomic_fetch_add_explicit(&t->failed, rejected, memory_order_relaxed);
        if (rejected > 0)
            HM_WARN("otlp export: collector rejected %" PRIu64 " of %zu spans", rejected, nspans);
        if (t->failing)
            HM_INFO("otlp export recovered");
        t->failing = false;
        return;
    }
    atomic_fetch_add_explicit(&t->failed, nspans, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->export_failures, 1, memory_order_relaxed);
    if (!t->failing && rc != CURLE_ABORTED_BY_CALLBACK) {
        if (rc != CURLE_OK)
            HM_WARN("otlp export failed: %s; %zu spans dropped (logged once until it recovers)",
                    curl_easy_strerror(rc), nspans);
        else
            HM_WARN("otlp export failed: http %ld; %zu spans dropped (logged once until it "
                    "recovers)",
                    http, nspans);
        t->failing = true;
    }
}

/* Renders ring slots head .. head+n-1 and posts them. Called without the lock (see the file
 * comment for why the slots are stable). */
static void export_batch(hm_tracer_t *t, size_t head, size_t n)
{
    t->body.len = 0;
    buf_str(&t->body, t->prefix);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            buf_add(&t->body, ",", 1);
        render_span(&t->body, &t->ring[(head + i) % t->cap]);
    }
    buf_str(&t->body, BODY_SUFFIX);
    post_batch(t, n);
    if (t->body.cap > BUF_KEEP) {
        free(t->body.p); /* a rare huge batch: do not keep its buffer for ever */
        t->body = (buf_t){0};
    }
}

static void deadline_after(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static bool passed(const struct timespec *ts)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/*
 * The exporter thread. Sends when the ring holds `threshold` spans, when the batch timer fires
 * with spans queued, or when a flush is pending; completes a flush once the ring is empty.
 */
static void *exporter_main(void *arg)
{
    hm_tracer_t *t = arg;
    struct timespec next;

    deadline_after(&next, t->batch_ms);
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        bool flushing = t->flush_done != t->flush_req;
        bool due = !t->paused && t->count > 0 && (t->count >= t->threshold || passed(&next));

        if (flushing && t->count == 0) {
            t->flush_done = t->flush_req;
            pthread_cond_broadcast(&t->idle);
            continue;
        }
        if (!flushing && !due) {
            if (passed(&next))
                deadline_after(&next, t->batch_ms); /* nothing to send: a new period */
            pthread_cond_timedwait(&t->wake, &t->lock, &next);
            continue;
        }
        size_t head = t->head;
        size_t n = t->count < HM_TRACE_BATCH_MAX ? t->count : HM_TRACE_BATCH_MAX;
        pthread_mutex_unlock(&t->lock);

        export_batch(t, head, n);

        pthread_mutex_lock(&t->lock);
        t->head = (t->head + n) % t->cap;
        t->count -= n;
        deadline_after(&next, t->batch_ms);
    }
    pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* ---- tracer life cycle ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* HM_TRACE_SAMPLE_RATIO: a plain decimal number in [0, 1]. */
static int parse_ratio(const char *s, double *out, char *err, size_t errlen)
{
    char *end;
    double r;

    if (s == NULL || s[0] == '\0') {
        *out = 1.0;
        return 0;
    }
    errno = 0;
    r = strtod(s, &end);
    if (s[0] == ' ' || s[0] == '\t' || end == s || *end != '\0' || errno != 0 || isnan(r) ||
        r < 0.0 || r > 1.0) {
        char shown[65];
        size_t i = 0;
        for (; s[i] != '\0' && i < sizeof shown - 1; i++)
            shown[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        shown[i] = '\0';
        snprintf(err, errlen,
                 "HM_TRACE_SAMPLE_RATIO: must be a number between 0 and 1 (got \"%s\")", shown);
        return HM_EINVAL;
    }
    *out = r;
    return 0;
}

/* <endpoint>/v1/traces, unless the endpoint already names that path. */
static char *traces_url(const char *endpoint, char *err, size_t errlen)
{
    size_t n = strlen(endpoint);

    if (strncasecmp(endpoint, "http://", 7) != 0 && strncasecmp(endpoint, "https://", 8) != 0) {
        snprintf(err, errlen, "HM_OTLP_ENDPOINT: must be an http:// or https:// URL");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)endpoint[i] <= 0x20 || endpoint[i] == 0x7f) {
            snprintf(err, errlen,
                     "HM_OTLP_ENDPOINT: must not contain spaces or control characters");
            return NULL;
        }
    }
    while (n > 0 && endpoint[n - 1] == '/')
        n--;
    size_t plen = strlen(OTLP_TRACES_PATH);
    bool has_path = n >= plen && memcmp(endpoint + n - plen, OTLP_TRACES_PATH, plen) == 0;
    char *url = hm_xmalloc(n + plen + 1);
    memcpy(url, endpoint, n);
    if (has_path)
        url[n] = '\0';
    else
        memcpy(url + n, OTLP_TRACES_PATH, plen + 1);
    return url;
}

static int curl_setup(hm_tracer_t *t, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK || (t->curl = curl_easy_init()) == NULL) {
        snprintf(err, errlen, "tracing: libcurl could not be initialised");
        return HM_EINTERNAL;
    }
    t->headers = curl_slist_append(NULL, "Content-Type: application/json");
    t->headers = curl_slist_append(t->headers, "Expect:"); /* no 100-continue round trip */
    if (t->headers == NULL) {
        snprintf(err, errlen, "tracing: libcurl could not be initialised");
        return HM_EINTERNAL;
    }
    curl_easy_setopt(t->curl, CURLOPT_URL, t->url);
    curl_easy_setopt(t->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(t->curl, CURLOPT_USERAGENT, "libhm/" HM_VERSION);
    curl_easy_setopt(t->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t->curl, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    curl_easy_setopt(t->curl, CURLOPT_TIMEOUT_MS, TOTAL_TIMEOUT_MS);
    curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, on_response);
    curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, &t->response);
    curl_easy_setopt(t->curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(t->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(t->curl, CURLOPT_XFERINFODATA, t);
    return 0;
}

hm_tracer_t *hm_tracer_create(const hm_trace_config_t *cfg, const char *service_name, char *err,
                              size_t errlen)
{
    hm_tracer_t *t = hm_xcalloc(1, sizeof *t);
    pthread_condattr_t ca;

    if (errlen > 0)
        err[0] = '\0';
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->wake, &ca);
    pthread_cond_init(&t->idle, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&t->aborting, false);
    atomic_init(&t->exported, 0);
    atomic_init(&t->dropped, 0);
    atomic_init(&t->failed, 0);
    atomic_init(&t->export_failures, 0);
    atomic_init(&t->retries, 0);

    if (parse_ratio(cfg->sample_ratio, &t->ratio, err, errlen) != 0)
        goto fail;
    /* Sampled when 53 random bits are below ratio * 2^53: exact for 0 and 1. */
    t->sample_below = (uint64_t)(t->ratio * 9007199254740992.0);
    t->batch_ms = cfg->batch_ms > 0 ? cfg->batch_ms : 1000;

    if (cfg->otlp_endpoint == NULL || cfg->otlp_endpoint[0] == '\0') {
        HM_INFO("tracing: no HM_OTLP_ENDPOINT, spans are not exported (sample ratio %g)", t->ratio);
        return t;
    }
    if ((t->url = traces_url(cfg->otlp_endpoint, err, errlen)) == NULL)
        goto fail;
    t->cap = cfg->queue_size >= 16 ? (size_t)cfg->queue_size : 16;
    t->threshold = t->cap / 2 < HM_TRACE_BATCH_MAX ? t->cap / 2 : HM_TRACE_BATCH_MAX;
    t->ring = hm_xcalloc(t->cap, sizeof *t->ring);
    t->prefix = render_prefix(service_name != NULL && service_name[0] != '\0' ? service_name
                                                                              : "unknown_service");
    if (curl_setup(t, err, errlen) != 0)
        goto fail;
    int rc = pthread_create(&t->thread, NULL, exporter_main, t);
    if (rc != 0) {
        snprintf(err, errlen, "tracing: cannot start the exporter thread: %s", strerror(rc));
        goto fail;
    }
    t->exporting = true;
    HM_INFO("tracing: exporting over OTLP/HTTP every %lld ms, queue %zu spans, sample ratio %g",
            (long long)t->batch_ms, t->cap, t->ratio);
    return t;
fail:
    hm_tracer_destroy(t);
    return NULL;
}

int hm_tracer_flush(hm_tracer_t *tracer, int64_t timeout_ms)
{
    struct timespec deadline;
    int rc = 0;

    if (tracer == NULL || !tracer->exporting)
        return 0;
    deadline_after(&deadline, timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&tracer->lock);
    uint64_t req = ++tracer->flush_req;
    pthread_cond_signal(&tracer->wake);
    while (tracer->flush_done < req && !tracer->stop) {
        if (pthread_cond_timedwait(&tracer->idle, &tracer->lock, &deadline) == ETIMEDOUT &&
            tracer->flush_done < req) {
            rc = HM_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&tracer->lock);
    return rc;
}

void hm_tracer_destroy(hm_tracer_t *tracer)
{
    if (tracer == NULL)
        return;
    if (tracer->exporting) {
        pthread_mutex_lock(&tracer->lock);
        tracer->stop = true;
        atomic_store(&tracer->aborting, true);
        pthread_cond_broadcast(&tracer->wake);
        pthread_cond_broadcast(&tracer->idle);
        pthread_mutex_unlock(&tracer->lock);
        pthread_join(tracer->thread, NULL);
        size_t lost = tracer->count;
        if (lost > 0)
            HM_WARN("tracing: %zu queued spans not exported at exit", lost);
    }
    if (tracer->curl != NULL)
        curl_easy_cleanup(tracer->curl);
    curl_slist_free_all(tracer->headers);
    free(tracer->body.p);
    free(tracer->response.p);
    free(tracer->ring);
    free(tracer->prefix);
    free(tracer->url);
    pthread_cond_destroy(&tracer->wake);
    pthread_cond_destroy(&tracer->idle);
    pthread_mutex_destroy(&tracer->lock);
    free(tracer);
}

bool hm_tracer_exporting(const hm_tracer_t *tracer)
{
    return tracer != NULL && tracer->exporting;
}

void hm_tracer_stats(hm_tracer_t *t, hm_trace_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if (t == NULL)
        return;
    out->exported = atomic_load_explicit(&t->exported, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&t->dropped, memory_order_relaxed);
    out->failed = atomic_load_explicit(&t->failed, memory_order_relaxed);
    out->export_failures = atomic_load_explicit(&t->export_failures, memory_order_relaxed);
    out->retries = atomic_load_explicit(&t->retries, memory_order_relaxed);
    if (t->exporting) {
        pthread_mutex_lock(&t->lock);
        out->queued = t->count;
        pthread_mutex_unlock(&t->lock);
    }
}

void hm_tracer_metrics(hm_tracer_t *tracer, FILE *out)
{
    hm_trace_stats_t st;

    hm_tracer_stats(tracer, &st);
    fprintf(out,
            "# HELP hm_trace_spans_exported_total Spans the OTLP collector accepted.\n"
            "# TYPE hm_trace_spans_exported_total counter\n"
            "hm_trace_spans_exported_total %" PRIu64 "\n"
            "# HELP hm_trace_spans_dropped_total Sampled spans not exported, by reason.\n"
            "# TYPE hm_trace_spans_dropped_total counter\n"
            "hm_trace_spans_dropped_total{reason=\"queue_full\"} %" PRIu64 "\n"
            "hm_trace_spans_dropped_total{reason=\"export_failed\"} %" PRIu64 "\n"
            "# HELP hm_trace_export_failures_total OTLP export requests that failed for good.\n"
            "# TYPE hm_trace_export_failures_total counter\n"
            "hm_trace_export_failures_total %" PRIu64 "\n"
            "# HELP hm_trace_export_retries_total OTLP export requests retried.\n"
            "# TYPE hm_trace_export_retries_total counter\n"
            "hm_trace_export_retries_total %" PRIu64 "\n"
            "# HELP hm_trace_queue_spans Spans waiting for export.\n"
            "# TYPE hm_trace_queue_spans gauge\n"
            "hm_trace_queue_spans %" PRIu64 "\n"
            "# HELP hm_trace_sample_ratio Share of new traces sampled (HM_TRACE_SAMPLE_RATIO).\n"
            "# TYPE hm_trace_sample_ratio gauge\n"
            "hm_trace_sample_ratio %g\n",
            st.exported, st.dropped, st.failed, st.export_failures, st.retries, st.queued,
            tracer != NULL ? tracer->ratio : 1.0);
}

void hm__tracer_pause(hm_tracer_t *tracer, bool paused)
{
    if (tracer == NULL || !tracer->exporting)
        return;
    pthread_mutex_lock(&tracer->lock);
    tracer->paused = paused;
    pthread_cond_signal(&tracer->wake);
    pthread_mutex_unlock(&tracer->lock);
}
