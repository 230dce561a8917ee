/*
 * events_bench - the event backbone's end-to-end throughput and lag (issue 4): events
 * committed to the outbox -> relay (XADD) -> consumer (processed_events + one INSERT effect per
 * event, one transaction per batch), with one relay and one consumer, as a daemon runs them.
 * Not part of the test suite or CI (docs/benchmarks.md, docs/events.md).
 *
 *   build/tools/bench/events_bench [--events N] [--rate R] [--seconds S] [--tx B]
 *
 * Phase 0 (drain): N events committed while no relay runs, then the relay and consumer start;
 * reports events/s from the relay's start to the last effect (the pipeline's capacity).
 * Phase 1 (burst): N events (default 100000) committed as fast as one producer can, B per
 * transaction (default 100); reports events/s from the first commit to the last effect.
 * Phase 2 (paced): R events/s (default 5000) for S seconds (default 10); reports the lag from
 * an event's creation (Event.time) to its handler, p50/p99/max.
 *
 * Postgres: HM_BENCH_PG_CONNINFO ("host=... port=... user=postgres"), else HM_TEST_PG_HOST /
 * HM_TEST_PG_PORT / HM_TEST_PG_USER; a database hm_bench_<pid> is created and dropped, and the
 * server's durability settings are printed with the results. Redis: a private redis-server on
 * a unix socket (no persistence), or HM_BENCH_REDIS_ADDR.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "hm/bus.h"
#include "hm/db.h"
#include "hm/err.h"
#include "hm/events.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "hm/outbox.h"
#include "hospitality/events/v1/booking_events.pb-c.h"

extern const hm_migration_t hm_common_migrations[];
extern const size_t hm_common_nmigrations;

/* Lags recorded by the handler (consumer thread only), in microseconds. */
static int64_t *lags;
static _Atomic size_t nlags; /* stored with release after the lag it counts */
static size_t caplags;
static _Atomic int64_t last_effect_us;

static int64_t wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};

    if (us > 0)
        nanosleep(&ts, NULL);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "events_bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static const hm_stmt_t effect_insert = {
    "bench_effect", "INSERT INTO bench_effects (event_id, booking_id) VALUES ($1, $2)", 2};

/* The consumer's handler: one row per event, as a typical projection would write. */
static int handler(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                   const ProtobufCMessage *payload, void *user)
{
    const Hospitality__Events__V1__BookingCreated *b = (const void *)payload;
    const char *params[2] = {env->id, b->booking != NULL ? b->booking->booking_id : ""};
    int64_t now = wall_us();
    int rc;

    (void)arena;
    (void)user;
    rc = hm_db_exec(db, &effect_insert, params, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    size_t i = atomic_load_explicit(&nlags, memory_order_relaxed);
    if (i < caplags) {
        lags[i] = now - hm_timestamp_to_us(env->time);
        atomic_store_explicit(&nlags, i + 1, memory_order_release);
    }
    atomic_store(&last_effect_us, now);
    return 0;
}

typedef struct producer {
    hm_arena_t arena;
    size_t n; /* events in this transaction */
} producer_t;

static int produce_tx(hm_db_t *db, void *arg)
{
    producer_t *p = arg;

    for (size_t i = 0; i < p->n; i++) {
        Hospitality__Events__V1__BookingCreated bc;
        Hospitality__Events__V1__BookingSummary sum;
        Hospitality__Events__V1__Event *ev;
        char bid[HM_UUID_LEN + 1], gid[HM_UUID_LEN + 1];
        int rc;

        hospitality__events__v1__booking_created__init(&bc);
        hospitality__events__v1__booking_summary__init(&sum);
        hm_uuid_v7(bid);
        hm_uuid_v7(gid);
        sum.booking_id = bid;
        sum.guest_id = gid;
        sum.venue_id = bid;
        sum.booking_reference = "BR-20241225-A3B9C2";
        sum.party_size = 4;
        sum.version = 1;
        bc.booking = &sum;
        rc = hm_event_build(&p->arena, "booking.created", "bench", gid, NULL, &bc.base, &ev);
        if (rc == 0)
            rc = hm_outbox_add(db, &p->arena, ev);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1));

    return n == 0 ? 0 : (double)v[i] / 1000.0;
}

