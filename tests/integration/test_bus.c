/*
 * test_bus.c - the event backbone end to end against a real Postgres (a private database,
 * testpg.h) and a real Redis this program starts itself (redis-server on a unix socket in a
 * private folder, so it can stop and restart it and no other test sees its streams): outbox,
 * relay, consumers, dead letters, replay and `hmctl events`. One test per "Done when" line of
 * issue 4, plus the edges around them:
 *
 *   redis_down_then_back        an event committed while Redis is down is delivered after
 *   relay_killed_during_xadd    SIGKILL between commit and XADD: delivered after restart
 *   relay_killed_after_xadd     SIGKILL after XADD, before marking: re-sent, applied once
 *   consumer_killed_mid_handler redelivered (claimed) and applied once
 *   same_event_three_times      one effect
 *   poison_to_dlq_and_requeue   dead letter after N tries, requeued after the fix, applied
 *   replay_changes_nothing      a replay from the beginning changes nothing
 *   unknown_type_refused        refused at publish, nothing written
 *
 * and around them: publish_and_consume (stats, many events per transaction),
 * dependency_down_never_dead_letters, invalid_entry_dead_lettered_at_once, suppressed_subject,
 * two_relays_share_the_outbox (SKIP LOCKED: each row sent once), relay_prunes_and_flushes_at_stop.
 *
 * Skipped (77) unless HM_TEST_PG_HOST and HM_TEST_REDIS_ADDR are set and redis-server is on
 * PATH. Child processes (the killed relay and consumer, hmctl) _exit() and never return into
 * cmocka.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "events.h"
#include "hm/bus.h"
#include "hm/db.h"
#include "hm/err.h"
#include "hm/events.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "hm/outbox.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "testpg.h"

/* The common migrations (001_event_tables), embedded by the build as a daemon's are. */
extern const hm_migration_t hm_common_migrations[];
extern const size_t hm_common_nmigrations;

#define DAEMON       "testd"
#define GUEST_STREAM "hm:events:guest"
#define BOOK_STREAM  "hm:events:booking"
#define DLQ_STREAM   "hm:dlq:testd"
#define WAIT_MS      15000

static testpg_t pg;
static bool pg_ready;
static char redis_dir[64];
static char redis_sock[96];

/* ---- helpers: time, Redis server, Postgres ---- */

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

static redisContext *redis_connect(void)
{
    struct timeval tv = {2, 0};
    redisContext *r = redisConnectUnixWithTimeout(redis_sock, tv);

    if (r != NULL && r->err != 0) {
        redisFree(r);
        return NULL;
    }
    return r;
}

/* redis-server runs as our child, killed with us should this program die (PDEATHSIG). */
static pid_t redis_pid = -1;

static void redis_start(void)
{
    char dir_arg[96], log_arg[96];

    snprintf(dir_arg, sizeof dir_arg, "%s", redis_dir);
    snprintf(log_arg, sizeof log_arg, "%s/redis.log", redis_dir);
    fflush(NULL);
    redis_pid = fork();
    assert_true(redis_pid >= 0);
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", redis_sock,
               "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", dir_arg,
               "--logfile", log_arg, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisContext *r = redis_connect();

        if (r != NULL) {
            redisReply *rep = redisCommand(r, "PING");
            bool ok = rep != NULL && rep->type == REDIS_REPLY_STATUS;

            freeReplyObject(rep);
            redisFree(r);
            if (ok)
                return;
        }
        sleep_ms(25);
    }
    fail_msg("redis-server did not start (see %s)", log_arg);
}

static void redis_stop(void)
{
    redisContext *r = redis_connect();

    if (r != NULL) {
        freeReplyObject(redisCommand(r, "SHUTDOWN NOSAVE"));
        redisFree(r);
    }
    if (redis_pid > 0) {
        bool reaped = false;

        for (int i = 0; i < 200 && !reaped; i++) {
            reaped = waitpid(redis_pid, NULL, WNOHANG) == redis_pid;
            if (!reaped)
                sleep_ms(25);
        }
        if (!reaped) {
            kill(redis_pid, SIGKILL);
            waitpid(redis_pid, NULL, 0);
        }
        redis_pid = -1;
    }
    unlink(redis_sock);
}

/* A Redis command's integer reply (-1 on failure). */
static long long redis_int(const char *fmt, ...)
{
    redisContext *r = redis_connect();
    redisReply *rep;
    long long v = -1;
    va_list ap;

    if (r == NULL)
        return -1;
    va_start(ap, fmt);
    rep = redisvCommand(r, fmt, ap);
    va_end(ap);
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer;
    freeReplyObject(rep);
    redisFree(r);
    return v;
}

