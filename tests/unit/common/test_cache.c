/*
 * test_cache.c - integration tests of common/src/cache.c. With a real Redis
 * (HM_TEST_REDIS_ADDR=host:port): get/set/del, TTLs, binary values, generic commands, and
 * reconnect after the server drops the connection. Without one (always run): a disabled cache,
 * a closed port and a Redis that accepts but never answers all turn into misses within the
 * timeout, then fail fast while backing off. Exits 77 when HM_TEST_REDIS_ADDR is unset.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hm/arena.h"
#include "hm/cache.h"
#include "hm/err.h"
#include "hm/log.h"

static hm_arena_t arena;
static char key_prefix[64]; /* unique per run so parallel runs do not collide */

static const char *redis_addr(void)
{
    const char *a = getenv("HM_TEST_REDIS_ADDR");

    return a != NULL && a[0] != '\0' ? a : NULL;
}

#define SKIP_WITHOUT_REDIS()                                                                       \
    do {                                                                                           \
        if (redis_addr() == NULL)                                                                  \
            skip();                                                                                \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

static int setup(void **state)
{
    (void)state;
    hm_arena_init(&arena, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    hm_arena_deinit(&arena);
    return 0;
}

static hm_cache_stats_t stats(hm_cache_t *c)
{
    hm_cache_stats_t st;

    hm_cache_stats(c, &st);
    return st;
}

static char *key(const char *entity, const char *id)
{
    return hm_cache_key(&arena, key_prefix, entity, id);
}

/* A TCP port on 127.0.0.1 that refuses connections (bound, then closed). */
static int closed_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* A listening socket that never accepts: connects succeed (backlog), replies never come. */
static int mute_server(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* ---- without Redis ---- */

static void test_addresses(void **state)
{
    static const char *const bad[] = {"nohost",  ":6379", "h:",        "h:0",
                                      "h:65536", "h:6x",  "[::1:6379", "[]:6379"};
    hm_cache_t *c;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(hm_cache_create(bad[i], 100));
    c = hm_cache_create("[::1]:6379", 100);
    assert_non_null(c);
    hm_cache_destroy(c);
    c = hm_cache_create("/run/redis/redis.sock", 100);
    assert_non_null(c);
    hm_cache_destroy(c);
    hm_cache_destroy(NULL);
}

static void test_disabled(void **state)
{
    hm_cache_t *c = hm_cache_create("", 100), *n = hm_cache_create(NULL, 100);
    const char *keys[1] = {"hm:t:x:1"};
    char *val = (char *)1;
    size_t len = 9;

    (void)state;
    assert_non_null(c);
    assert_non_null(n);
    assert_false(hm_cache_available(c));
    assert_false(hm_cache_available(NULL));
    assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, &len), HM_ENOTFOUND);
    assert_null(val);
    assert_int_equal(len, 0);
    assert_int_equal(hm_cache_set(c, "hm:t:x:1", "v", 1, 1000), HM_EUNAVAIL);
    assert_int_equal(hm_cache_set(c, "hm:t:x:1", "v", 1, 0), HM_EINVAL);
    assert_int_equal(hm_cache_del(c, keys, 1), HM_EUNAVAIL);
    assert_int_equal(hm_cache_del(c, keys, 0), 0);
    assert_null(hm_cache_command(c, &arena, "PING"));
    assert_int_equal(stats(c).errors, 0); /* disabled is not a failure */
    hm_cache_destroy(c);
    hm_cache_destroy(n);
}

static void test_redis_down(void **state)
{
    char addr[32];
    hm_cache_t *c;
    char *val;
    int64_t t0;
    hm_cache_stats_t st;

    (void)state;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", closed_port());
    c = hm_cache_create(addr, 200);
    assert_non_null(c);
    assert_true(hm_cache_available(c)); /* not known to be down yet */

    /* Refused: a miss, not an error to the caller, and quick. */
    t0 = now_ms();
    assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, NULL), HM_ENOTFOUND);
    assert_true(now_ms() - t0 < 200);
    assert_false(hm_cache_available(c));

    /* Backing off: no connection attempts, instant misses. */
    t0 = now_ms();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, NULL), HM_ENOTFOUND);
    assert_int_equal(hm_cache_set(c, "hm:t:x:1", "v", 1, 1000), HM_EUNAVAIL);
    assert_null(hm_cache_command(c, &arena, "PING"));
    assert_true(now_ms() - t0 < 100);
    st = stats(c);
    assert_int_equal(st.hits, 0);
    assert_int_equal(st.misses, 1001);
    assert_int_equal(st.errors, 1003);
    assert_int_equal(st.connected, 0);

    /* After the pause it tries again. */
    sleep_ms(120);
    assert_true(hm_cache_available(c));
    assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, NULL), HM_ENOTFOUND);
    assert_false(hm_cache_available(c));
    hm_cache_destroy(c);
}

