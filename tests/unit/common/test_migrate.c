/*
 * test_migrate.c - integration tests of common/src/migrate.c and tools/embed-migrations.py
 * against a real Postgres (HM_TEST_PG_HOST, see testpg.h): apply, idempotence, two threads
 * migrating at once (applied once, the advisory lock really serializes), checksum mismatch
 * refusal, a database newer than the binary, gaps, failing migrations rolled back, down, and
 * status. The fixtures in migrations/ are embedded by the build like a daemon's own.
 * Skipped (exit 77) when HM_TEST_PG_HOST is unset.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "hm/db.h"
#include "hm/err.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "testpg.h"

/* Generated from tests/unit/common/migrations by tools/embed-migrations.py. */
extern const hm_migration_t hm_test_migrations[];
extern const size_t hm_test_nmigrations;

#define SERVICE "testsvc"

#define SKIP_WITHOUT_PG()                                                                          \
    do {                                                                                           \
        if (!testpg_available())                                                                   \
            skip();                                                                                \
    } while (0)

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

/* One private database per program (group fixture), emptied before each test. */
static testpg_t pg;
static bool pg_ready;

static int group_setup(void **state)
{
    (void)state;
    if (testpg_available()) {
        testpg_setup(&pg);
        pg_ready = true;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (pg_ready)
        testpg_teardown(&pg);
    return 0;
}

static int setup(void **state)
{
    *state = NULL;
    if (pg_ready) {
        testpg_reset(&pg);
        *state = &pg;
    }
    return 0;
}

static hm_db_t *open_db(testpg_t *t)
{
    hm_db_t *db = hm_db_create(t->conninfo, 5000);

    assert_non_null(db);
    return db;
}

static void up_ok(hm_db_t *db, const hm_migration_t *m, size_t n)
{
    char err[512];
    int rc = hm_migrate_up(db, SERVICE, m, n, err, sizeof err);

    if (rc != 0)
        fail_msg("hm_migrate_up: %s: %s", hm_err_name(rc), err);
}

static long count(testpg_t *t, const char *sql)
{
    return testpg_value(t, sql);
}

static bool table_exists(testpg_t *t, const char *name)
{
    char sql[128];

    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_tables WHERE tablename = '%s'", name);
    return count(t, sql) == 1;
}

/* hm_migrate_status output (malloc'd). */
static char *status(hm_db_t *db, const hm_migration_t *m, size_t n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    assert_int_equal(hm_migrate_status(db, SERVICE, m, n, f), 0);
    fclose(f);
    return buf;
}

static size_t occurrences(const char *hay, const char *needle)
{
    size_t k = 0;

    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        k++;
    return k;
}

static void sha256_hex(const char *s, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;

    assert_int_equal(EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL), 1);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* A migration built in the test, with its checksum computed here. */
typedef struct own_mig {
    hm_migration_t m;
    char sum[65];
} own_mig_t;

static void own(own_mig_t *o, int version, const char *name, const char *up, const char *down)
{
    sha256_hex(up, o->sum);
    o->m = (hm_migration_t){version, name, up, down, o->sum};
}

/* ---- tests ---- */

static void test_embedded(void **state)
{
    char sum[65];

    (void)state;
    /* What embed-migrations.py generated: 1..3 in order, both scripts, SHA-256 of up. */
    assert_int_equal(hm_test_nmigrations, 3);
    assert_string_equal(hm_test_migrations[0].name, "create_items");
    assert_string_equal(hm_test_migrations[1].name, "add_price");
    assert_string_equal(hm_test_migrations[2].name, "create_tags");
    for (size_t i = 0; i < hm_test_nmigrations; i++) {
        assert_int_equal(hm_test_migrations[i].version, (int)i + 1);
        assert_non_null(strstr(hm_test_migrations[i].down, "DROP"));
        sha256_hex(hm_test_migrations[i].up, sum);
        assert_string_equal(hm_test_migrations[i].checksum, sum);
    }
    /* Byte-exact: quotes and newlines of the files survive. */
    assert_non_null(strstr(hm_test_migrations[2].up, "quote ' and \"quotes\""));
    assert_non_null(strstr(hm_test_migrations[1].up, "DEFAULT 0;\nCREATE INDEX"));
}

static void test_up_and_idempotent(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    PGresult *before, *after;
    char *out;

    SKIP_WITHOUT_PG();
    db = open_db(t);
    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    assert_true(table_exists(t, "items"));
    assert_true(table_exists(t, "item_tags"));
    assert_int_equal(count(t, "SELECT count(*) FROM information_schema.columns "
                              "WHERE table_name = 'items' AND column_name = 'price_cents'"),
                     1);
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 3);
    assert_int_equal(count(t, "SELECT max(version) FROM hm_schema_migrations"), 3);
    assert_int_equal(
        count(t, "SELECT count(*) FROM hm_schema_migrations WHERE length(checksum) = 64"), 3);

    /* Again: nothing to do, nothing touched. */
    before = testpg_query(t, "SELECT version, applied_at FROM hm_schema_migrations ORDER BY 1");
    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    after = testpg_query(t, "SELECT version, applied_at FROM hm_schema_migrations ORDER BY 1");
    assert_int_equal(PQntuples(after), 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(PQgetvalue(before, i, 1), PQgetvalue(after, i, 1));
    PQclear(before);
    PQclear(after);

    out = status(db, hm_test_migrations, hm_test_nmigrations);
    assert_int_equal(occurrences(out, " applied\n"), 3);
    assert_non_null(strstr(out, "create_tags"));
    free(out);
    /* The handle's statement_timeout ceiling is restored after the run. */
    assert_int_equal(hm_db_set_statement_timeout(db, 5000), 5000);
    hm_db_destroy(db);
}

/* One replica starting up: its own handle, released with the others by the barrier. */
typedef struct racer {
    const char *conninfo;     /* the test database */
    pthread_barrier_t *start; /* shared by the racers (and the test thread) */
    int rc;                   /* hm_migrate_up's result, read after the join */
    char err[512];            /* its message */
} racer_t;

static void *race_up(void *arg)
{
    racer_t *r = arg;
    hm_db_t *db = hm_db_create(r->conninfo, 5000);

    hm_db_ping(db); /* connected before the race starts */
    pthread_barrier_wait(r->start);
    r->rc =
        hm_migrate_up(db, SERVICE, hm_test_migrations, hm_test_nmigrations, r->err, sizeof r->err);
    hm_db_destroy(db);
    return NULL;
}

static void test_concurrent(void **state)
{
    testpg_t *t = *state;
    pthread_barrier_t start;
    pthread_t th[3];
    racer_t r[3];
    char sql[160];

    SKIP_WITHOUT_PG();
    /* Three replicas start together: all succeed, each migration is applied once. */
    pthread_barrier_init(&start, NULL, 3);
    for (int i = 0; i < 3; i++) {
        r[i] = (racer_t){.conninfo = t->conninfo, .start = &start};
        assert_int_equal(pthread_create(&th[i], NULL, race_up, &r[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        if (r[i].rc != 0)
            fail_msg("racer %d: %s: %s", i, hm_err_name(r[i].rc), r[i].err);
    }
    pthread_barrier_destroy(&start);
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 3);

    /* The lock really serializes: while another session holds it, a migration waits. */
    testpg_reset(t);
    snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(hashtext('hm_migrate:%s'))", SERVICE);
    PQclear(testpg_query(t, sql));
    pthread_barrier_init(&start, NULL, 2);
    r[0] = (racer_t){.conninfo = t->conninfo, .start = &start};
    assert_int_equal(pthread_create(&th[0], NULL, race_up, &r[0]), 0);
    pthread_barrier_wait(&start);
    sleep_ms(300);
    assert_false(table_exists(t, "hm_schema_migrations"));
    assert_int_equal(count(t, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                              "USING (pid) WHERE l.locktype = 'advisory' AND NOT l.granted"),
                     1);
    snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(hashtext('hm_migrate:%s'))", SERVICE);
    PQclear(testpg_query(t, sql));
    pthread_join(th[0], NULL);
    pthread_barrier_destroy(&start);
    assert_int_equal(r[0].rc, 0);
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 3);
    /* And it released the lock when done. */
    assert_int_equal(count(t, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), 0);
}

static void test_checksum_mismatch(void **state)
{
    testpg_t *t = *state;
    hm_migration_t edited[3];
    own_mig_t changed;
    hm_db_t *db;
    char err[512], *out;

    SKIP_WITHOUT_PG();
    db = open_db(t);
    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    /* Migration 2 edited after release. */
    memcpy(edited, hm_test_migrations, sizeof edited);
    own(&changed, 2, "add_price",
        "ALTER TABLE items ADD COLUMN price_cents bigint NOT NULL DEFAULT 1;",
        hm_test_migrations[1].down);
    edited[1] = changed.m;
    assert_int_equal(hm_migrate_up(db, SERVICE, edited, 3, err, sizeof err), HM_EPRECOND);
    assert_string_equal(err, "migration 2 (add_price) was changed after it was applied: "
                             "checksum mismatch (restore the released file; changes go in a "
                             "new migration)");
    out = status(db, edited, 3);
    assert_int_equal(occurrences(out, " changed\n"), 1);
    assert_int_equal(occurrences(out, " applied\n"), 2);
    free(out);
    /* Nor will it roll the edited migration back. */
    assert_int_equal(hm_migrate_down(db, SERVICE, edited, 3, 1, err, sizeof err), HM_EPRECOND);
    assert_non_null(strstr(err, "checksum mismatch"));
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 3);
    hm_db_destroy(db);
}

static void test_newer_database(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    char err[512], *out;

    SKIP_WITHOUT_PG();
    db = open_db(t);
    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    /* The previous release (knows 1..2) keeps starting during a rolling update to 1..3. */
    up_ok(db, hm_test_migrations, 2);
    out = status(db, hm_test_migrations, 2);
    assert_non_null(strstr(out, "create_tags"));
    assert_int_equal(occurrences(out, " unknown\n"), 1);
    free(out);
    /* But it will not roll back what it does not know. */
    assert_int_equal(hm_migrate_down(db, SERVICE, hm_test_migrations, 2, 1, err, sizeof err),
                     HM_EPRECOND);
    assert_string_equal(err, "cannot roll back migration 3: unknown to this binary (use the "
                             "release that applied it)");
    assert_true(table_exists(t, "item_tags"));

    /* A known migration missing below an applied one is refused. */
    PQclear(testpg_query(t, "DELETE FROM hm_schema_migrations WHERE version = 2"));
    assert_int_equal(hm_migrate_up(db, SERVICE, hm_test_migrations, 3, err, sizeof err),
                     HM_EPRECOND);
    assert_string_equal(err, "migration 2 (add_price) is pending but the later migration 3 is "
                             "applied");
    hm_db_destroy(db);
}

static void test_down(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    char err[512], *out;

    SKIP_WITHOUT_PG();
    db = open_db(t);
    /* Nothing applied yet: nothing to do. */
    assert_int_equal(hm_migrate_down(db, SERVICE, hm_test_migrations, 3, 0, err, sizeof err), 0);
    assert_int_equal(hm_migrate_down(db, SERVICE, hm_test_migrations, 3, -1, err, sizeof err),
                     HM_EINVAL);

    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    assert_int_equal(hm_migrate_down(db, SERVICE, hm_test_migrations, 3, 1, err, sizeof err), 0);
    assert_false(table_exists(t, "item_tags"));
    assert_true(table_exists(t, "items"));
    assert_int_equal(count(t, "SELECT count(*) FROM information_schema.columns "
                              "WHERE table_name = 'items' AND column_name = 'price_cents'"),
                     0);
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 1);
    out = status(db, hm_test_migrations, 3);
    assert_int_equal(occurrences(out, " pending\n"), 2);
    free(out);

    assert_int_equal(hm_migrate_down(db, SERVICE, hm_test_migrations, 3, 0, err, sizeof err), 0);
    assert_false(table_exists(t, "items"));
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 0);

    /* And forward again. */
    up_ok(db, hm_test_migrations, hm_test_nmigrations);
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 3);
    hm_db_destroy(db);
}