/* Pending entries of the test group on a stream (XPENDING summary count). */
static long long pending(const char *stream)
{
    redisContext *r = redis_connect();
    redisReply *rep;
    long long v = -1;

    if (r == NULL)
        return -1;
    rep = redisCommand(r, "XPENDING %s %s", stream, DAEMON);
    if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1)
        v = rep->element[0]->integer;
    freeReplyObject(rep);
    redisFree(r);
    return v;
}

static long count(const char *sql)
{
    return testpg_value(&pg, sql);
}

static bool wait_count(const char *sql, long want)
{
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        if (count(sql) == want)
            return true;
    }
    fprintf(stderr, "timed out: %s is %ld, want %ld\n", sql, count(sql), want);
    return false;
}

/* Waits until the stream holds `want` entries. */
static bool wait_xlen(const char *stream, long long want)
{
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        if (redis_int("XLEN %s", stream) == want)
            return true;
    }
    fprintf(stderr, "timed out: XLEN %s is %lld, want %lld\n", stream, redis_int("XLEN %s", stream),
            want);
    return false;
}

static long effects(const char *event_id)
{
    char sql[160];

    snprintf(sql, sizeof sql, "SELECT count(*) FROM effects WHERE event_id = '%.36s'", event_id);
    return count(sql);
}

/* ---- the application: a handler with one effect per applied event ---- */

typedef struct app {
    char poison[HM_UUID_LEN + 1]; /* event whose handler fails while `broken` */
    atomic_bool broken;
    atomic_bool unavailable; /* the poison event's handler reports a dependency down */
    bool exit_in_handler;    /* the child's handler dies mid-transaction */
    char suppressed[HM_UUID_LEN + 1];
    atomic_int calls;
} app_t;

static app_t app;

static const hm_stmt_t effect_insert = {
    "test_effect", "INSERT INTO effects (event_id, event_type) VALUES ($1, $2)", 2};

