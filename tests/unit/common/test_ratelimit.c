/*
 * test_ratelimit.c - integration tests of common/src/ratelimit.c. Always run: parsing of
 * HM_RATE_LIMITS, limiting off, and failing open without Redis (disabled, or a closed port:
 * fast, and counted). With a real Redis (HM_TEST_REDIS_ADDR=host:port): a burst is allowed then
 * refused with a sensible retry-after, the bucket refills with time, principals and groups are
 * independent, four threads with their own connections never take more than the bucket holds,
 * the script is loaded again after SCRIPT FLUSH, and a key of the wrong type fails open.
 * Exits 77 when HM_TEST_REDIS_ADDR is unset.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
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
#include "hm/ratelimit.h"

#define THREADS          4
#define TAKES_PER_THREAD 60

static hm_arena_t arena;
static char daemon_name[64]; /* unique per run so parallel runs do not share buckets */

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

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};

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

/* A limiter for `spec`, which must parse. */
static hm_ratelimit_t *limiter(const char *spec)
{
    hm_ratelimit_config_t cfg = {spec};
    char err[256];
    hm_ratelimit_t *rl = hm_ratelimit_create(&cfg, daemon_name, err, sizeof err);

    if (rl == NULL)
        fail_msg("hm_ratelimit_create(\"%s\"): %s", spec, err);
    return rl;
}

static hm_ratelimit_stats_t stats(const hm_ratelimit_t *rl)
{
    hm_ratelimit_stats_t st;

    hm_ratelimit_stats(rl, &st);
    return st;
}

/* Deletes every bucket of this run's daemon (the tests reuse group and principal names). */
static void flush_buckets(hm_cache_t *c)
{
    redisReply *r = hm_cache_command(c, &arena, "KEYS hm:%s:rl:*", daemon_name);

    assert_non_null(r);
    for (size_t i = 0; i < r->elements; i++)
        hm_cache_command(c, &arena, "DEL %s", r->element[i]->str);
}

static hm_cache_t *redis(void)
{
    hm_cache_t *c = hm_cache_create(redis_addr(), 1000);

    assert_non_null(c);
    flush_buckets(c);
    return c;
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

/* ---- without Redis ---- */

static void test_parse(void **state)
{
    static const char *const good[] = {
        "default=50/1s:100,write=10/1s:20",
        "default=5/200ms",
        "a.b-c_d=1/24h:1000000",
        "hospitality.gamification.v1.GamificationService=5/1s",
        "x=1000000/1ms:1",
        "read=100/1m:200",
    };
    static const struct {
        const char *spec;
        const char *msg; /* part of the error message */
    } bad[] = {
        {"default", "want group=rate/period"},
        {"=5/1s", "want group=rate/period"},
        {"de fault=5/1s", "group names use"},
        {"default=0/1s", "rate must be"},
        {"default=x/1s", "rate must be"},
        {"default=1000001/1s", "rate must be"},
        {"default=5", "rate must be"},
        {"default=5/", "period must be"},
        {"default=5/0s", "period must be"},
        {"default=5/25h", "period must be"},
        {"default=5/1fortnight", "period must be"},
        {"default=5/1s:", "burst must be"},
        {"default=5/1s:0", "burst must be"},
        {"default=5/1s:-3", "burst must be"},
        {"default=5/1s,default=6/1s", "group given twice"},
        {"default=5/1s,", "empty entry"},
        {",default=5/1s", "empty entry"},
        {"a=1/1s,,b=1/1s", "empty entry"},
        {"averyveryveryveryveryveryveryveryveryveryveryveryveryverylonggroupname=1/1s",
         "want group=rate/period"},
    };
    hm_ratelimit_config_t cfg;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        hm_ratelimit_t *rl = limiter(good[i]);

        assert_true(hm_ratelimit_enabled(rl));
        hm_ratelimit_destroy(rl);
    }
    /* A group's own rule, not the "default" fallback, counts for hm_ratelimit_has_group. */
    {
        hm_ratelimit_t *rl = limiter("default=50/1s:100,service=1000/1s");

        assert_true(hm_ratelimit_has_group(rl, "service"));
        assert_true(hm_ratelimit_has_group(rl, "default"));
        assert_false(hm_ratelimit_has_group(rl, "write"));
        assert_false(hm_ratelimit_has_group(NULL, "service"));
        hm_ratelimit_destroy(rl);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.limits = bad[i].spec;
        err[0] = '\0';
        if (hm_ratelimit_create(&cfg, daemon_name, err, sizeof err) != NULL)
            fail_msg("\"%s\" was accepted", bad[i].spec);
        if (strncmp(err, "HM_RATE_LIMITS: ", 16) != 0 || strstr(err, bad[i].msg) == NULL)
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", bad[i].spec, err, bad[i].msg);
    }
    /* 33 groups: one too many. */
    {
        char spec[33 * 16] = "";

        for (int i = 0; i < 33; i++)
            snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%sg%d=1/1s", i ? "," : "",
                     i);
        cfg.limits = spec;
        assert_null(hm_ratelimit_create(&cfg, daemon_name, err, sizeof err));
        assert_non_null(strstr(err, "more than 32 groups"));
    }
}