static void test_failing_migration(void **state)
{
    testpg_t *t = *state;
    own_mig_t bad, half, slow;
    hm_migration_t migs[3];
    hm_db_t *db;
    char err[512];
    int rc;

    SKIP_WITHOUT_PG();
    db = open_db(t);
    migs[0] = hm_test_migrations[0];
    own(&bad, 2, "broken", "CREATE TABLE broken (", "DROP TABLE broken;");
    migs[1] = bad.m;
    rc = hm_migrate_up(db, SERVICE, migs, 2, err, sizeof err);
    assert_int_equal(rc, HM_EINTERNAL);
    assert_non_null(strstr(err, "migration 2 (broken) up failed: "));
    assert_non_null(strstr(err, "(sqlstate 42601)"));
    /* The ones before stay applied; the failed one left nothing. */
    assert_int_equal(count(t, "SELECT count(*) FROM hm_schema_migrations"), 1);
    assert_true(table_exists(t, "items"));

    /* A script failing halfway is rolled back whole. */
    own(&half, 2, "half", "CREATE TABLE half (id int); SELECT 1 / 0;", "DROP TABLE half;");
    migs[1] = half.m;
    rc = hm_migrate_up(db, SERVICE, migs, 2, err, sizeof err);
    assert_int_equal(rc, HM_EINVAL);
    assert_non_null(strstr(err, "(sqlstate 22012)"));
    assert_false(table_exists(t, "half"));

    /* Migrations run without the handle's statement_timeout (here 100 ms)... */
    own(&slow, 2, "slow", "SELECT pg_sleep(0.3); CREATE TABLE slow (id int);", "DROP TABLE slow;");
    migs[1] = slow.m;
    hm_db_set_statement_timeout(db, 100);
    up_ok(db, migs, 2);
    assert_true(table_exists(t, "slow"));
    /* ...which is back in force afterwards. */
    assert_int_equal(hm_db_exec_sql(db, "SELECT pg_sleep(0.3)", NULL), HM_ETIMEDOUT);

    /* A malformed table is refused before touching the database. */
    migs[0] = hm_test_migrations[1]; /* version 2 first */
    assert_int_equal(hm_migrate_up(db, SERVICE, migs, 1, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "migration table entry 1 is malformed");
    hm_db_destroy(db);
}

static void test_unavailable(void **state)
{
    hm_db_t *db;
    char err[512];

    (void)state;
    SKIP_WITHOUT_PG();
    db = hm_db_create("host=/nonexistent/hm-test port=1 user=postgres", 5000);
    assert_int_equal(hm_migrate_up(db, SERVICE, hm_test_migrations, 3, err, sizeof err),
                     HM_EUNAVAIL);
    assert_non_null(strstr(err, "taking the migration lock: "));
    hm_db_destroy(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded),
        cmocka_unit_test_setup(test_up_and_idempotent, setup),
        cmocka_unit_test_setup(test_concurrent, setup),
        cmocka_unit_test_setup(test_checksum_mismatch, setup),
        cmocka_unit_test_setup(test_newer_database, setup),
        cmocka_unit_test_setup(test_down, setup),
        cmocka_unit_test_setup(test_failing_migration, setup),
        cmocka_unit_test(test_unavailable),
    };
    hm_log_level_t level;
    int failed;

    /* Everything is logged (so logging paths run under the sanitizers too); lower it with
     * HM_TEST_LOG_LEVEL=error when reading the output by hand. */
    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_migrate", level);
    failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    if (failed == 0 && !testpg_available()) {
        fprintf(stderr, "test_migrate: HM_TEST_PG_HOST not set: skipped\n");
        return 77;
    }
    return failed;
}
