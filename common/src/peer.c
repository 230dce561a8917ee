/*
 * peer.c - hm_peer_call(): calls to peers by name with this daemon's credential (hm/peer.h).
 */
#include <stdio.h>
#include <string.h>

#include "hm/auth.h"
#include "hm/client.h"
#include "hm/consul.h"
#include "hm/peer.h"
#include "internal.h"

hm_status_t hm_peer_call(hm_call_t *parent, hm_arena_t *arena, const char *peer, const char *method,
                         const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                         const hm_peer_opts_t *opts, ProtobufCMessage **resp)
{
    char target[256];
    const char *md[7];
    size_t n = 0;
    const char *key, *value, *end_user = opts != NULL ? opts->end_user : NULL;
    hm_client_t *client = hm__client();

    *resp = NULL;
    if (client == NULL)
        return (hm_status_t){HM_CODE_UNAVAILABLE, "PEER_UNRESOLVED",
                             "peer calls are not available outside a daemon", NULL};
    if (hm_peer_addr(hm__consul(), peer, target, sizeof target) != 0) {
        char *msg = hm_arena_alloc(arena, strlen(peer) + 32);
        sprintf(msg, "no address for peer %s", peer);
        return (hm_status_t){HM_CODE_UNAVAILABLE, "PEER_UNRESOLVED", msg, NULL};
    }
    if (hm_auth_service_metadata(hm__auth(), &key, &value)) {
        md[n++] = key;
        md[n++] = value;
    }
    if (end_user == NULL && parent != NULL && parent->principal != NULL &&
        parent->principal->roles == HM_ROLE_GUEST)
        end_user = parent->principal->subject;
    if (end_user == NULL && parent != NULL)
        end_user = parent->end_user;
    if (end_user != NULL && end_user[0] != '\0') {
        md[n++] = HM_AUTH_MD_END_USER;
        md[n++] = end_user;
    }
    md[n] = NULL;
    hm_client_opts_t co = {.timeout_ms = opts != NULL ? opts->timeout_ms : 0,
                           .max_attempts = opts != NULL ? opts->max_attempts : 0,
                           .parent = parent,
                           .metadata = md};
    return hm_client_unary(client, target, method, req, resp_desc, arena, &co, resp);
}