static void test_config_table(void **state)
{
    hm_ratelimit_config_t cfg = {"junk"};
    char err[256];

    (void)state;
    unsetenv("HM_RATE_LIMITS");
    assert_int_equal(
        hm_config_load(hm_ratelimit_config_vars, hm_ratelimit_config_nvars, &cfg, err, sizeof err),
        0);
    assert_true(cfg.limits == NULL || cfg.limits[0] == '\0');
    setenv("HM_RATE_LIMITS", "default=50/1s:100,write=10/1s:20", 1);
    assert_int_equal(
        hm_config_load(hm_ratelimit_config_vars, hm_ratelimit_config_nvars, &cfg, err, sizeof err),
        0);
    assert_string_equal(cfg.limits, "default=50/1s:100,write=10/1s:20");
    unsetenv("HM_RATE_LIMITS");
}

static void test_off(void **state)
{
    hm_ratelimit_config_t empty = {""};
    char err[64];
    hm_ratelimit_t *off = hm_ratelimit_create(&empty, daemon_name, err, sizeof err);
    hm_ratelimit_t *none = hm_ratelimit_create(NULL, daemon_name, err, sizeof err);
    hm_cache_t *c = hm_cache_create("", 100);
    int64_t retry = 42;
    FILE *m = tmpfile();

    (void)state;
    assert_non_null(off);
    assert_non_null(none);
    assert_false(hm_ratelimit_enabled(off));
    assert_false(hm_ratelimit_enabled(none));
    assert_false(hm_ratelimit_enabled(NULL));
    for (int i = 0; i < 100; i++) {
        assert_int_equal(hm_ratelimit_take(off, c, "default", "alice", &retry), 0);
        assert_int_equal(retry, 0);
    }
    assert_int_equal(hm_ratelimit_take(NULL, c, NULL, NULL, &retry), 0);
    assert_int_equal(stats(off).allowed + stats(off).fail_open, 0);
    /* Nothing rendered when off. */
    hm_ratelimit_metrics(off, m);
    hm_ratelimit_metrics(NULL, m);
    assert_int_equal(ftell(m), 0);
    fclose(m);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(off);
    hm_ratelimit_destroy(none);
    hm_ratelimit_destroy(NULL);
}

static void test_disabled_cache(void **state)
{
    hm_ratelimit_t *rl = limiter("default=1/1h:1");
    hm_cache_t *c = hm_cache_create("", 100);
    int64_t retry = 42;

    (void)state;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), 0);
        assert_int_equal(retry, 0);
    }
    assert_int_equal(hm_ratelimit_take(rl, NULL, "default", "alice", &retry), 0);
    assert_int_equal(stats(rl).fail_open, 6);
    assert_int_equal(stats(rl).allowed, 0);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

static void test_redis_down(void **state)
{
    char addr[32];
    hm_ratelimit_t *rl = limiter("default=1/1h:1");
    hm_cache_t *c;
    int64_t retry = 42, t0;
    char *text = NULL;
    size_t len = 0;
    FILE *m;

    (void)state;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", closed_port());
    c = hm_cache_create(addr, 200);
    t0 = now_ms();
    assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), 0);
    assert_int_equal(retry, 0);
    /* Refused connections fail at once, and then the cache's backoff answers for Redis. */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), 0);
    assert_true(now_ms() - t0 < 500);
    assert_int_equal(stats(rl).fail_open, 1001);
    assert_int_equal(stats(rl).limited, 0);

    m = open_memstream(&text, &len);
    hm_ratelimit_metrics(rl, m);
    fclose(m);
    assert_non_null(strstr(
        text, "hm_rate_limit_decisions_total{group=\"default\",decision=\"fail_open\"} 1001\n"));
    assert_non_null(
        strstr(text, "hm_rate_limit_decisions_total{group=\"default\",decision=\"allowed\"} 0\n"));
    assert_non_null(strstr(text, "# TYPE hm_rate_limit_decisions_total counter\n"));
    free(text);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

