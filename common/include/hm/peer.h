/*
 * hm/peer.h - calling peer daemons and partner services by name, as this daemon.
 *
 * hm_peer_call() resolves the peer ("guestd", "privacyd", "inventory") through Consul when it
 * is configured, else from HM_<PEER>_ADDR (hm_peer_addr in hm/consul.h), sends this daemon's
 * own credential (HM_SERVICE_TOKEN: never the end user's token), names the end user in
 * x-hm-end-user for audit, and passes the parent call's trace context, request id and
 * deadline on (hm_client_unary, one process-wide client). Usable inside hm_daemon_main from
 * handlers, consumers and tasks.
 */
#ifndef HM_PEER_H
#define HM_PEER_H

#include <stdint.h>

#include "hm/server.h"

typedef struct hm_peer_opts {
    int64_t timeout_ms;   /* all attempts; 0 = 5000, capped by the parent's deadline */
    int max_attempts;     /* 0 = 3 (UNAVAILABLE only); 1 for non-idempotent requests */
    const char *end_user; /* x-hm-end-user; NULL = the parent's principal subject when that
                             principal is a guest, else none */
} hm_peer_opts_t;

/*
 * Calls `method` on `peer` with `req`; on OK *resp is decoded into `arena`. When the peer has
 * no address: UNAVAILABLE "no address for peer <peer>" (reason PEER_UNRESOLVED). `parent`
 * may be NULL (consumers, tasks); `opts` may be NULL.
 */
hm_status_t hm_peer_call(hm_call_t *parent, hm_arena_t *arena, const char *peer, const char *method,
                         const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                         const hm_peer_opts_t *opts, ProtobufCMessage **resp);

#endif
