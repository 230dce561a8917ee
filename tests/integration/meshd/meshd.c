/*
 * meshd - a test-only daemon exercising the runtime's mesh features (hm/peer.h, hm/consul.h,
 * hm/ratelimit.h, TLS) and giving the benchmark a cheap authenticated method. Never installed.
 *
 * Its name comes from HM_TEST_MESHD_NAME (default "meshd"), so a test can run "alpha" and
 * "beta" side by side and have one find the other by name; HM_TEST_MESHD_DATA_SUBJECT=1 makes
 * it a data-subject participant (the Consul tag). Methods: see meshd.proto; Echo and EchoAuth
 * with text "sleep:<ms>" hold the call that long (at most 5 s).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/auth.h"
#include "hm/migrate.h"
#include "hm/peer.h"
#include "hm/server.h"
#include "meshd.pb-c.h"

#define MAX_PARTICIPANTS 32

extern const hm_migration_t meshd_migrations[];
extern const size_t meshd_nmigrations;

typedef Hm__Test__Mesh__V1__EchoRequest echo_req_t;
typedef Hm__Test__Mesh__V1__EchoResponse echo_resp_t;

static echo_resp_t *answer(hm_call_t *call, const char *text)
{
    echo_resp_t *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hm__test__mesh__v1__echo_response__init(r);
    r->text = (char *)text;
    r->daemon = (char *)hm_daemon_name();
    r->addr = (char *)hm_config()->grpc_addr;
    r->subject = call->principal ? (char *)call->principal->subject : "";
    r->end_user = call->end_user ? (char *)call->end_user : "";
    return r;
}

static hm_status_t meshd_echo(hm_call_t *call, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
    const char *text = ((const echo_req_t *)req)->text;
    /* "sleep:<ms>" holds the call (at most 5 s) so tests can see it in flight. */
    if (strncmp(text, "sleep:", 6) == 0) {
        long ms = strtol(text + 6, NULL, 10);
        struct timespec ts = {0, 0};
        ms = ms < 0 ? 0 : ms > 5000 ? 5000 : ms;
        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (ms % 1000) * 1000000;
        nanosleep(&ts, NULL);
    }
    *resp = &answer(call, text)->base;
    return HM_STATUS_OK;
}

static hm_status_t meshd_call_peer(hm_call_t *call, const ProtobufCMessage *in,
                                   ProtobufCMessage **resp)
{
    const Hm__Test__Mesh__V1__CallPeerRequest *req = (const void *)in;
    echo_req_t echo;
    ProtobufCMessage *out = NULL;
    hm__test__mesh__v1__echo_request__init(&echo);
    echo.text = req->text;
    if (!req->peer[0])
        return hm_call_invalid(call, "peer", "peer is required");
    hm_status_t st =
        hm_peer_call(call, &call->arena, req->peer, "/hm.test.mesh.v1.MeshTest/EchoAuth",
                     &echo.base, &hm__test__mesh__v1__echo_response__descriptor, NULL, &out);
    if (hm_status_ok(st))
        *resp = out;
    return st;
}

static hm_status_t meshd_participants(hm_call_t *call, const ProtobufCMessage *req,
                                      ProtobufCMessage **resp)
{
    hm_consul_peer_t peers[MAX_PARTICIPANTS];
    (void)req;
    int n = hm_peer_data_subjects(peers, MAX_PARTICIPANTS);
    if (n < 0)
        return hm_call_fail(call, n, "list participants");
    if (n > MAX_PARTICIPANTS)
        n = MAX_PARTICIPANTS;
    Hm__Test__Mesh__V1__ParticipantsResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hm__test__mesh__v1__participants_response__init(r);
    r->n_participants = (size_t)n;
    r->participants = hm_arena_alloc(&call->arena, sizeof(*r->participants) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) {
        Hm__Test__Mesh__V1__Participant *p = hm_arena_alloc(&call->arena, sizeof(*p));
        hm__test__mesh__v1__participant__init(p);
        p->service = hm_arena_strdup(&call->arena, peers[i].service);
        p->addr = hm_arena_strdup(&call->arena, peers[i].addr);
        r->participants[i] = p;
    }
    *resp = &r->base;
    return HM_STATUS_OK;
}

#define MESH_METHOD(rpc, req, resp, fn, ...)                                                       \
    {                                                                                              \
        "/hm.test.mesh.v1.MeshTest/" #rpc, &hm__test__mesh__v1__##req##__descriptor,               \
            &hm__test__mesh__v1__##resp##__descriptor, fn, __VA_ARGS__                             \
    }

static const hm_method_t methods[] = {
    MESH_METHOD(Echo, echo_request, echo_response, meshd_echo, {.open = true}),
    MESH_METHOD(EchoAuth, echo_request, echo_response, meshd_echo, {.roles = HM_ROLES_ANY}),
    MESH_METHOD(Limited, echo_request, echo_response, meshd_echo,
                {.roles = HM_ROLES_ANY, .rate_group = "tight"}),
    MESH_METHOD(VenueEcho, echo_request, echo_response, meshd_echo,
                {.roles = HM_ROLE_STAFF, .venue_field = "venue_id"}),
    MESH_METHOD(CallPeer, call_peer_request, echo_response, meshd_call_peer,
                {.roles = HM_ROLES_ANY}),
    MESH_METHOD(Participants, participants_request, participants_response, meshd_participants,
                {.roles = HM_ROLES_ANY}),
};
static const hm_service_t service = {"hm.test.mesh.v1.MeshTest", methods,
                                     sizeof(methods) / sizeof(methods[0])};
static const hm_service_t *const services[] = {&service};

int main(int argc, char **argv)
{
    const char *name = getenv("HM_TEST_MESHD_NAME");
    const char *ds = getenv("HM_TEST_MESHD_DATA_SUBJECT");
    const hm_daemon_t daemon = {
        .name = name && *name ? name : "meshd",
        .description = "test daemon for the runtime's mesh features",
        .services = services,
        .nservices = 1,
        .migrations = meshd_migrations,
        .nmigrations = meshd_nmigrations,
        .data_subject = ds && strcmp(ds, "1") == 0,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
