/*
 * test_client.c - libhm's gRPC client against peers that fail in the two ways that matter:
 * nobody listening (UNAVAILABLE, retried, bounded in time) and a peer that accepts the TCP
 * connection but never answers (DEADLINE_EXCEEDED at the deadline, not later).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "grpc/health/v1/health.pb-c.h"
#include "hm/client.h"

static hm_client_t *client;

static int setup(void **state)
{
    (void)state;
    client = hm_client_create(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    hm_client_destroy(client);
    return 0;
}

static hm_status_t check(const char *target, int64_t timeout_ms, int attempts, hm_arena_t *a)
{
    Grpc__Health__V1__HealthCheckRequest req;
    grpc__health__v1__health_check_request__init(&req);
    hm_client_opts_t opts = {.timeout_ms = timeout_ms, .max_attempts = attempts};
    ProtobufCMessage *resp = NULL;
    hm_status_t st =
        hm_client_unary(client, target, "/grpc.health.v1.Health/Check", &req.base,
                        &grpc__health__v1__health_check_response__descriptor, a, &opts, &resp);
    assert_true(hm_status_ok(st) == (resp != NULL));
    return st;
}

/* A port on 127.0.0.1 that nothing listens on: bind, read the port, close. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    return ntohs(sin.sin_port);
}

static void test_nobody_listening_is_unavailable(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", closed_port());
    int64_t t0 = hm_mono_ms();
    hm_status_t st = check(target, 3000, 3, &a);
    int64_t took = hm_mono_ms() - t0;
    assert_int_equal(st.code, HM_CODE_UNAVAILABLE);
    assert_true(took < 3000 + 500); /* retries stay within the call's budget */
    hm_arena_deinit(&a);
}

static void test_silent_peer_hits_the_deadline(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 8), 0); /* accepted by the kernel, never answered */
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", ntohs(sin.sin_port));

    hm_arena_t a;
    hm_arena_init(&a, 0);
    int64_t t0 = hm_mono_ms();
    hm_status_t st = check(target, 300, 3, &a);
    int64_t took = hm_mono_ms() - t0;
    assert_int_equal(st.code, HM_CODE_DEADLINE_EXCEEDED);
    assert_true(took >= 250);
    assert_true(took < 2000);
    hm_arena_deinit(&a);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nobody_listening_is_unavailable),
        cmocka_unit_test(test_silent_peer_hits_the_deadline),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
