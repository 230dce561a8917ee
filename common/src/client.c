/*
 * client.c - gRPC client on the C core: a channel per target, unary calls with deadline and
 * retries (see hm/client.h). Each call uses its own pluck queue, so any thread may call.
 */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "hm/client.h"
#include "hm/log.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_ATTEMPTS   3
#define BACKOFF_BASE_MS    25
#define BACKOFF_CAP_MS     1000
#define MAX_METADATA       16

typedef struct channel_entry {
    char *target;
    grpc_channel *channel;
    struct channel_entry *next;
} channel_entry_t;

struct hm_client {
    pthread_mutex_t lock; /* guards channels */
    channel_entry_t *channels;
    int64_t max_message_bytes;
    /* TLS (hm_client_set_tls): owned copies; `tls` false = plaintext channels. */
    bool tls;
    char *root_pem, *cert_pem, *key_pem, *server_name;
};

static void clear_tls(hm_client_t *c)
{
    free(c->root_pem);
    free(c->cert_pem);
    free(c->key_pem);
    free(c->server_name);
    c->root_pem = c->cert_pem = c->key_pem = c->server_name = NULL;
    c->tls = false;
}

static char *dup_or_null(const char *s)
{
    return s ? hm_xstrdup(s) : NULL;
}

void hm_client_set_tls(hm_client_t *c, const hm_client_tls_t *tls)
{
    pthread_mutex_lock(&c->lock);
    clear_tls(c);
    if (tls) {
        c->tls = true;
        c->root_pem = dup_or_null(tls->root_pem);
        if (tls->cert_pem && tls->key_pem) {
            c->cert_pem = hm_xstrdup(tls->cert_pem);
            c->key_pem = hm_xstrdup(tls->key_pem);
        }
        c->server_name = dup_or_null(tls->server_name);
    }
    pthread_mutex_unlock(&c->lock);
}

bool hm_client_tls(const hm_client_t *c)
{
    return c && c->tls;
}

hm_client_t *hm_client_create(int64_t max_message_bytes)
{
    grpc_init(); /* reference-counted; balanced in hm_client_destroy */
    hm_client_t *c = hm_xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    c->max_message_bytes = max_message_bytes > 0 ? max_message_bytes : 4 * 1024 * 1024;
    return c;
}

void hm_client_destroy(hm_client_t *c)
{
    if (!c)
        return;
    for (channel_entry_t *e = c->channels, *next; e; e = next) {
        next = e->next;
        grpc_channel_destroy(e->channel);
        free(e->target);
        free(e);
    }
    clear_tls(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
    grpc_shutdown();
}

static grpc_channel *channel_for(hm_client_t *c, const char *target)
{
    pthread_mutex_lock(&c->lock);
    for (channel_entry_t *e = c->channels; e; e = e->next) {
        if (strcmp(e->target, target) == 0) {
            pthread_mutex_unlock(&c->lock);
            return e->channel;
        }
    }
    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)c->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = (int)c->max_message_bytes;
    grpc_channel_args cargs = {2, args};
    grpc_channel_credentials *creds;
    if (c->tls) {
        grpc_ssl_pem_key_cert_pair pair = {c->key_pem, c->cert_pem};
        creds = grpc_ssl_credentials_create(c->root_pem, c->cert_pem ? &pair : NULL, NULL, NULL);
        if (c->server_name) {
            args[2].type = GRPC_ARG_STRING;
            args[2].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
            args[2].value.string = c->server_name;
            cargs.num_args = 3;
        }
    } else {
        creds = grpc_insecure_credentials_create();
    }
    channel_entry_t *e = hm_xcalloc(1, sizeof(*e));
    e->target = hm_xstrdup(target);
    e->channel = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    e->next = c->channels;
    c->channels = e;
    pthread_mutex_unlock(&c->lock);
    return e->channel;
}

static grpc_slice encode(const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    return s;
}

static ProtobufCMessage *decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
                                hm_arena_t *arena)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m = protobuf_c_message_unpack(
        desc, hm_arena_pb(arena), GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return m;
}