static int handler(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                   const ProtobufCMessage *payload, void *user)
{
    app_t *a = user;
    const char *params[2] = {env->id, env->type};
    int rc;

    (void)arena;
    if (payload == NULL)
        return HM_EINTERNAL; /* no cmocka asserts off the main thread */
    atomic_fetch_add(&a->calls, 1);
    rc = hm_db_exec(db, &effect_insert, params, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    if (a->exit_in_handler)
        _exit(3); /* killed mid-handler: the effect above never commits */
    if (atomic_load(&a->broken) && strcmp(env->id, a->poison) == 0)
        return HM_EINTERNAL;
    if (atomic_load(&a->unavailable) && strcmp(env->id, a->poison) == 0)
        return HM_EUNAVAIL;
    return 0;
}

static bool suppressed(const char *subject, void *user)
{
    app_t *a = user;

    return a->suppressed[0] != '\0' && strcmp(subject, a->suppressed) == 0;
}

static int64_t consumer_prune_ms = -1; /* consumers' prune_interval_ms: off unless a test sets it */

static hm_consumer_t *consumer(const char *name, int64_t claim_idle_ms)
{
    static const char *const streams[] = {GUEST_STREAM, BOOK_STREAM};
    hm_consumer_config_t cfg = {
        .daemon = DAEMON,
        .consumer = name,
        .database_url = pg.conninfo,
        .redis_addr = redis_sock,
        .streams = streams,
        .nstreams = 2,
        .handle = handler,
        .suppressed = suppressed,
        .user = &app,
        .from_start = true,
        .block_ms = 100,
        .max_deliveries = 3,
        .claim_idle_ms = claim_idle_ms,
        .retry_ms = 100,
        .stats_interval_ms = 100,
        .prune_interval_ms = consumer_prune_ms,
    };
    hm_consumer_t *c = hm_consumer_start(&cfg);

    assert_non_null(c);
    return c;
}

static hm_relay_t *relay_at(const char *addr, int64_t poll_ms, int64_t prune_ms)
{
    hm_relay_config_t cfg = {
        .name = DAEMON,
        .database_url = pg.conninfo,
        .redis_addr = addr,
        .redis_timeout_ms = 60000,
        .statement_timeout_ms = 60000,
        .poll_ms = poll_ms,
        .stats_interval_ms = 100,
        .prune_interval_ms = prune_ms,
        .retention_ms = 60000,
    };
    hm_relay_t *r = hm_relay_start(&cfg);

    assert_non_null(r);
    return r;
}

static hm_relay_t *relay(void)
{
    return relay_at(redis_sock, 20, 600000);
}

/* Events to publish in one transaction. */
typedef struct publish {
    size_t n;
    const char *type; /* guest.profile.created or booking.created */
    char (*ids)[HM_UUID_LEN + 1];
} publish_t;

static ProtobufCMessage *payload_for(hm_arena_t *arena, const char *type)
{
    if (strcmp(type, "booking.created") == 0) {
        Hospitality__Events__V1__BookingCreated *b = hm_arena_alloc(arena, sizeof *b);

        hospitality__events__v1__booking_created__init(b);
        return &b->base;
    }
    Hospitality__Events__V1__GuestProfileCreated *p = hm_arena_alloc(arena, sizeof *p);

    hospitality__events__v1__guest_profile_created__init(p);
    p->guest_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    return &p->base;
}

static int publish_tx(hm_db_t *db, void *arg)
{
    publish_t *p = arg;
    hm_arena_t arena;
    int rc = 0;

    hm_arena_init(&arena, 0);
    for (size_t i = 0; i < p->n && rc == 0; i++) {
        Hospitality__Events__V1__Event *ev;

        rc = hm_event_build(&arena, p->type, "testd", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", NULL,
                            payload_for(&arena, p->type), &ev);
        if (rc == 0)
            rc = hm_outbox_add(db, &arena, ev);
        if (rc == 0 && p->ids != NULL)
            snprintf(p->ids[i], sizeof p->ids[i], "%s", ev->id);
    }
    hm_arena_deinit(&arena);
    return rc;
}

/* Commits n events of `type` in one transaction; ids (may be NULL) receives their ids. */
static void publish(const char *type, size_t n, char (*ids)[HM_UUID_LEN + 1])
{
    hm_db_t *db = hm_db_create(pg.conninfo, 0);
    publish_t p = {n, type, ids};

    assert_int_equal(hm_db_tx(db, publish_tx, &p, HM_DB_READ_COMMITTED), 0);
    hm_db_destroy(db);
}

/* Runs `hmctl events ARGS...` (events.c) in a child with stdout in `out`; its exit status. */
static int hmctl(char *out, size_t cap, const char *arg0, ...)
{
    char *argv[16];
    int argc = 0, status;
    char path[128];
    va_list ap;
    pid_t pid;
    FILE *f;
    size_t n;

    va_start(ap, arg0);
    for (const char *a = arg0; a != NULL && argc < 15; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    snprintf(path, sizeof path, "%s/hmctl.out", redis_dir);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(path, "w", stdout) == NULL)
            _exit(99);
        setenv("HM_REDIS_ADDR", redis_sock, 1);
        int rc = hmctl_events(argc, argv);
        fflush(stdout);
        _exit(rc);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- fixtures ---- */

static int group_setup(void **state)
{
    (void)state;
    snprintf(redis_dir, sizeof redis_dir, "/tmp/hm-bus-%ld", (long)getpid());
    snprintf(redis_sock, sizeof redis_sock, "%s/r.sock", redis_dir);
    if (mkdir(redis_dir, 0700) != 0)
        return -1;
    testpg_setup(&pg);
    pg_ready = true;
    redis_start();
    return 0;
}

static int group_teardown(void **state)
{
    char cmdline[128];

    (void)state;
    if (!pg_ready)
        return 0;
    redis_stop();
    testpg_teardown(&pg);
    snprintf(cmdline, sizeof cmdline, "rm -rf %s", redis_dir);
    return system(cmdline) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    hm_db_t *db;
    char err[256];

    (void)state;
    if (!pg_ready)
        return 0;
    memset(&app, 0, sizeof app);
    testpg_reset(&pg);
    db = hm_db_create(pg.conninfo, 0);
    if (hm_migrate_up(db, "hm_common", hm_common_migrations, hm_common_nmigrations, err,
                      sizeof err) != 0 ||
        hm_db_exec_sql(db,
                       "CREATE TABLE effects (event_id uuid NOT NULL, event_type text NOT NULL)",
                       NULL) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        hm_db_destroy(db);
        return -1;
    }
    hm_db_destroy(db);
    if (redis_pid < 0)
        redis_start();
    return redis_int("FLUSHALL") == -1 ? 0 : 0;
}

#define SKIP_WITHOUT_SERVICES()                                                                    \
    do {                                                                                           \
        if (!pg_ready)                                                                             \
            skip();                                                                                \
    } while (0)

/* ---- tests ---- */

static void test_publish_and_consume(void **state)
{
    char ids[40][HM_UUID_LEN + 1];
    hm_relay_stats_t rs;
    hm_consumer_stats_t cs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    publish("guest.profile.created", 30, ids);
    publish("booking.created", 10, ids + 30);
    hm_relay_kick(r);
    assert_true(wait_count("SELECT count(*) FROM effects", 40));
    for (int i = 0; i < 40; i++)
        assert_int_equal(effects(ids[i]), 1);
    assert_true(wait_count("SELECT count(*) FROM outbox WHERE published_at IS NULL", 0));
    assert_int_equal(count("SELECT count(*) FROM processed_events"), 40);
    assert_int_equal(redis_int("XLEN %s", GUEST_STREAM), 30);
    assert_int_equal(redis_int("XLEN %s", BOOK_STREAM), 10);
    assert_true(wait_xlen(GUEST_STREAM, 30));
    assert_int_equal(pending(GUEST_STREAM), 0);

    sleep_ms(300); /* a stats refresh */
    hm_relay_stats(r, &rs);
    assert_int_equal(rs.published, 40);
    assert_int_equal(rs.published_by_type[hm_event_type_lookup("booking.created")->index], 10);
    assert_int_equal(rs.published_by_type[hm_event_type_lookup("guest.profile.created")->index],
                     30);
    assert_int_equal(rs.pending, 0);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.processed, 40);
    assert_int_equal(cs.duplicates, 0);
    assert_int_equal(cs.lag, 0);
    assert_int_equal(cs.pending, 0);
    assert_true(cs.batches >= 1 && cs.batches < 40); /* many events per transaction */
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_unknown_type_refused(void **state)
{
    hm_db_t *db;
    hm_arena_t arena;
    Hospitality__Events__V1__Event *ev, forged;
    const char *field;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_arena_init(&arena, 0);
    assert_int_equal(hm_event_build(&arena, "booking.teleported", "testd", NULL, NULL,
                                    payload_for(&arena, "booking.created"), &ev),
                     HM_EINVAL);
    assert_string_equal(hm_event_last_error(&field), "unknown event type");
    assert_string_equal(field, "type");

    /* An envelope made by hand, around the registry: hm_outbox_add refuses it too. */
    assert_int_equal(hm_event_build(&arena, "booking.created", "testd", NULL, NULL,
                                    payload_for(&arena, "booking.created"), &ev),
                     0);
    db = hm_db_create(pg.conninfo, 0);
    forged = *ev;
    forged.type = "booking.teleported";
    assert_int_equal(hm_outbox_add(db, &arena, &forged), HM_EINVAL);
    forged = *ev;
    forged.type = "guest.profile.created"; /* payload bytes are a BookingCreated: still refused
                                            * when they do not decode as the type's message */
    static uint8_t junk[] = {0x0a, 0x03, 0xff, 0xff, 0xff};
    forged.payload.data = junk;
    forged.payload.len = sizeof junk;
    assert_int_equal(hm_outbox_add(db, &arena, &forged), HM_EINVAL);
    assert_int_equal(count("SELECT count(*) FROM outbox"), 0);

    /* The same id twice in one transaction: HM_EEXIST, and the transaction goes on. */
    assert_int_equal(hm_db_exec_sql(db, "BEGIN", NULL), 0);
    assert_int_equal(hm_outbox_add(db, &arena, ev), 0);
    assert_int_equal(hm_outbox_add(db, &arena, ev), HM_EEXIST);
    assert_int_equal(hm_db_exec_sql(db, "COMMIT", NULL), 0);
    assert_int_equal(count("SELECT count(*) FROM outbox WHERE stream = 'hm:events:booking'"), 1);
    hm_db_destroy(db);
    hm_arena_deinit(&arena);
}

static void test_redis_down_then_back(void **state)
{
    char ids[21][HM_UUID_LEN + 1];
    hm_relay_stats_t rs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    publish("guest.profile.created", 1, ids);
    assert_true(wait_count("SELECT count(*) FROM effects", 1));

    redis_stop();
    publish("guest.profile.created", 20, ids + 1); /* committed while Redis is down */
    hm_relay_kick(r);
    sleep_ms(1000);
    assert_int_equal(count("SELECT count(*) FROM outbox WHERE published_at IS NULL"), 20);
    assert_int_equal(count("SELECT count(*) FROM effects"), 1);
    hm_relay_stats(r, &rs);
    assert_true(rs.pending == 20 || rs.pending == -1 || rs.pending == 0);

    redis_start(); /* empty: no persistence, so the groups are gone too */
    assert_true(wait_count("SELECT count(*) FROM effects", 21));
    for (int i = 0; i < 21; i++)
        assert_int_equal(effects(ids[i]), 1);
    assert_int_equal(count("SELECT count(*) FROM outbox WHERE published_at IS NULL"), 0);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

/* A socket that accepts connections (the kernel does) and never answers. */
static int hung_listener(int *port)
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

/* Forks a child running a relay towards addr until it is killed. */
static pid_t relay_child(const char *addr)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        relay_at(addr, 20, 600000);
        for (;;)
            pause();
    }
    return pid;
}

static void kill_child(pid_t pid)
{
    int status;

    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static void test_relay_killed_during_xadd(void **state)
{
    char ids[10][HM_UUID_LEN + 1], addr[32];
    int port, lfd;
    pid_t child;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    publish("booking.created", 10, ids);
    lfd = hung_listener(&port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    child = relay_child(addr);
    /* The child has locked the rows and waits for Redis to answer its XADD. */
    assert_true(wait_count("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND state = 'idle in transaction'",
                           1));
    kill_child(child);
    close(lfd);

    assert_int_equal(count("SELECT count(*) FROM outbox WHERE published_at IS NULL"), 10);
    assert_int_equal(redis_int("EXISTS %s", BOOK_STREAM), 0);
    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    assert_true(wait_count("SELECT count(*) FROM effects", 10));
    for (int i = 0; i < 10; i++)
        assert_int_equal(effects(ids[i]), 1);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_relay_killed_after_xadd(void **state)
{
    char ids[10][HM_UUID_LEN + 1];
    hm_consumer_stats_t cs = {0};
    PGresult *res;
    pid_t child;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    publish("booking.created", 10, ids);
    /* SHARE lets the relay lock its rows (ROW SHARE) but blocks its UPDATE (ROW EXCLUSIVE):
     * the child gets as far as XADD and no further. */
    PQclear(testpg_query(&pg, "BEGIN"));
    PQclear(testpg_query(&pg, "LOCK TABLE outbox IN SHARE MODE"));
    child = relay_child(redis_sock);
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        if (redis_int("XLEN %s", BOOK_STREAM) == 10)
            break;
    }
    assert_int_equal(redis_int("XLEN %s", BOOK_STREAM), 10);
    kill_child(child);
    res = testpg_query(&pg, "ROLLBACK");
    PQclear(res);

    assert_int_equal(count("SELECT count(*) FROM outbox WHERE published_at IS NULL"), 10);
    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    assert_true(wait_xlen(BOOK_STREAM, 20)); /* sent twice: at least once */
    assert_true(wait_count("SELECT count(*) FROM effects", 10));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        hm_consumer_stats(c, &cs);
        if (cs.duplicates == 10)
            break;
    }
    assert_int_equal(cs.duplicates, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(effects(ids[i]), 1);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_consumer_killed_mid_handler(void **state)
{
    char ids[1][HM_UUID_LEN + 1];
    hm_consumer_stats_t cs;
    int status;
    pid_t child;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_relay_t *r = relay();
    publish("guest.profile.created", 1, ids);
    assert_true(wait_xlen(GUEST_STREAM, 1));
    hm_relay_stop(r);

    fflush(NULL);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        app.exit_in_handler = true;
        consumer("victim", 30000);
        for (;;)
            pause();
    }
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 3);
    assert_int_equal(effects(ids[0]), 0);
    assert_int_equal(pending(GUEST_STREAM), 1); /* still the victim's */

    hm_consumer_t *c = consumer("rescuer", 300);
    assert_true(wait_count("SELECT count(*) FROM effects", 1));
    assert_true(wait_xlen(GUEST_STREAM, 1));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && pending(GUEST_STREAM) != 0;)
        sleep_ms(20);
    assert_int_equal(pending(GUEST_STREAM), 0);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.claimed, 1);
    assert_int_equal(cs.processed, 1);
    hm_consumer_stop(c);
    sleep_ms(100);
    assert_int_equal(effects(ids[0]), 1);
}