/* ---- with Redis ---- */

static void test_burst_then_limited(void **state)
{
    hm_ratelimit_t *rl;
    hm_cache_t *c;
    int64_t retry = 0;
    redisReply *r;
    char *key;

    (void)state;
    SKIP_WITHOUT_REDIS();
    rl = limiter("default=10/1s:10");
    c = redis();
    for (int i = 0; i < 10; i++) {
        assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), 0);
        assert_int_equal(retry, 0);
    }
    assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), HM_ERATE);
    /* One token every 100 ms: the next one is at most 100 ms away. */
    assert_true(retry >= 1 && retry <= 100);
    assert_int_equal(stats(rl).allowed, 10);
    assert_int_equal(stats(rl).limited, 1);
    assert_int_equal(stats(rl).fail_open, 0);

    /* The bucket is where the documentation says, and expires once it would be full. */
    key = hm_arena_printf(&arena, "hm:%s:rl:default:alice", daemon_name);
    r = hm_cache_command(c, &arena, "PTTL %s", key);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 0 && r->integer <= 2000);
    r = hm_cache_command(c, &arena, "HGET %s tokens", key);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_true(strtod(r->str, NULL) < 1.0);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

static void test_recovery(void **state)
{
    hm_ratelimit_t *rl;
    hm_cache_t *c;
    int64_t retry = 0;

    (void)state;
    SKIP_WITHOUT_REDIS();
    rl = limiter("default=5/200ms:5");
    c = redis();
    for (int i = 0; i < 5; i++)
        assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), HM_ERATE);
    assert_true(retry >= 1 && retry <= 40);
    /* Waiting as told gives exactly one more token. */
    sleep_ms(retry + 5);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), HM_ERATE);
    /* After a whole window the bucket is full again, and holds no more than the burst. */
    sleep_ms(450);
    for (int i = 0; i < 5; i++)
        assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "bob", &retry), HM_ERATE);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

static void test_independent(void **state)
{
    hm_ratelimit_t *rl, *nodefault;
    hm_cache_t *c;
    int64_t retry = 0;
    char long_principal[300];
    redisReply *r;

    (void)state;
    SKIP_WITHOUT_REDIS();
    rl = limiter("default=2/1h:2,write=1/1h:1");
    nodefault = limiter("write=1/1h:1");
    c = redis();

    /* alice's write bucket runs dry... */
    assert_int_equal(hm_ratelimit_take(rl, c, "write", "alice", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, "write", "alice", &retry), HM_ERATE);
    /* ...but not her default bucket, nor bob's write bucket. */
    assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, "write", "bob", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, "write", "bob", &retry), HM_ERATE);
    /* A group without a rule draws from the default bucket (alice has one token left). */
    assert_int_equal(hm_ratelimit_take(rl, c, "search", "alice", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, "default", "alice", &retry), HM_ERATE);
    assert_int_equal(hm_ratelimit_take(rl, c, "search", "alice", &retry), HM_ERATE);
    /* Without a default rule, such groups are not limited at all. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(hm_ratelimit_take(nodefault, c, "search", "alice", &retry), 0);
    assert_int_equal(stats(nodefault).allowed, 0);
    /* Anonymous callers share one bucket. */
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, NULL, &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "", &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, NULL, &retry), HM_ERATE);
    r = hm_cache_command(c, &arena, "EXISTS hm:%s:rl:default:-", daemon_name);
    assert_int_equal(r->integer, 1);
    /* Long principals are keyed by their hash, and still get a bucket of their own. */
    memset(long_principal, 'p', sizeof long_principal - 1);
    long_principal[sizeof long_principal - 1] = '\0';
    assert_int_equal(hm_ratelimit_take(rl, c, "write", long_principal, &retry), 0);
    assert_int_equal(hm_ratelimit_take(rl, c, "write", long_principal, &retry), HM_ERATE);
    long_principal[0] = 'q';
    assert_int_equal(hm_ratelimit_take(rl, c, "write", long_principal, &retry), 0);
    r = hm_cache_command(c, &arena, "KEYS hm:%s:rl:write:sha256:*", daemon_name);
    assert_int_equal(r->elements, 2);
    assert_int_equal(strlen(r->element[0]->str), strlen(daemon_name) + 13 + 7 + 64);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(nodefault);
    hm_ratelimit_destroy(rl);
}