/* The ErrorInfo reason in a trailing grpc-status-details-bin, copied into the arena. */
static const char *details_reason(const grpc_metadata_array *md, hm_arena_t *arena)
{
    for (size_t i = 0; i < md->count; i++) {
        grpc_slice k = md->metadata[i].key;
        if (GRPC_SLICE_LENGTH(k) != 23 ||
            memcmp(GRPC_SLICE_START_PTR(k), "grpc-status-details-bin", 23) != 0)
            continue;
        grpc_slice v = md->metadata[i].value;
        Google__Rpc__Status *st = google__rpc__status__unpack(
            hm_arena_pb(arena), GRPC_SLICE_LENGTH(v), GRPC_SLICE_START_PTR(v));
        if (!st)
            return NULL;
        for (size_t d = 0; d < st->n_details; d++) {
            if (!st->details[d]->type_url ||
                !strstr(st->details[d]->type_url, "google.rpc.ErrorInfo"))
                continue;
            Google__Rpc__ErrorInfo *info = google__rpc__error_info__unpack(
                hm_arena_pb(arena), st->details[d]->value.len, st->details[d]->value.data);
            return info ? info->reason : NULL;
        }
    }
    return NULL;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/*
 * One attempt. Returns the status; *resp set on OK. A fresh byte buffer per attempt: sending
 * moves the slices out of the buffer, so a reused one would be empty on the retry. The method
 * slice is copied: the transport may keep :path values beyond the call.
 */
static hm_status_t attempt(grpc_channel *ch, const char *method, grpc_slice payload,
                           const ProtobufCMessageDescriptor *resp_desc, hm_arena_t *arena,
                           grpc_metadata *md, size_t nmd, int64_t deadline_mono_ms,
                           ProtobufCMessage **resp)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    int64_t left = deadline_mono_ms - hm_mono_ms();
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(left > 0 ? left : 0, GPR_TIMESPAN));
    grpc_slice method_slice = grpc_slice_from_copied_string(method);
    grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&payload, 1);
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method_slice,
                                               NULL, deadline, NULL);
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_byte_buffer *recv = NULL;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();

    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;

    hm_status_t st;
    static const int tag;
    if (grpc_call_start_batch(call, ops, 6, (void *)&tag, NULL) != GRPC_CALL_OK) {
        st = (hm_status_t){HM_CODE_INTERNAL, "INTERNAL", "client batch refused", NULL};
    } else {
        grpc_completion_queue_pluck(cq, (void *)&tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (code == GRPC_STATUS_OK) {
            *resp = recv ? decode(recv, resp_desc, arena) : NULL;
            st = *resp ? HM_STATUS_OK
                       : (hm_status_t){HM_CODE_INTERNAL, "MALFORMED_RESPONSE",
                                       "peer sent an undecodable response", NULL};
        } else {
            st.code = (hm_code_t)((unsigned)code < HM_CODE_COUNT ? code : GRPC_STATUS_UNKNOWN);
            st.message = hm_arena_strndup(arena, (const char *)GRPC_SLICE_START_PTR(details),
                                          GRPC_SLICE_LENGTH(details));
            st.reason = details_reason(&trailing, arena);
            st.field = NULL;
        }
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    grpc_slice_unref(method_slice);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    return st;
}

hm_status_t hm_client_unary(hm_client_t *client, const char *target, const char *method,
                            const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, hm_arena_t *arena,
                            const hm_client_opts_t *opts, ProtobufCMessage **resp)
{
    static const hm_client_opts_t none;
    if (!opts)
        opts = &none;
    *resp = NULL;
    int64_t timeout = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    int64_t deadline = hm_mono_ms() + timeout;
    if (opts->parent && opts->parent->deadline_ms < deadline)
        deadline = opts->parent->deadline_ms;
    int attempts = opts->max_attempts > 0 ? opts->max_attempts : DEFAULT_ATTEMPTS;

    grpc_metadata md[MAX_METADATA];
    size_t nmd = 0;
    /* One CLIENT span per call (all attempts), child of the call being served. */
    hm_span_t span;
    char traceparent[HM_TRACEPARENT_LEN + 1];
    hm_trace_start_client(hm_tracer(), opts->parent ? opts->parent->span : NULL, method + 1, &span);
    if (hm_span_recording(hm_tracer(), &span))
        hm_span_set_rpc(&span, method);
    hm_trace_child_traceparent(&span, traceparent);
    md[nmd].key = grpc_slice_from_static_string("traceparent");
    md[nmd++].value = grpc_slice_from_static_string(traceparent);
    if (hm_span_tracestate(&span)) {
        md[nmd].key = grpc_slice_from_static_string("tracestate");
        md[nmd++].value = grpc_slice_from_static_string(hm_span_tracestate(&span));
    }
    if (opts->parent && opts->parent->request_id) {
        md[nmd].key = grpc_slice_from_static_string("x-request-id");
        md[nmd++].value = grpc_slice_from_static_string(opts->parent->request_id);
    }
    for (const char *const *kv = opts->metadata; kv && kv[0] && kv[1]; kv += 2) {
        if (nmd == MAX_METADATA)
            return (hm_status_t){HM_CODE_INTERNAL, "INTERNAL",
                                 "client call with too many metadata entries", NULL};
        md[nmd].key = grpc_slice_from_static_string(kv[0]);
        md[nmd++].value = grpc_slice_from_static_string(kv[1]);
    }

    grpc_channel *ch = channel_for(client, target);
    grpc_slice payload = encode(req);
    hm_status_t st = HM_STATUS_OK;
    for (int i = 0; i < attempts; i++) {
        st = attempt(ch, method, payload, resp_desc, arena, md, nmd, deadline, resp);
        if (st.code != HM_CODE_UNAVAILABLE || i + 1 == attempts)
            break;
        /* Full jitter: sleep a random time up to the exponential bound. */
        int64_t cap = BACKOFF_BASE_MS << i;
        if (cap > BACKOFF_CAP_MS)
            cap = BACKOFF_CAP_MS;
        uint32_t r;
        hm_random_bytes(&r, sizeof(r));
        int64_t wait = (int64_t)(r % (uint32_t)(cap + 1));
        if (hm_mono_ms() + wait >= deadline)
            break;
        HM_DEBUG("%s on %s unavailable, retry %d in %lld ms", method, target, i + 1,
                 (long long)wait);
        sleep_ms(wait);
    }
    grpc_slice_unref(payload);
    if (hm_span_recording(hm_tracer(), &span)) {
        hm_span_set_attr_str(&span, "server.address", target);
        hm_span_set_grpc_status(&span, st.code, st.message);
    }
    hm_trace_end(hm_tracer(), &span);
    return st;
}