/* XADD of an envelope as the relay writes it, `times` times. */
static void xadd_env(const Hospitality__Events__V1__Event *ev, const uint8_t *env, size_t n,
                     int times)
{
    redisContext *rc = redis_connect();

    assert_non_null(rc);
    for (int i = 0; i < times; i++) {
        redisReply *rep = redisCommand(rc, "XADD %s * id %s type %s env %b", GUEST_STREAM, ev->id,
                                       ev->type, env, n);

        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        freeReplyObject(rep);
    }
    redisFree(rc);
}

static void test_same_event_three_times(void **state)
{
    hm_consumer_stats_t cs = {0};
    hm_arena_t arena;
    Hospitality__Events__V1__Event *ev;
    uint8_t *env;
    size_t n;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_arena_init(&arena, 0);
    assert_int_equal(hm_event_build(&arena, "guest.profile.created", "testd", NULL, NULL,
                                    payload_for(&arena, "guest.profile.created"), &ev),
                     0);
    assert_int_equal(hm_event_pack(&arena, ev, &env, &n), 0);
    xadd_env(ev, env, n, 3); /* three deliveries in one read */
    hm_consumer_t *c = consumer(NULL, 30000);
    assert_true(wait_count("SELECT count(*) FROM processed_events", 1));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        hm_consumer_stats(c, &cs);
        if (cs.duplicates == 2)
            break;
    }
    xadd_env(ev, env, n, 1); /* and a fourth, read on its own later */
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        hm_consumer_stats(c, &cs);
        if (cs.duplicates == 3)
            break;
    }
    assert_int_equal(cs.processed, 1);
    assert_int_equal(cs.duplicates, 3);
    assert_int_equal(effects(ev->id), 1);
    assert_int_equal(atomic_load(&app.calls), 1);
    assert_int_equal(pending(GUEST_STREAM), 0);
    hm_consumer_stop(c);
    hm_arena_deinit(&arena);
}

