/*
 * hm/trace.h - distributed tracing: W3C trace context in and out, a server span per call, a
 * client span per outgoing call, and batched export over OTLP/HTTP JSON.
 *
 * Context: an incoming `traceparent` (W3C Trace Context, version 00, and later versions by the
 * spec's forward-compatibility rule) gives the trace id, the caller's span id and the sampled
 * flag; invalid values are ignored, as the spec requires, and a new trace starts. `tracestate`
 * is carried through verbatim (up to HM_TRACESTATE_MAX printable characters, else dropped).
 * Ids are lower-case hex text throughout: that is what traceparent, log lines and OTLP/JSON
 * all want, so no conversion happens on the hot path.
 *
 * Sampling is parent-based: a call whose parent was sampled is sampled, a call whose parent
 * was not is not, and a new trace is sampled with probability HM_TRACE_SAMPLE_RATIO, decided
 * from its trace id so every service taking the same decision agrees. Unsampled spans still
 * get ids and are propagated (flags 00), so log lines always carry a trace id.
 *
 * A span is a fixed-size struct the caller owns (on the stack or in its call object); the
 * only copy made is into the exporter's queue at hm_trace_end(). The queue is a bounded ring
 * guarded by one mutex held for a memcpy: when it is full the span is dropped and counted,
 * so ending a span never waits for the network. A background thread posts batches of up to
 * HM_TRACE_BATCH_MAX spans to HM_OTLP_ENDPOINT every HM_TRACE_BATCH_MS, or sooner when enough
 * are queued, retrying only on HTTP 429, 502, 503 and 504 (honouring Retry-After) a bounded
 * number of times. Without HM_OTLP_ENDPOINT nothing is queued or sent.
 *
 * Thread safety: an hm_tracer_t is shared by all threads; a span belongs to the thread that
 * started it until it is ended.
 */
#ifndef HM_TRACE_H
#define HM_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/config.h"
#include "hm/err.h"

#define HM_TRACE_ID_LEN       32  /* hex digits of a trace id (16 bytes) */
#define HM_SPAN_ID_LEN        16  /* hex digits of a span id (8 bytes) */
#define HM_TRACEPARENT_LEN    55  /* "00-" trace "-" parent "-" flags */
#define HM_TRACESTATE_MAX     512 /* longest tracestate carried; longer ones are dropped */
#define HM_TRACE_FLAG_SAMPLED 0x01

#define HM_SPAN_NAME_MAX  128  /* bytes of a span name kept, NUL included */
#define HM_SPAN_ATTRS_MAX 16   /* attributes per span; more are dropped and counted */
#define HM_SPAN_TEXT_MAX  1280 /* bytes for tracestate, status message, attribute texts */
#define HM_SPAN_VALUE_MAX 256  /* longest attribute string value kept, in bytes */

#define HM_TRACE_BATCH_MAX 512 /* spans per export request */

/* A parsed traceparent. */
typedef struct hm_trace_ctx {
    char trace_id[HM_TRACE_ID_LEN + 1]; /* lower-case hex, not all zeros */
    char parent_id[HM_SPAN_ID_LEN + 1]; /* the caller's span id: lower-case hex, not all zeros */
    uint8_t flags;                      /* trace-flags; bit 0 (HM_TRACE_FLAG_SAMPLED) = sampled */
} hm_trace_ctx_t;

/* Span kinds; the values are OTLP's SpanKind numbers, sent as they are. */
typedef enum hm_span_kind {
    HM_SPAN_INTERNAL = 1,
    HM_SPAN_SERVER = 2,
    HM_SPAN_CLIENT = 3,
} hm_span_kind_t;

/* Span status codes; the values are OTLP's Status.StatusCode numbers. */
typedef enum hm_span_status {
    HM_SPAN_STATUS_UNSET = 0,
    HM_SPAN_STATUS_OK = 1,
    HM_SPAN_STATUS_ERROR = 2,
} hm_span_status_t;

/* One attribute; its key (and string value) live in the span's text area. */
typedef struct hm_span_attr {
    uint16_t key_off, key_len; /* key in hm_span_t.text */
    uint16_t str_off, str_len; /* string value in hm_span_t.text (is_int false) */
    bool is_int;               /* value is ival, else the string */
    int64_t ival;
} hm_span_attr_t;

/*
 * A span. Plain data with no pointers, so it can be copied by value (into the export queue).
 * Fill it only through hm_trace_start_*() and the hm_span_* setters; read the ids freely (they
 * are NUL-terminated and stay valid as long as the span).
 */