typedef struct taker {
    pthread_t thread;
    hm_ratelimit_t *rl;
    int allowed, limited, failed;
} taker_t;

static void *take_many(void *arg)
{
    taker_t *t = arg;
    hm_cache_t *c = hm_cache_create(redis_addr(), 2000); /* one connection per thread */
    int64_t retry;

    for (int i = 0; i < TAKES_PER_THREAD; i++) {
        int rc = hm_ratelimit_take(t->rl, c, "default", "carol", &retry);

        if (rc == 0)
            t->allowed++;
        else if (rc == HM_ERATE && retry > 0)
            t->limited++;
        else
            t->failed++;
    }
    hm_cache_destroy(c);
    return NULL;
}

static void test_concurrent(void **state)
{
    taker_t t[THREADS];
    hm_ratelimit_t *rl;
    hm_cache_t *c;
    int allowed = 0, limited = 0;

    (void)state;
    SKIP_WITHOUT_REDIS();
    /* 100 tokens and practically no refill: 240 takes must get exactly 100 of them. */
    rl = limiter("default=1/1h:100");
    c = redis();
    for (int i = 0; i < THREADS; i++) {
        t[i] = (taker_t){.rl = rl};
        assert_int_equal(pthread_create(&t[i].thread, NULL, take_many, &t[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].thread, NULL);
        assert_int_equal(t[i].failed, 0);
        allowed += t[i].allowed;
        limited += t[i].limited;
    }
    assert_int_equal(allowed, 100);
    assert_int_equal(limited, THREADS * TAKES_PER_THREAD - 100);
    assert_int_equal(stats(rl).allowed, 100);
    assert_int_equal(stats(rl).fail_open, 0);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

static void test_script_flush(void **state)
{
    hm_ratelimit_t *rl;
    hm_cache_t *c, *admin;
    int64_t retry = 0;
    uint64_t loads;
    redisReply *r;

    (void)state;
    SKIP_WITHOUT_REDIS();
    rl = limiter("default=3/1h:3");
    c = redis();
    admin = redis();
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "dave", &retry), 0);
    loads = stats(rl).script_loads;
    r = hm_cache_command(admin, &arena, "SCRIPT FLUSH");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    /* NOSCRIPT: loaded again, and the bucket (not a script-side state) still counts. */
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "dave", &retry), 0);
    assert_int_equal(stats(rl).script_loads, loads + 1);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "dave", &retry), 0);
    assert_int_equal(stats(rl).script_loads, loads + 1);
    assert_int_equal(hm_ratelimit_take(rl, c, NULL, "dave", &retry), HM_ERATE);
    assert_int_equal(stats(rl).fail_open, 0);
    hm_cache_destroy(admin);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

static void test_wrong_type(void **state)
{
    hm_ratelimit_t *rl;
    hm_cache_t *c;
    int64_t retry = 42;
    redisReply *r;

    (void)state;
    SKIP_WITHOUT_REDIS();
    rl = limiter("default=1/1h:1");
    c = redis();
    /* Something else owns the key: Redis answers WRONGTYPE and the call is allowed. */
    r = hm_cache_command(c, &arena, "SET hm:%s:rl:default:erin x PX 60000", daemon_name);
    assert_non_null(r);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hm_ratelimit_take(rl, c, NULL, "erin", &retry), 0);
        assert_int_equal(retry, 0);
    }
    assert_int_equal(stats(rl).fail_open, 3);
    assert_true(hm_cache_available(c)); /* an error reply is no transport failure */
    flush_buckets(c);
    hm_cache_destroy(c);
    hm_ratelimit_destroy(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_then_limited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_independent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_type, setup, teardown),
    };
    hm_log_level_t level;
    int failed;

    /* hiredis writes to sockets the server may have closed; the runtime ignores SIGPIPE too. */
    signal(SIGPIPE, SIG_IGN);
    /* Everything is logged (so logging paths run under the sanitizers too); lower it with
     * HM_TEST_LOG_LEVEL=error when reading the output by hand. */
    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_ratelimit", level);
    snprintf(daemon_name, sizeof daemon_name, "rltest%ld", (long)getpid());
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (failed == 0 && redis_addr() == NULL) {
        fprintf(stderr, "test_ratelimit: HM_TEST_REDIS_ADDR not set: Redis tests skipped\n");
        return 77;
    }
    return failed;
}