/* processed_events rows older than every stream's first entry (minus the hour of margin)
 * are pruned; younger ones, which a redelivery or replay could still need, stay. */
static void test_consumer_prunes_processed(void **state)
{
    hm_consumer_stats_t cs = {0};
    hm_arena_t arena;
    Hospitality__Events__V1__Event *ev;
    uint8_t *env;
    size_t n;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_arena_init(&arena, 0);
    assert_int_equal(hm_event_build(&arena, "guest.profile.created", "testd", NULL, NULL,
                                    payload_for(&arena, "guest.profile.created"), &ev),
                     0);
    assert_int_equal(hm_event_pack(&arena, ev, &env, &n), 0);
    xadd_env(ev, env, n, 1); /* the stream's first entry: now */
    assert_int_equal(
        count("WITH i AS (INSERT INTO processed_events (event_id, event_type, processed_at) "
              "VALUES (gen_random_uuid(), 'old', now() - interval '3 hours'), "
              "(gen_random_uuid(), 'recent', now() - interval '30 minutes') RETURNING 1) "
              "SELECT count(*) FROM i"),
        2);
    consumer_prune_ms = 100;
    hm_consumer_t *c = consumer(NULL, 30000);
    consumer_prune_ms = -1;
    assert_true(wait_count("SELECT count(*) FROM processed_events WHERE event_type = 'old'", 0));
    assert_true(wait_count("SELECT count(*) FROM processed_events", 2)); /* recent + applied */
    assert_int_equal(count("SELECT count(*) FROM processed_events WHERE event_type = 'recent'"), 1);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.pruned, 1);
    assert_int_equal(effects(ev->id), 1);
    hm_consumer_stop(c);
    hm_arena_deinit(&arena);
}