typedef struct hm_span {
    char trace_id[HM_TRACE_ID_LEN + 1];      /* lower-case hex */
    char span_id[HM_SPAN_ID_LEN + 1];        /* lower-case hex */
    char parent_span_id[HM_SPAN_ID_LEN + 1]; /* lower-case hex; "" for a root span */
    uint8_t flags;                           /* trace-flags propagated to children */
    bool ended;                              /* hm_trace_end() ran */
    hm_span_kind_t kind;
    hm_span_status_t status;
    int64_t start_ns;      /* CLOCK_REALTIME, nanoseconds since the epoch */
    int64_t end_ns;        /* set by hm_trace_end(): start_ns + the monotonic duration */
    int64_t start_mono_ns; /* CLOCK_MONOTONIC at start, for the duration */
    char name[HM_SPAN_NAME_MAX];
    uint16_t tracestate_off, tracestate_len; /* in text; len 0 = none */
    uint16_t status_msg_off, status_msg_len; /* in text; len 0 = none */
    uint16_t nattrs;                         /* entries used in attrs */
    uint16_t dropped_attrs;                  /* attributes refused (count or text area full) */
    uint16_t text_len;                       /* bytes used in text (append only) */
    hm_span_attr_t attrs[HM_SPAN_ATTRS_MAX];
    char text[HM_SPAN_TEXT_MAX]; /* strings above, each NUL-terminated */
} hm_span_t;

/* Configuration, filled from hm_trace_config_vars by hm_config_load(). */
typedef struct hm_trace_config {
    const char *otlp_endpoint; /* HM_OTLP_ENDPOINT: collector base URL; NULL or "" = no export */
    const char *sample_ratio;  /* HM_TRACE_SAMPLE_RATIO: text of a number in [0, 1], parsed and
                                  checked by hm_tracer_create() (the table has no double type) */
    long long queue_size;      /* HM_TRACE_QUEUE: spans waiting for export, at most */
    int64_t batch_ms;          /* HM_TRACE_BATCH_MS: longest wait before queued spans are sent */
} hm_trace_config_t;

extern const hm_cfg_var_t hm_trace_config_vars[];
extern const size_t hm_trace_config_nvars;

/* Counters since hm_tracer_create(), for /metrics. */
typedef struct hm_trace_stats {
    uint64_t exported;        /* spans the collector accepted */
    uint64_t dropped;         /* sampled spans dropped because the queue was full */
    uint64_t failed;          /* spans lost to failed exports (after retries) or rejected */
    uint64_t export_failures; /* export requests that failed for good */
    uint64_t retries;         /* export requests retried (429/502/503/504) */
    uint64_t queued;          /* spans waiting now */
} hm_trace_stats_t;

typedef struct hm_tracer hm_tracer_t;

/* ---- W3C trace context ---- */

/*
 * Parses a traceparent header value into *out. Version 00 must be exactly 55 characters; a
 * later version (not ff) is read from its first 55 characters when the string is exactly that
 * long or continues with '-'. Hex must be lower case; all-zero trace or parent ids are
 * invalid. Returns 0, or HM_EINVAL (with *out unspecified) for NULL or anything invalid.
 */
int hm_trace_parse_traceparent(const char *s, hm_trace_ctx_t *out);

/* Formats `ctx` as a version 00 traceparent: 55 characters and a NUL in out. Only the sampled
 * bit of the flags is sent (the spec reserves the others and wants them zero). */
void hm_trace_format_traceparent(const hm_trace_ctx_t *ctx, char out[HM_TRACEPARENT_LEN + 1]);

/* ---- tracer ---- */

/*
 * Creates a tracer for `service_name` (the daemon's name: the OTLP resource's service.name;
 * copied). Checks the configuration: HM_TRACE_SAMPLE_RATIO must be a number in [0, 1], the
 * endpoint an http:// or https:// URL. With an endpoint, starts the exporter thread. Returns
 * NULL with a message naming the variable in err on a bad configuration.
 */
hm_tracer_t *hm_tracer_create(const hm_trace_config_t *cfg, const char *service_name, char *err,
                              size_t errlen);

/*
 * Exports everything queued (including spans ended while it waits) and returns 0 once the
 * queue is empty and the last request has finished, or HM_ETIMEDOUT after timeout_ms with
 * spans still queued or a request still in progress (the exporter carries on). Returns 0 at
 * once without an endpoint. Meant for shutdown, after the last call has ended its span.
 */
int hm_tracer_flush(hm_tracer_t *tracer, int64_t timeout_ms);

/* Stops the exporter (aborting a request in progress; what is still queued is lost: flush
 * first) and frees the tracer. NULL is allowed. No span may be ended on it afterwards. */
void hm_tracer_destroy(hm_tracer_t *tracer);

/* Whether spans are exported (an endpoint is configured). */
bool hm_tracer_exporting(const hm_tracer_t *tracer);