static void admin(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r;

    if (PQstatus(c) != CONNECTION_OK)
        die("cannot connect to Postgres: %s", PQerrorMessage(c));
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die("%s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static void print_settings(const char *conninfo)
{
    static const char *const names[] = {"server_version",   "fsync",     "synchronous_commit",
                                        "full_page_writes", "wal_level", "shared_buffers"};
    PGconn *c = PQconnectdb(conninfo);

    printf("postgres:");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char sql[64];
        PGresult *r;

        snprintf(sql, sizeof sql, "SHOW %s", names[i]);
        r = PQexec(c, sql);
        printf(" %s=%s", names[i],
               PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?");
        PQclear(r);
    }
    printf("\n");
    PQfinish(c);
}

/* Waits until the consumer applied `want` events (or 120 s pass). */
static bool wait_processed(hm_consumer_t *c, uint64_t want)
{
    hm_consumer_stats_t cs;

    for (int64_t until = mono_us() + 120 * 1000000LL; mono_us() < until; sleep_us(2000)) {
        hm_consumer_stats(c, &cs);
        if (cs.processed >= want)
            return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    long long events = 100000, rate = 5000, seconds = 10, txn = 100;
    char base[512], conninfo[640], dbname[64], sql[128], redis_dir[64], redis_addr[96];
    const char *bench_redis = getenv("HM_BENCH_REDIS_ADDR");
    const char *bench_pg = getenv("HM_BENCH_PG_CONNINFO");
    static const char *const streams[] = {"hm:events:booking"};
    hm_db_t *db;
    char err[256];

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--events") == 0)
            events = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--rate") == 0)
            rate = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--tx") == 0)
            txn = atoll(argv[i + 1]);
        else
            die("unknown option %s (--events N --rate R --seconds S --tx B)", argv[i]);
    }
    if (events < 1 || rate < 1 || seconds < 0 || txn < 1)
        die("%s", "options must be positive");
    signal(SIGPIPE, SIG_IGN);
    hm_log_init("events_bench", HM_LOG_WARN);

    if (bench_pg != NULL && bench_pg[0] != '\0') {
        snprintf(base, sizeof base, "%s", bench_pg);
    } else if (getenv("HM_TEST_PG_HOST") != NULL) {
        snprintf(base, sizeof base, "host=%s port=%s user=%s", getenv("HM_TEST_PG_HOST"),
                 getenv("HM_TEST_PG_PORT") ? getenv("HM_TEST_PG_PORT") : "5432",
                 getenv("HM_TEST_PG_USER") ? getenv("HM_TEST_PG_USER") : "postgres");
    } else {
        die("%s", "set HM_BENCH_PG_CONNINFO or HM_TEST_PG_HOST/HM_TEST_PG_PORT");
    }
    snprintf(dbname, sizeof dbname, "hm_bench_%ld", (long)getpid());
    snprintf(conninfo, sizeof conninfo, "%s dbname=postgres", base);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbname);
    admin(conninfo, sql);
    print_settings(conninfo);
    snprintf(conninfo, sizeof conninfo, "%s dbname=%s", base, dbname);

    if (bench_redis != NULL && bench_redis[0] != '\0') {
        snprintf(redis_addr, sizeof redis_addr, "%s", bench_redis);
        redis_dir[0] = '\0';
    } else {
        char cmd[512];

        snprintf(redis_dir, sizeof redis_dir, "/tmp/hm-events-bench-%ld", (long)getpid());
        snprintf(redis_addr, sizeof redis_addr, "%s/r.sock", redis_dir);
        mkdir(redis_dir, 0700);
        snprintf(cmd, sizeof cmd,
                 "redis-server --port 0 --unixsocket %s --save '' --appendonly no "
                 "--daemonize yes --dir %s --logfile %s/redis.log",
                 redis_addr, redis_dir, redis_dir);
        if (system(cmd) != 0)
            die("%s", "cannot start redis-server");
        for (int i = 0; i < 200 && access(redis_addr, F_OK) != 0; i++)
            sleep_us(25000);
    }
    printf("redis: %s; one relay, one consumer (batch 256), producer %lld events per "
           "transaction\n",
           redis_addr, txn);

    db = hm_db_create(conninfo, 0);
    if (hm_migrate_up(db, "hm_common", hm_common_migrations, hm_common_nmigrations, err,
                      sizeof err) != 0 ||
        hm_db_exec_sql(db,
                       "CREATE TABLE bench_effects (event_id uuid PRIMARY KEY, booking_id text "
                       "NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                       NULL) != 0)
        die("migration failed: %s", err);

    caplags = (size_t)(2 * events + rate * seconds);
    lags = calloc(caplags, sizeof *lags);
    hm_consumer_config_t ccfg = {.daemon = "bench",
                                 .database_url = conninfo,
                                 .redis_addr = redis_addr,
                                 .streams = streams,
                                 .nstreams = 1,
                                 .handle = handler,
                                 .from_start = true};
    hm_relay_config_t rcfg = {.name = "bench", .database_url = conninfo, .redis_addr = redis_addr};
    hm_consumer_t *cons = hm_consumer_start(&ccfg);
    hm_relay_t *relay;
    producer_t p;
    hm_relay_stats_t rs;
    hm_consumer_stats_t cs;
    hm_arena_init(&p.arena, 1 << 20);

    /* Phase 0: drain. N events committed while no relay runs, then relay + consumer move them
     * all: the pipeline's own capacity, outbox to effect, without a producer competing for the
     * two cores. */
    for (long long done = 0; done < events; done += txn) {
        p.n = (size_t)(events - done < txn ? events - done : txn);
        if (hm_db_tx(db, produce_tx, &p, HM_DB_READ_COMMITTED) != 0)
            die("%s", "producer transaction failed");
        hm_arena_reset(&p.arena);
    }
    int64_t d0 = wall_us();
    relay = hm_relay_start(&rcfg);
    if (!wait_processed(cons, (uint64_t)events))
        die("%s", "drain: the consumer did not catch up within 120 s");
    int64_t d1 = atomic_load(&last_effect_us);
    hm_relay_stats(relay, &rs);
    hm_consumer_stats(cons, &cs);
    printf("\ndrain: %lld events already in the outbox\n", events);
    printf("  outbox -> relay -> consumer effect: %8.0f events/s  (%.2f s)\n",
           (double)events * 1e6 / (double)(d1 - d0), (double)(d1 - d0) / 1e6);
    printf("  relay: %" PRIu64 " published in %" PRIu64 " transactions; consumer: %" PRIu64
           " applied in %" PRIu64 " transactions\n",
           rs.published, rs.batches, cs.processed, cs.batches);
    atomic_store(&nlags, 0);

    /* Phase 1: burst, the producer committing as fast as it can while the pipeline runs. */
    int64_t t0 = wall_us();
    for (long long done = 0; done < events; done += txn) {
        p.n = (size_t)(events - done < txn ? events - done : txn);
        if (hm_db_tx(db, produce_tx, &p, HM_DB_READ_COMMITTED) != 0)
            die("%s", "producer transaction failed");
        hm_arena_reset(&p.arena);
        hm_relay_kick(relay);
    }
    int64_t t_produced = wall_us();
    if (!wait_processed(cons, (uint64_t)(2 * events)))
        die("%s", "burst: the consumer did not catch up within 120 s");
    int64_t t_done = atomic_load(&last_effect_us);
    hm_relay_stats(relay, &rs);
    hm_consumer_stats(cons, &cs);
    printf("\nburst: %lld events\n", events);
    printf("  producer (outbox insert + commit): %8.0f events/s\n",
           (double)events * 1e6 / (double)(t_produced - t0));
    printf("  end to end (first commit -> last effect): %8.0f events/s  (%.2f s)\n",
           (double)events * 1e6 / (double)(t_done - t0), (double)(t_done - t0) / 1e6);
    printf("  relay: %" PRIu64 " published in %" PRIu64 " transactions; consumer: %" PRIu64
           " applied in %" PRIu64 " transactions, %" PRIu64 " duplicates\n",
           rs.published, rs.batches, cs.processed, cs.batches, cs.duplicates);
    size_t n1 = atomic_load_explicit(&nlags, memory_order_acquire);
    qsort(lags, n1, sizeof *lags, cmp_i64);
    printf("  lag (event time -> handler): p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
           pct(lags, n1, 0.50), pct(lags, n1, 0.99), pct(lags, n1, 1.0));

    /* Phase 2: paced at `rate`, in transactions of up to txn events every 10 ms. */
    if (seconds > 0) {
        size_t first = atomic_load_explicit(&nlags, memory_order_acquire);
        long long total = rate * seconds, done = 0;
        int64_t start = mono_us();

        while (done < total) {
            long long due = (long long)((double)(mono_us() - start) * (double)rate / 1e6);

            if (due > total)
                due = total;
            if (due <= done) {
                sleep_us(2000);
                continue;
            }
            p.n = (size_t)(due - done < txn ? due - done : txn);
            if (hm_db_tx(db, produce_tx, &p, HM_DB_READ_COMMITTED) != 0)
                die("%s", "producer transaction failed");
            hm_arena_reset(&p.arena);
            hm_relay_kick(relay);
            done += (long long)p.n;
        }
        int64_t produced_s = mono_us() - start;
        if (!wait_processed(cons, (uint64_t)(2 * events + total)))
            die("%s", "phase 2: the consumer did not catch up within 120 s");
        hm_consumer_stats(cons, &cs);
        size_t n2 = atomic_load_explicit(&nlags, memory_order_acquire);
        qsort(lags + first, n2 - first, sizeof *lags, cmp_i64);
        printf("\npaced: %lld events/s offered for %lld s (%.0f events/s achieved by the "
               "producer)\n",
               rate, seconds, (double)total * 1e6 / (double)produced_s);
        printf("  lag (event time -> handler): p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
               pct(lags + first, n2 - first, 0.50), pct(lags + first, n2 - first, 0.99),
               pct(lags + first, n2 - first, 1.0));
    }

    hm_relay_stop(relay);
    hm_consumer_stop(cons);
    hm_arena_deinit(&p.arena);
    hm_db_destroy(db);
    free(lags);
    snprintf(conninfo, sizeof conninfo, "%s dbname=postgres", base);
    snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", dbname);
    admin(conninfo, sql);
    if (redis_dir[0] != '\0') {
        char cmd[256];
        struct timeval tv = {2, 0};
        redisContext *r = redisConnectUnixWithTimeout(redis_addr, tv);

        if (r != NULL && r->err == 0)
            freeReplyObject(redisCommand(r, "SHUTDOWN NOSAVE"));
        if (r != NULL)
            redisFree(r);
        snprintf(cmd, sizeof cmd, "rm -rf %s", redis_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "events_bench: could not remove %s\n", redis_dir);
    }
    return 0;
}