static void test_poison_to_dlq_and_requeue(void **state)
{
    char ids[3][HM_UUID_LEN + 1], out[8192];
    hm_consumer_stats_t cs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_consumer_t *c = consumer(NULL, 30000);
    publish("guest.profile.created", 3, ids);
    /* The middle one is poison; the handler learns its id before the relay sends it. */
    snprintf(app.poison, sizeof app.poison, "%s", ids[1]);
    atomic_store(&app.broken, true);
    hm_relay_t *r = relay();

    assert_true(wait_xlen(DLQ_STREAM, 1));
    assert_int_equal(effects(ids[0]), 1); /* the others were not held back */
    assert_int_equal(effects(ids[2]), 1);
    assert_int_equal(effects(ids[1]), 0);
    assert_true(wait_xlen(GUEST_STREAM, 3));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && pending(GUEST_STREAM) != 0;)
        sleep_ms(20);
    assert_int_equal(pending(GUEST_STREAM), 0); /* acknowledged once dead-lettered */
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.dead_letters, 1);
    assert_true(cs.failures >= 3);
    assert_int_equal(cs.processed, 2);

    /* What an operator sees. */
    assert_int_equal(hmctl(out, sizeof out, "dlq", "list", "--daemon", DAEMON, NULL), 0);
    assert_non_null(strstr(out, ids[1]));
    assert_non_null(strstr(out, "guest.profile.created"));
    assert_non_null(strstr(out, "handler failed: HM_EINTERNAL"));
    assert_non_null(strstr(out, " 3  ")); /* attempts */
    assert_int_equal(hmctl(out, sizeof out, "dlq", "list", NULL), 0);
    assert_non_null(strstr(out, ids[1]));

    /* Fixed: requeue, applied once. */
    atomic_store(&app.broken, false);
    assert_int_equal(hmctl(out, sizeof out, "dlq", "requeue", "--all", "--daemon", DAEMON, NULL),
                     0);
    assert_non_null(strstr(out, "requeued 1"));
    assert_true(wait_count("SELECT count(*) FROM effects", 3));
    assert_int_equal(effects(ids[1]), 1);
    assert_int_equal(redis_int("XLEN %s", DLQ_STREAM), 0);
    assert_int_equal(hmctl(out, sizeof out, "dlq", "requeue", "1-1", "--daemon", DAEMON, NULL), 1);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