/* The counters, read without stopping anyone (each is exact, together they are a snapshot
 * only approximately). */
void hm_tracer_stats(hm_tracer_t *tracer, hm_trace_stats_t *out);

/* Appends the counters in Prometheus text format (hm_trace_* families) to `out`. */
void hm_tracer_metrics(hm_tracer_t *tracer, FILE *out);

/* ---- spans ---- */

/*
 * Starts the server span of an incoming call in *out. `traceparent` and `tracestate` are the
 * request's metadata values (NULL when absent); an invalid traceparent is ignored (a new trace
 * starts) and tracestate is kept only with a valid traceparent. `name` is copied (truncated to
 * HM_SPAN_NAME_MAX - 1 bytes). `tracer` may be NULL: ids and propagation still work, with a
 * sampling ratio of 1, and nothing is exported. Never fails.
 */
void hm_trace_start_server(hm_tracer_t *tracer, const char *traceparent, const char *tracestate,
                           const char *name, hm_span_t *out);

/*
 * Starts a CLIENT (an outgoing call) or INTERNAL span in *out, a child of `parent` (same trace,
 * same sampling decision, same tracestate), or the root of a new trace when `parent` is NULL.
 */
void hm_trace_start_client(hm_tracer_t *tracer, const hm_span_t *parent, const char *name,
                           hm_span_t *out);
void hm_trace_start_internal(hm_tracer_t *tracer, const hm_span_t *parent, const char *name,
                             hm_span_t *out);

/* Whether the span is sampled (the flag propagated to children). */
static inline bool hm_span_sampled(const hm_span_t *span)
{
    return (span->flags & HM_TRACE_FLAG_SAMPLED) != 0;
}

/* Whether the span will be exported when it ends: sampled, and `tracer` exports. Attributes
 * of a span that is not recording are never seen, so callers may skip computing them. */
bool hm_span_recording(const hm_tracer_t *tracer, const hm_span_t *span);

/*
 * Sets attribute `key` (replacing an earlier value of the same key). Key and value are copied;
 * a string value is cut at HM_SPAN_VALUE_MAX bytes (on a character boundary). When the span
 * already has HM_SPAN_ATTRS_MAX attributes or its text area is full, the attribute is dropped
 * and counted in the span's droppedAttributesCount.
 */
void hm_span_set_attr_str(hm_span_t *span, const char *key, const char *value);
void hm_span_set_attr_int(hm_span_t *span, const char *key, int64_t value);

/* Sets the status; `message` (may be NULL) is kept only with HM_SPAN_STATUS_ERROR, as OTLP
 * wants, and cut like an attribute value. */
void hm_span_set_status(hm_span_t *span, hm_span_status_t status, const char *message);

/*
 * The gRPC conventions of OpenTelemetry, in one place:
 * hm_span_set_rpc() sets rpc.system "grpc", rpc.service and rpc.method from a full method
 * name ("/pkg.Service/Method"); hm_span_set_grpc_status() sets rpc.grpc.status_code and the
 * span status: ERROR with `message` for a CLIENT span with any code but OK, and for a SERVER
 * span only with UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or
 * DATA_LOSS (the other codes are the client's doing); hm_span_set_grpc_peer() sets
 * network.peer.address and network.peer.port from a gRPC peer string ("ipv4:10.0.0.1:5000",
 * "ipv6:[::1]:5000"; others go to network.peer.address whole).
 */
void hm_span_set_rpc(hm_span_t *span, const char *full_method);
void hm_span_set_grpc_status(hm_span_t *span, hm_code_t code, const char *message);
void hm_span_set_grpc_peer(hm_span_t *span, const char *peer);

/* The span's tracestate (to send on with a child's traceparent), or NULL when there is none.
 * Valid as long as the span. */
const char *hm_span_tracestate(const hm_span_t *span);

/*
 * The traceparent naming `span` as the parent: what an outgoing call sends, built from its
 * CLIENT span (or, without one, from the server span). 55 characters and a NUL in out.
 */
void hm_trace_child_traceparent(const hm_span_t *span, char out[HM_TRACEPARENT_LEN + 1]);

/*
 * Ends the span: sets its end time (once) and, when it is sampled and the tracer exports,
 * queues a copy for export. Never blocks beyond a short critical section; when the queue is
 * full the span is dropped and counted. `tracer` may be NULL (nothing is queued). The span
 * stays readable afterwards.
 */
void hm_trace_end(hm_tracer_t *tracer, hm_span_t *span);

/* Testing hook (not for daemons): while paused the exporter sends nothing unless flushed. */
void hm__tracer_pause(hm_tracer_t *tracer, bool paused);

#endif