static void test_redis_hung(void **state)
{
    char addr[32];
    hm_cache_t *c;
    char *val;
    int port, fd = mute_server(&port);
    int64_t t0, took;

    (void)state;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    c = hm_cache_create(addr, 150);
    /* Connects (the kernel completes the handshake) but no reply: bounded by the timeout. */
    t0 = now_ms();
    assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, NULL), HM_ENOTFOUND);
    took = now_ms() - t0;
    assert_true(took >= 100);
    assert_true(took < 600);
    assert_int_equal(stats(c).errors, 1);
    /* The next calls do not wait again. */
    t0 = now_ms();
    assert_int_equal(hm_cache_set(c, "hm:t:x:1", "v", 1, 1000), HM_EUNAVAIL);
    assert_int_equal(hm_cache_get(c, &arena, "hm:t:x:1", &val, NULL), HM_ENOTFOUND);
    assert_true(now_ms() - t0 < 50);
    hm_cache_destroy(c);
    close(fd);
}

/* ---- with Redis ---- */

static void test_get_set_del(void **state)
{
    hm_cache_t *c;
    char *val;
    size_t len;
    const char *k1, *k2, *keys[2];
    hm_cache_stats_t st;

    (void)state;
    SKIP_WITHOUT_REDIS();
    c = hm_cache_create(redis_addr(), 500);
    k1 = key("guest", "1");
    k2 = key("guest", "2");
    assert_true(strncmp(k1, "hm:", 3) == 0);

    assert_int_equal(hm_cache_get(c, &arena, k1, &val, &len), HM_ENOTFOUND);
    assert_int_equal(hm_cache_set(c, k1, "{\"name\":\"jane\"}", 15, 10000), 0);
    assert_int_equal(hm_cache_set(c, k2, "bin\0ary", 7, 10000), 0);
    assert_int_equal(hm_cache_get(c, &arena, k1, &val, &len), 0);
    assert_int_equal(len, 15);
    assert_string_equal(val, "{\"name\":\"jane\"}");
    assert_int_equal(hm_cache_get(c, &arena, k2, &val, &len), 0);
    assert_int_equal(len, 7);
    assert_memory_equal(val, "bin\0ary", 7);
    assert_int_equal(hm_cache_set(c, k1, "x", 1, 0), HM_EINVAL);
    assert_int_equal(hm_cache_set(c, k1, "x", 1, -5), HM_EINVAL);

    keys[0] = k1;
    keys[1] = k2;
    assert_int_equal(hm_cache_del(c, keys, 2), 0);
    assert_int_equal(hm_cache_get(c, &arena, k1, &val, &len), HM_ENOTFOUND);
    assert_int_equal(hm_cache_get(c, &arena, k2, &val, &len), HM_ENOTFOUND);
    assert_int_equal(hm_cache_del(c, keys, 0), 0);

    st = stats(c);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.connected, 1);
    assert_true(hm_cache_available(c));
    hm_cache_destroy(c);
}

static void test_ttl_and_many_keys(void **state)
{
    hm_cache_t *c;
    const char *keys[150];
    char *val;
    size_t len;

    (void)state;
    SKIP_WITHOUT_REDIS();
    c = hm_cache_create(redis_addr(), 500);
    assert_int_equal(hm_cache_set(c, key("t", "ttl"), "v", 1, 50), 0);
    assert_int_equal(hm_cache_get(c, &arena, key("t", "ttl"), &val, &len), 0);
    sleep_ms(120);
    assert_int_equal(hm_cache_get(c, &arena, key("t", "ttl"), &val, &len), HM_ENOTFOUND);

    /* Invalidation of more keys than one DEL batch. */
    for (int i = 0; i < 150; i++) {
        char id[16];

        snprintf(id, sizeof id, "%d", i);
        keys[i] = key("many", id);
        assert_int_equal(hm_cache_set(c, keys[i], id, strlen(id), 10000), 0);
    }
    assert_int_equal(hm_cache_del(c, keys, 150), 0);
    for (int i = 0; i < 150; i += 37)
        assert_int_equal(hm_cache_get(c, &arena, keys[i], &val, &len), HM_ENOTFOUND);
    hm_cache_destroy(c);
}