/* Delivery count of the first pending entry of the group on a stream (0: none). */
static long long first_deliveries(const char *stream)
{
    redisContext *r = redis_connect();
    redisReply *rep;
    long long v = 0;

    if (r == NULL)
        return -1;
    rep = redisCommand(r, "XPENDING %s %s - + 1", stream, DAEMON);
    if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
        rep->element[0]->elements >= 4)
        v = rep->element[0]->element[3]->integer;
    freeReplyObject(rep);
    redisFree(r);
    return v;
}

static void test_dependency_down_never_dead_letters(void **state)
{
    char ids[1][HM_UUID_LEN + 1];
    hm_consumer_stats_t cs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_consumer_t *c = consumer(NULL, 30000);
    publish("guest.profile.created", 1, ids);
    snprintf(app.poison, sizeof app.poison, "%s", ids[0]);
    atomic_store(&app.unavailable, true);
    hm_relay_t *r = relay();
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        if (first_deliveries(GUEST_STREAM) > 4)
            break;
    }
    assert_true(first_deliveries(GUEST_STREAM) > 4); /* past max_deliveries (3) */
    assert_int_equal(redis_int("EXISTS %s", DLQ_STREAM), 0);
    assert_int_equal(effects(ids[0]), 0);

    atomic_store(&app.unavailable, false); /* the dependency is back */
    assert_true(wait_count("SELECT count(*) FROM effects", 1));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && pending(GUEST_STREAM) != 0;)
        sleep_ms(20);
    assert_int_equal(pending(GUEST_STREAM), 0);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.dead_letters, 0);
    assert_int_equal(cs.processed, 1);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_invalid_entry_dead_lettered_at_once(void **state)
{
    redisContext *rc;
    hm_consumer_stats_t cs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    rc = redis_connect();
    freeReplyObject(redisCommand(rc, "XADD %s * id x type booking.teleported env %b", BOOK_STREAM,
                                 "\x0a\x01", (size_t)2));
    freeReplyObject(redisCommand(rc, "XADD %s * id y type z", BOOK_STREAM));
    redisFree(rc);
    hm_consumer_t *c = consumer(NULL, 30000);
    assert_true(wait_xlen(DLQ_STREAM, 2));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && pending(BOOK_STREAM) != 0;)
        sleep_ms(20);
    assert_int_equal(pending(BOOK_STREAM), 0);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.dead_letters, 2);
    assert_int_equal(cs.failures, 0);
    assert_int_equal(count("SELECT count(*) FROM processed_events"), 0);
    hm_consumer_stop(c);
}

