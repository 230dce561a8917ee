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

#include "hm/consul.h"
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

/* The Consul tag of daemons implementing hospitality.privacy.v1.DataSubjectService
 * (hm_daemon_t.data_subject). */
#define HM_DATA_SUBJECT_TAG "data-subject"

/*
 * The data-subject participants privacyd must ask for a guest's data, sorted by name: with
 * Consul every service registered with HM_DATA_SUBJECT_TAG (hm_consul_resolve_tagged: a
 * participant with no healthy instance is listed with addr ""), without it the names in
 * HM_DATA_SUBJECT_PEERS, each with its HM_<PEER>_ADDR (or ""). Call each with hm_peer_call()
 * by its `service` name. Fills up to `cap` entries; returns how many there are (may exceed
 * cap), or HM_EUNAVAIL when Consul was never reached. Thread-safe.
 */
int hm_peer_data_subjects(hm_consul_peer_t *out, size_t cap);

#endif