static void test_commands(void **state)
{
    hm_cache_t *c;
    redisReply *r;
    const char *argv[4];
    size_t argvlen[4];
    char *val;

    (void)state;
    SKIP_WITHOUT_REDIS();
    c = hm_cache_create(redis_addr(), 500);
    r = hm_cache_command(c, &arena, "DEL %s", key("counter", "x"));
    assert_non_null(r);
    r = hm_cache_command(c, &arena, "INCRBY %s %d", key("counter", "x"), 5);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 5);
    r = hm_cache_command(c, &arena, "PEXPIRE %s %d", key("counter", "x"), 10000);
    assert_non_null(r);

    /* Error replies are replies (the caller decides), not failures. */
    r = hm_cache_command(c, &arena, "NOSUCHCOMMAND");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_int_equal(stats(c).errors, 0);

    /* A binary-safe argument vector: a sorted set member with a NUL. */
    argv[0] = "ZADD";
    argvlen[0] = 4;
    argv[1] = key("board", "1");
    argvlen[1] = strlen(argv[1]);
    argv[2] = "42";
    argvlen[2] = 2;
    argv[3] = "g\0x";
    argvlen[3] = 3;
    r = hm_cache_command_argv(c, &arena, 4, argv, argvlen);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    r = hm_cache_command(c, &arena, "ZSCORE %s %b", argv[1], "g\0x", (size_t)3);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "42");
    hm_cache_command(c, &arena, "DEL %s", argv[1]);

    /* A wrong-type GET is a miss and counts as an error. */
    hm_cache_command(c, &arena, "RPUSH %s a", key("list", "1"));
    assert_int_equal(hm_cache_get(c, &arena, key("list", "1"), &val, NULL), HM_ENOTFOUND);
    assert_int_equal(stats(c).errors, 1);
    hm_cache_command(c, &arena, "DEL %s", key("list", "1"));
    hm_cache_destroy(c);
    /* Replies still in the arena are freed by teardown's deinit (ASan checks). */
}

static void test_reconnect(void **state)
{
    hm_cache_t *c, *admin;
    redisReply *r;
    char *val;
    long long id;
    hm_cache_stats_t st;

    (void)state;
    SKIP_WITHOUT_REDIS();
    c = hm_cache_create(redis_addr(), 500);
    admin = hm_cache_create(redis_addr(), 500);
    assert_int_equal(hm_cache_set(c, key("r", "1"), "v", 1, 10000), 0);
    r = hm_cache_command(c, &arena, "CLIENT ID");
    assert_non_null(r);
    id = r->integer;

    /* The server drops our connection behind our back. */
    r = hm_cache_command(admin, &arena, "CLIENT KILL ID %lld", id);
    assert_non_null(r);
    assert_int_equal(r->integer, 1);

    /* The next call notices (a miss), the one after the pause reconnects and hits. */
    assert_int_equal(hm_cache_get(c, &arena, key("r", "1"), &val, NULL), HM_ENOTFOUND);
    assert_false(hm_cache_available(c));
    sleep_ms(120);
    assert_int_equal(hm_cache_get(c, &arena, key("r", "1"), &val, NULL), 0);
    assert_string_equal(val, "v");
    st = stats(c);
    assert_int_equal(st.reconnects, 1);
    assert_int_equal(st.errors, 1);
    assert_int_equal(st.connected, 1);
    hm_cache_command(c, &arena, "DEL %s", key("r", "1"));
    hm_cache_destroy(admin);
    hm_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_hung, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_set_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttl_and_many_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
    };
    hm_log_level_t level;
    int failed;

    /* hiredis writes to sockets the server may have closed; the runtime ignores SIGPIPE too. */
    signal(SIGPIPE, SIG_IGN);
    /* Everything is logged (so logging paths run under the sanitizers too); lower it with
     * HM_TEST_LOG_LEVEL=error when reading the output by hand. */
    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_cache", level);
    snprintf(key_prefix, sizeof key_prefix, "test%ld", (long)getpid());
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (failed == 0 && redis_addr() == NULL) {
        fprintf(stderr, "test_cache: HM_TEST_REDIS_ADDR not set: Redis tests skipped\n");
        return 77;
    }
    return failed;
}