static void test_replay_changes_nothing(void **state)
{
    char ids[30][HM_UUID_LEN + 1], out[8192];
    hm_consumer_stats_t cs = {0};
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    publish("guest.profile.created", 30, ids);
    assert_true(wait_count("SELECT count(*) FROM effects", 30));
    assert_int_equal(hmctl(out, sizeof out, "streams", NULL), 0);
    assert_non_null(strstr(out, GUEST_STREAM));
    assert_non_null(strstr(out, DAEMON));

    /* From the beginning: every event is read again, nothing is applied again. */
    assert_int_equal(hmctl(out, sizeof out, "replay", "--daemon", DAEMON, "--stream", "guest",
                           "--from", "0", NULL),
                     0);
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        hm_consumer_stats(c, &cs);
        if (cs.duplicates == 30)
            break;
    }
    assert_int_equal(cs.duplicates, 30);
    assert_int_equal(cs.processed, 30);
    assert_int_equal(count("SELECT count(*) FROM effects"), 30);

    /* From a time: the ones added since (all 30, an hour back). */
    char from[40];
    time_t t = time(NULL) - 3600;
    strftime(from, sizeof from, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    assert_int_equal(hmctl(out, sizeof out, "replay", "--daemon", DAEMON, "--stream", GUEST_STREAM,
                           "--from", from, NULL),
                     0);
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until; sleep_ms(20)) {
        hm_consumer_stats(c, &cs);
        if (cs.duplicates == 60)
            break;
    }
    assert_int_equal(cs.duplicates, 60);
    assert_int_equal(count("SELECT count(*) FROM effects"), 30);
    assert_int_equal(hmctl(out, sizeof out, "replay", "--daemon", DAEMON, "--stream", "guest",
                           "--from", "yesterday", NULL),
                     2);
    assert_int_equal(hmctl(out, sizeof out, "replay", "--daemon", "nobody", "--stream", "guest",
                           "--from", "0", NULL),
                     1);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_suppressed_subject(void **state)
{
    char ids[2][HM_UUID_LEN + 1];
    hm_consumer_stats_t cs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    snprintf(app.suppressed, sizeof app.suppressed, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    hm_consumer_t *c = consumer(NULL, 30000);
    hm_relay_t *r = relay();
    publish("guest.profile.created", 2, ids);
    assert_true(wait_count("SELECT count(*) FROM processed_events", 2));
    for (int64_t until = now_ms() + WAIT_MS; now_ms() < until && pending(GUEST_STREAM) != 0;)
        sleep_ms(20);
    assert_int_equal(pending(GUEST_STREAM), 0);
    assert_int_equal(count("SELECT count(*) FROM effects"), 0);
    assert_int_equal(atomic_load(&app.calls), 0);
    hm_consumer_stats(c, &cs);
    assert_int_equal(cs.suppressed, 2);
    hm_relay_stop(r);
    hm_consumer_stop(c);
}

static void test_two_relays_share_the_outbox(void **state)
{
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_relay_t *a = relay(), *b = relay();
    for (int i = 0; i < 10; i++)
        publish("booking.created", 100, NULL);
    assert_true(wait_count("SELECT count(*) FROM outbox WHERE published_at IS NULL", 0));
    sleep_ms(200);
    assert_int_equal(redis_int("XLEN %s", BOOK_STREAM), 1000); /* each row sent once */
    hm_relay_stop(a);
    hm_relay_stop(b);
}

static void test_relay_prunes_and_flushes_at_stop(void **state)
{
    hm_relay_stats_t rs;
    (void)state;
    SKIP_WITHOUT_SERVICES();

    hm_relay_t *r = relay_at(redis_sock, 60000, 100); /* polls rarely: kicks and stop */
    publish("booking.created", 5, NULL);
    sleep_ms(200);
    hm_relay_stop(r); /* flushes */
    assert_int_equal(redis_int("XLEN %s", BOOK_STREAM), 5);
    assert_int_equal(count("SELECT count(*) FROM outbox WHERE published_at IS NULL"), 0);

    /* Rows published longer ago than the retention go; unpublished rows never do. */
    PQclear(testpg_query(&pg, "UPDATE outbox SET published_at = now() - interval '2 hours'"));
    redis_stop(); /* so the next rows stay unpublished */
    publish("booking.created", 2, NULL);
    PQclear(testpg_query(&pg, "UPDATE outbox SET created_at = now() - interval '3 hours' "
                              "WHERE published_at IS NULL"));
    r = relay_at(redis_sock, 20, 100);
    assert_true(wait_count("SELECT count(*) FROM outbox", 2));
    sleep_ms(300);
    hm_relay_stats(r, &rs);
    assert_int_equal(rs.pruned, 5);
    assert_int_equal(rs.pending, 2);
    assert_true(rs.oldest_ms >= 3 * 3600 * 1000 - 60000);
    hm_relay_stop(r);
    redis_start();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_publish_and_consume, setup),
        cmocka_unit_test_setup(test_unknown_type_refused, setup),
        cmocka_unit_test_setup(test_redis_down_then_back, setup),
        cmocka_unit_test_setup(test_relay_killed_during_xadd, setup),
        cmocka_unit_test_setup(test_relay_killed_after_xadd, setup),
        cmocka_unit_test_setup(test_consumer_killed_mid_handler, setup),
        cmocka_unit_test_setup(test_same_event_three_times, setup),
        cmocka_unit_test_setup(test_consumer_prunes_processed, setup),
        cmocka_unit_test_setup(test_poison_to_dlq_and_requeue, setup),
        cmocka_unit_test_setup(test_dependency_down_never_dead_letters, setup),
        cmocka_unit_test_setup(test_invalid_entry_dead_lettered_at_once, setup),
        cmocka_unit_test_setup(test_replay_changes_nothing, setup),
        cmocka_unit_test_setup(test_suppressed_subject, setup),
        cmocka_unit_test_setup(test_two_relays_share_the_outbox, setup),
        cmocka_unit_test_setup(test_relay_prunes_and_flushes_at_stop, setup),
    };

    signal(SIGPIPE, SIG_IGN);
    hm_log_init("test_bus", getenv("HM_TEST_VERBOSE") != NULL ? HM_LOG_DEBUG : HM_LOG_ERROR);
    if (!testpg_available() || getenv("HM_TEST_REDIS_ADDR") == NULL ||
        system("command -v redis-server >/dev/null 2>&1") != 0) {
        fprintf(stderr, "HM_TEST_PG_HOST, HM_TEST_REDIS_ADDR or redis-server missing: "
                        "skipping\n");
        return 77;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
