/*
 * hm/client.h - calling other daemons (and partner services) over gRPC.
 *
 * One process-wide client caches a channel per target ("host:port"). hm_client_unary() makes
 * one unary call with a deadline, retries with exponential backoff and full jitter on
 * UNAVAILABLE only, passes the parent call's traceparent and request id on, and never
 * forwards the end user's token: the caller adds its own service credential through
 * `metadata`. UNAVAILABLE usually means the request was not processed, but not always (a
 * connection lost after the peer committed): retry only idempotent requests, or requests
 * carrying an idempotency key; pass max_attempts = 1 otherwise.
 */
#ifndef HM_CLIENT_H
#define HM_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "hm/server.h"

typedef struct hm_client hm_client_t;

typedef struct hm_client_opts {
    int64_t timeout_ms; /* per call, all attempts included; 0 = 5000. Capped by the parent's
                           remaining deadline. */
    int max_attempts;   /* 0 = 3; 1 disables retries */
    hm_call_t *parent;  /* the call being served (trace context, request id, deadline) or NULL */
    const char *const *metadata; /* extra request metadata: key, value, ..., NULL (at most 14
                                    pairs; more is an INTERNAL error) */
} hm_client_opts_t;

/* TLS for a client's channels. PEM text, copied by hm_client_set_tls(). */
typedef struct hm_client_tls {
    const char *root_pem;    /* CAs that sign servers' certificates; NULL = the system's roots */
    const char *cert_pem;    /* client certificate chain for mTLS; NULL = none */
    const char *key_pem;     /* its private key (with cert_pem) */
    const char *server_name; /* name expected in servers' certificates; NULL = the target host */
} hm_client_tls_t;

/* Creates a client; destroy it after every call using it has returned. */
hm_client_t *hm_client_create(int64_t max_message_bytes);
void hm_client_destroy(hm_client_t *client);

/*
 * Makes channels created from now on speak TLS (mTLS with a client certificate); NULL turns
 * it off again. Channels already cached keep their credentials: call it before the first call.
 * Not thread-safe against concurrent calls.
 */
void hm_client_set_tls(hm_client_t *client, const hm_client_tls_t *tls);

/* True when channels speak TLS. */
bool hm_client_tls(const hm_client_t *client);

/*
 * Calls `method` ("/pkg.Service/Method") on `target` with `req`. On OK, *resp is the decoded
 * response allocated in `arena`. On error, the status carries the peer's code and message and,
 * when the peer sent google.rpc.ErrorInfo, its reason (all strings in `arena`). Thread-safe.
 */
hm_status_t hm_client_unary(hm_client_t *client, const char *target, const char *method,
                            const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, hm_arena_t *arena,
                            const hm_client_opts_t *opts, ProtobufCMessage **resp);

#endif
