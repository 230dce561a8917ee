/*
 * test_db.c - integration tests of common/src/db.c against a real Postgres (HM_TEST_PG_HOST,
 * see testpg.h): SQLSTATE mapping with real violating statements, deadlines and
 * statement_timeout, transactions (rollback, serialization retries with two connections, a
 * connection lost at COMMIT), reconnect after pg_terminate_backend, backoff, result helpers.
 * The program works in a private database, emptied before each test. Skipped (exit 77) when
 * HM_TEST_PG_HOST is unset.
 */
#include <inttypes.h>
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

#include "hm/arena.h"
#include "hm/db.h"
#include "hm/err.h"
#include "hm/log.h"
#include "testpg.h"

#define SKIP_WITHOUT_PG()                                                                          \
    do {                                                                                           \
        if (!testpg_available())                                                                   \
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

static hm_db_t *open_db(testpg_t *t, int64_t ceiling_ms)
{
    hm_db_t *db = hm_db_create(t->conninfo, ceiling_ms);

    assert_non_null(db);
    return db;
}

static void sql_ok(hm_db_t *db, const char *sql)
{
    int rc = hm_db_exec_sql(db, sql, NULL);

    if (rc != 0)
        fail_msg("%s: %s (%s)", sql, hm_err_name(rc), hm_db_last_message(db));
}

static hm_db_stats_t stats(hm_db_t *db)
{
    hm_db_stats_t st;

    hm_db_stats(db, &st);
    return st;
}

/* Terminates the backend serving db and waits until it is gone. */
static void kill_backend(testpg_t *t, hm_db_t *db)
{
    PGresult *res;
    char sql[160];
    int64_t pid;

    assert_int_equal(hm_db_exec_sql(db, "SELECT pg_backend_pid()", &res), 0);
    assert_int_equal(hm_db_get_int64(res, 0, 0, &pid), 0);
    PQclear(res);
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%" PRId64 ")", pid);
    PQclear(testpg_query(t, sql));
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %" PRId64, pid);
    for (int i = 0; i < 200 && testpg_value(t, sql) != 0; i++)
        sleep_ms(10);
}

/* ---- pure ---- */

static void test_map_sqlstate(void **state)
{
    static const struct {
        const char *state;
        int rc;
    } map[] = {
        {"23505", HM_EEXIST},     {"23P01", HM_EEXIST},    {"23503", HM_EPRECOND},
        {"23502", HM_EINVAL},     {"23514", HM_EINVAL},    {"22P02", HM_EINVAL},
        {"22012", HM_EINVAL},     {"22001", HM_EINVAL},    {"40001", HM_ERETRY},
        {"40P01", HM_ERETRY},     {"57014", HM_ETIMEDOUT}, {"08006", HM_EUNAVAIL},
        {"08000", HM_EUNAVAIL},   {"08P01", HM_EINTERNAL}, {"57P01", HM_EUNAVAIL},
        {"57P02", HM_EUNAVAIL},   {"57P03", HM_EUNAVAIL},  {"53300", HM_EUNAVAIL},
        {"53100", HM_EUNAVAIL},   {"42601", HM_EINTERNAL}, {"42P01", HM_EINTERNAL},
        {"25P02", HM_EINTERNAL},  {"40002", HM_EINTERNAL}, {"57000", HM_EINTERNAL},
        {"23000", HM_EINTERNAL},  {"", HM_EINTERNAL},      {"2350", HM_EINTERNAL},
        {"235050", HM_EINTERNAL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (hm_db_map_sqlstate(map[i].state) != map[i].rc)
            fail_msg("sqlstate %s: got %d want %d", map[i].state, hm_db_map_sqlstate(map[i].state),
                     map[i].rc);
    }
    assert_int_equal(hm_db_map_sqlstate(NULL), HM_EINTERNAL);
}

static void test_create_bad_conninfo(void **state)
{
    (void)state;
    assert_null(hm_db_create("host='unterminated password=hunter2", 1000));
    assert_null(hm_db_create("nonsense_keyword=1", 1000));
    hm_db_destroy(NULL);
}

/* ---- with Postgres ---- */

static const hm_stmt_t st_insert = {"t_insert",
                                    "INSERT INTO things (name, qty, flag, data) "
                                    "VALUES ($1, $2, $3, $4) RETURNING id",
                                    4};
static const hm_stmt_t st_select = {"t_select",
                                    "SELECT id, name, qty, flag, data, NULL::text "
                                    "FROM things WHERE name = $1",
                                    1};
static const hm_stmt_t st_count = {"t_count", "SELECT count(*) FROM things", 0};

static void create_things(hm_db_t *db)
{
    sql_ok(db, "CREATE TABLE things (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, "
               "qty bigint NOT NULL DEFAULT 0 CHECK (qty >= 0), flag boolean, data bytea)");
}

static void test_exec_and_helpers(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    hm_arena_t a;
    PGresult *res;
    int64_t id, qty;
    bool flag;
    unsigned char *bytes;
    size_t n;
    const char *params[4];
    int lengths[4] = {0, 0, 0, 5}, formats[4] = {0, 0, 0, 1};

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    hm_arena_init(&a, 0);
    create_things(db);

    params[0] = "widget";
    params[1] = hm_db_param_int64(&a, INT64_MAX);
    params[2] = hm_db_param_bool(true);
    params[3] = "\x00\x01\xff\"\\"; /* binary parameter with a NUL */
    assert_int_equal(hm_db_exec_arena(db, &a, &st_insert, params, lengths, formats, &res), 0);
    assert_int_equal(hm_db_get_int64(res, 0, 0, &id), 0);
    assert_true(id > 0);

    params[0] = "widget";
    assert_int_equal(hm_db_exec_arena(db, &a, &st_select, params, NULL, NULL, &res), 0);
    assert_int_equal(PQntuples(res), 1);
    assert_string_equal(hm_db_get(res, 0, 1), "widget");
    assert_int_equal(hm_db_get_int64(res, 0, 2, &qty), 0);
    assert_true(qty == INT64_MAX);
    assert_int_equal(hm_db_get_bool(res, 0, 3, &flag), 0);
    assert_true(flag);
    assert_int_equal(hm_db_get_bytea(res, 0, 4, &a, &bytes, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(bytes, "\x00\x01\xff\"\\", 5);
    /* SQL NULL, out of range, and values that are not what was asked. */
    assert_null(hm_db_get(res, 0, 5));
    assert_null(hm_db_get(res, 1, 0));
    assert_null(hm_db_get(res, 0, 6));
    assert_null(hm_db_get(res, -1, 0));
    assert_int_equal(hm_db_get_int64(res, 0, 5, &qty), HM_ENOTFOUND);
    assert_int_equal(hm_db_get_bool(res, 0, 5, &flag), HM_ENOTFOUND);
    assert_int_equal(hm_db_get_bytea(res, 0, 5, &a, &bytes, &n), HM_ENOTFOUND);
    assert_int_equal(hm_db_get_int64(res, 0, 1, &qty), HM_EINVAL);
    assert_int_equal(hm_db_get_bool(res, 0, 1, &flag), HM_EINVAL);

    /* int64 edges through the database. */
    assert_int_equal(
        hm_db_exec_sql(db,
                       "SELECT '-9223372036854775808'::bigint, '-0'::text, '+7'::text, "
                       "'9223372036854775808'::text, ''::text, '\\x'::bytea",
                       &res),
        0);
    assert_int_equal(hm_db_get_int64(res, 0, 0, &qty), 0);
    assert_true(qty == INT64_MIN);
    assert_int_equal(hm_db_get_int64(res, 0, 1, &qty), 0);
    assert_true(qty == 0);
    assert_int_equal(hm_db_get_int64(res, 0, 2, &qty), 0);
    assert_true(qty == 7);
    assert_int_equal(hm_db_get_int64(res, 0, 3, &qty), HM_EINVAL);
    assert_int_equal(hm_db_get_int64(res, 0, 4, &qty), HM_EINVAL);
    assert_int_equal(hm_db_get_bytea(res, 0, 5, &a, &bytes, &n), 0);
    assert_int_equal(n, 0);
    PQclear(res);

    /* The old escape format of bytea decodes too. */
    sql_ok(db, "SET bytea_output = escape");
    assert_int_equal(hm_db_exec_sql(db, "SELECT '\\x00ff41'::bytea", &res), 0);
    assert_int_equal(hm_db_get_bytea(res, 0, 0, &a, &bytes, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(bytes,
                        "\x00\xff"
                        "A",
                        3);
    PQclear(res);

    /* A result not asked for is freed at once; out may be NULL. */
    assert_int_equal(hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(hm_db_ping(db), 0);
    hm_arena_deinit(&a); /* PQclear()s the arena's results (ASan checks the leaks) */
    hm_db_destroy(db);
}

static const hm_stmt_t st_parent = {"t_parent", "INSERT INTO parents (id) VALUES ($1)", 1};
static const hm_stmt_t st_child = {"t_child",
                                   "INSERT INTO children (parent_id, qty) VALUES ($1, $2)", 2};
static const hm_stmt_t st_slot = {"t_slot", "INSERT INTO slots (during) VALUES (int4range($1, $2))",
                                  2};
static const hm_stmt_t st_div = {"t_div", "SELECT 1 / $1::int", 1};
static const hm_stmt_t st_bad_sql = {"t_bad_sql", "SELEKT 1", 0};

static void expect_fail(hm_db_t *db, int rc, int want, const char *sqlstate, const char *constraint)
{
    if (rc != want)
        fail_msg("got %s want %s (%s: %s)", hm_err_name(rc), hm_err_name(want),
                 hm_db_last_sqlstate(db), hm_db_last_message(db));
    assert_string_equal(hm_db_last_sqlstate(db), sqlstate);
    if (constraint != NULL)
        assert_string_equal(hm_db_last_constraint(db), constraint);
    assert_true(hm_db_last_message(db)[0] != '\0');
}

static void test_sqlstate_mapping(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    PGresult *res = (PGresult *)1;
    const char *p[2];
    hm_db_stats_t st;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    sql_ok(db, "CREATE TABLE parents (id int PRIMARY KEY);"
               "CREATE TABLE children (parent_id int NOT NULL "
               "  CONSTRAINT children_parent_fk REFERENCES parents (id),"
               "  qty int CONSTRAINT children_qty_positive CHECK (qty > 0));"
               "CREATE TABLE slots (during int4range NOT NULL,"
               "  CONSTRAINT slots_no_overlap EXCLUDE USING gist (during WITH &&))");
    p[0] = "1";
    assert_int_equal(hm_db_exec(db, &st_parent, p, NULL, NULL, NULL), 0);

    /* 23505 unique */
    expect_fail(db, hm_db_exec(db, &st_parent, p, NULL, NULL, &res), HM_EEXIST, "23505",
                "parents_pkey");
    assert_null(res);
    /* 23503 foreign key */
    p[0] = "2";
    p[1] = "1";
    expect_fail(db, hm_db_exec(db, &st_child, p, NULL, NULL, NULL), HM_EPRECOND, "23503",
                "children_parent_fk");
    /* 23502 not null */
    p[0] = NULL;
    expect_fail(db, hm_db_exec(db, &st_child, p, NULL, NULL, NULL), HM_EINVAL, "23502", NULL);
    /* 23514 check */
    p[0] = "1";
    p[1] = "0";
    expect_fail(db, hm_db_exec(db, &st_child, p, NULL, NULL, NULL), HM_EINVAL, "23514",
                "children_qty_positive");
    /* 22P02 bad input, 22003 out of range, 22012 division by zero */
    p[1] = "lots";
    expect_fail(db, hm_db_exec(db, &st_child, p, NULL, NULL, NULL), HM_EINVAL, "22P02", "");
    p[1] = "99999999999";
    expect_fail(db, hm_db_exec(db, &st_child, p, NULL, NULL, NULL), HM_EINVAL, "22003", "");
    p[0] = "0";
    expect_fail(db, hm_db_exec(db, &st_div, p, NULL, NULL, NULL), HM_EINVAL, "22012", "");
    /* 23P01 exclusion */
    p[0] = "1";
    p[1] = "10";
    assert_int_equal(hm_db_exec(db, &st_slot, p, NULL, NULL, NULL), 0);
    p[0] = "5";
    p[1] = "15";
    expect_fail(db, hm_db_exec(db, &st_slot, p, NULL, NULL, NULL), HM_EEXIST, "23P01",
                "slots_no_overlap");
    /* A bug in the SQL is internal (fails at prepare). */
    expect_fail(db, hm_db_exec(db, &st_bad_sql, NULL, NULL, NULL, NULL), HM_EINTERNAL, "42601", "");
    expect_fail(db, hm_db_exec_sql(db, "SELECT * FROM no_such_table", NULL), HM_EINTERNAL, "42P01",
                "");

    /* After all that the connection is the same one and works; success clears the error. */
    p[0] = "20";
    p[1] = "30";
    assert_int_equal(hm_db_exec(db, &st_slot, p, NULL, NULL, NULL), 0);
    assert_string_equal(hm_db_last_sqlstate(db), "");
    assert_string_equal(hm_db_last_constraint(db), "");
    st = stats(db);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.reconnects, 0);
    assert_int_equal(st.errors, 10);
    assert_int_equal(st.connected, 1);
    hm_db_destroy(db);
}

static const hm_stmt_t st_sleep = {"t_sleep", "SELECT pg_sleep($1::float8)", 1};

static void test_statement_timeout(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    const char *p[1] = {"2"};
    int64_t t0;

    SKIP_WITHOUT_PG();
    db = open_db(t, 200);
    t0 = now_ms();
    expect_fail(db, hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), HM_ETIMEDOUT, "57014", "");
    assert_true(now_ms() - t0 < 1500);
    /* Not a connection problem: the same connection serves the next call. */
    p[0] = "0";
    assert_int_equal(hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), 0);
    assert_int_equal(stats(db).connects, 1);
    hm_db_destroy(db);
}

static void test_deadline(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    const char *p[1] = {"3"};
    hm_db_stats_t st;
    int64_t t0;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    /* No time left: fails without touching the database (not even connecting). */
    hm_db_set_deadline(db, 0);
    assert_int_equal(hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), HM_ETIMEDOUT);
    assert_int_equal(hm_db_exec_sql(db, "SELECT 1", NULL), HM_ETIMEDOUT);
    st = stats(db);
    assert_int_equal(st.connects, 0);
    assert_int_equal(st.queries, 0);
    assert_int_equal(st.errors, 2);

    /* A deadline shorter than the ceiling bounds the statement. */
    hm_db_set_deadline(db, 300);
    t0 = now_ms();
    assert_int_equal(hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), HM_ETIMEDOUT);
    assert_string_equal(hm_db_last_sqlstate(db), "57014");
    assert_true(now_ms() - t0 < 1500);

    /* Cleared (as the runtime does after each call), statements run again. */
    hm_db_end_call(db);
    p[0] = "0.01";
    assert_int_equal(hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), 0);
    hm_db_set_deadline(db, -1);
    assert_int_equal(hm_db_exec(db, &st_sleep, p, NULL, NULL, NULL), 0);
    hm_db_destroy(db);
}

/* The session's statement_timeout as Postgres reports it, in ms. */
static int64_t session_timeout(hm_db_t *db)
{
    PGresult *res;
    int64_t v = -1;

    assert_int_equal(hm_db_exec_sql(db,
                                    "SELECT setting::bigint FROM pg_settings "
                                    "WHERE name = 'statement_timeout'",
                                    &res),
                     0);
    hm_db_get_int64(res, 0, 0, &v);
    PQclear(res);
    return v;
}

static void test_timeout_round_trips(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    /* The ceiling is set once per connection, not per call. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(hm_db_ping(db), 0);
    assert_int_equal(stats(db).timeout_sets, 1);
    assert_int_equal(session_timeout(db), 5000);

    /* Within 20% of what the session has: no round trip. */
    hm_db_set_deadline(db, 4500);
    assert_int_equal(hm_db_ping(db), 0);
    assert_int_equal(stats(db).timeout_sets, 1);
    assert_int_equal(session_timeout(db), 5000);

    /* Much shorter: set. */
    hm_db_set_deadline(db, 1000);
    assert_int_equal(hm_db_ping(db), 0);
    assert_int_equal(stats(db).timeout_sets, 2);
    assert_true(session_timeout(db) <= 1000 && session_timeout(db) > 800);

    /* Longer than the ceiling: the ceiling. */
    hm_db_set_deadline(db, 60000);
    assert_int_equal(hm_db_ping(db), 0);
    assert_int_equal(stats(db).timeout_sets, 3);
    assert_int_equal(session_timeout(db), 5000);

    /* No ceiling and no deadline: none. */
    hm_db_set_deadline(db, -1);
    assert_int_equal(hm_db_set_statement_timeout(db, 0), 5000);
    assert_int_equal(hm_db_ping(db), 0);
    assert_int_equal(session_timeout(db), 0);
    hm_db_destroy(db);
}

/* ---- transactions ---- */

static const hm_stmt_t st_add = {"t_add", "INSERT INTO things (name, qty) VALUES ($1, $2)", 2};

typedef struct tx_arg {
    const char *names[3]; /* inserted in order; NULL ends */
    int fail_with;        /* returned after the inserts when non-zero */
    bool swallow;         /* ignore a failed insert and return 0 */
    int calls;
} tx_arg_t;

static int insert_fn(hm_db_t *db, void *arg)
{
    tx_arg_t *a = arg;

    a->calls++;
    for (int i = 0; i < 3 && a->names[i] != NULL; i++) {
        const char *p[2] = {a->names[i], "1"};
        int rc = hm_db_exec(db, &st_add, p, NULL, NULL, NULL);

        if (rc != 0 && !a->swallow)
            return rc;
    }
    return a->fail_with;
}

static int nested_fn(hm_db_t *db, void *arg)
{
    (void)arg;
    return hm_db_tx(db, insert_fn, &(tx_arg_t){.names = {"nested"}}, HM_DB_READ_COMMITTED);
}

static void test_tx_commit_rollback(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    tx_arg_t a;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    create_things(db);

    a = (tx_arg_t){.names = {"a", "b"}};
    assert_int_equal(hm_db_tx(db, insert_fn, &a, HM_DB_READ_COMMITTED), 0);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 2);

    /* The callback's error rolls everything back. */
    a = (tx_arg_t){.names = {"c", "d"}, .fail_with = HM_EPRECOND};
    assert_int_equal(hm_db_tx(db, insert_fn, &a, HM_DB_REPEATABLE_READ), HM_EPRECOND);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 2);

    /* A failing statement's code comes back, details intact after the rollback. */
    a = (tx_arg_t){.names = {"e", "a", "f"}};
    assert_int_equal(hm_db_tx(db, insert_fn, &a, HM_DB_SERIALIZABLE), HM_EEXIST);
    assert_string_equal(hm_db_last_constraint(db), "things_name_key");
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things WHERE name = 'e'"), 0);

    /* A callback that swallows an error cannot commit the aborted transaction. */
    a = (tx_arg_t){.names = {"g", "a", "h"}, .swallow = true};
    assert_int_equal(hm_db_tx(db, insert_fn, &a, HM_DB_READ_COMMITTED), HM_EINTERNAL);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 2);

    /* No nesting, no unknown isolation levels. */
    assert_int_equal(hm_db_tx(db, nested_fn, NULL, HM_DB_READ_COMMITTED), HM_EINVAL);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things WHERE name = 'nested'"), 0);
    assert_int_equal(hm_db_tx(db, insert_fn, &a, 7), HM_EINVAL);

    /* A transaction left open by a handler is rolled back at the end of the call. */
    sql_ok(db, "BEGIN");
    assert_int_equal(hm_db_exec(db, &st_add, (const char *[]){"left", "1"}, NULL, NULL, NULL), 0);
    hm_db_end_call(db);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things WHERE name = 'left'"), 0);
    a = (tx_arg_t){.names = {"after"}};
    assert_int_equal(hm_db_tx(db, insert_fn, &a, HM_DB_READ_COMMITTED), 0);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 3);
    assert_int_equal(stats(db).connects, 1);
    hm_db_destroy(db);
}

static const hm_stmt_t st_read = {"t_read", "SELECT n FROM counter WHERE id = 1", 0};
static const hm_stmt_t st_bump = {"t_bump", "UPDATE counter SET n = n + $1::int WHERE id = 1", 1};

typedef struct race {
    hm_db_t *other;    /* second connection that commits a conflicting update */
    int interfere_for; /* attempts during which `other` interferes */
    int calls;
} race_t;

static int bump_fn(hm_db_t *db, void *arg)
{
    race_t *r = arg;
    const char *one[1] = {"1"}, *hundred[1] = {"100"};
    int rc;

    r->calls++;
    rc = hm_db_exec(db, &st_read, NULL, NULL, NULL, NULL); /* takes the snapshot */
    if (rc != 0)
        return rc;
    if (r->calls <= r->interfere_for)
        assert_int_equal(hm_db_exec(r->other, &st_bump, hundred, NULL, NULL, NULL), 0);
    return hm_db_exec(db, &st_bump, one, NULL, NULL, NULL);
}

static void test_tx_serialization_retry(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db, *other;
    race_t r;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    other = open_db(t, 5000);
    sql_ok(db, "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);"
               "INSERT INTO counter VALUES (1, 0)");

    /* A concurrent commit on the first attempt: 40001, retried, then it goes through. */
    r = (race_t){.other = other, .interfere_for = 1};
    assert_int_equal(hm_db_tx(db, bump_fn, &r, HM_DB_SERIALIZABLE), 0);
    assert_int_equal(r.calls, 2);
    assert_int_equal(stats(db).tx_retries, 1);
    assert_int_equal(testpg_value(t, "SELECT n FROM counter"), 101);

    /* Interference on every attempt: gives up after HM_DB_TX_RETRIES retries. */
    r = (race_t){.other = other, .interfere_for = 100};
    assert_int_equal(hm_db_tx(db, bump_fn, &r, HM_DB_REPEATABLE_READ), HM_ERETRY);
    assert_int_equal(r.calls, 1 + HM_DB_TX_RETRIES);
    assert_string_equal(hm_db_last_sqlstate(db), "40001");
    assert_int_equal(testpg_value(t, "SELECT n FROM counter"), 101 + 100 * (1 + HM_DB_TX_RETRIES));
    hm_db_destroy(other);
    hm_db_destroy(db);
}

/* ---- connections ---- */

static void test_reconnect_after_terminate(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    hm_db_stats_t st;
    int rc;

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    create_things(db);
    assert_int_equal(hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL), 0);
    kill_backend(t, db);

    /* The call that finds the connection dead fails as unavailable, and drops it... */
    rc = hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL);
    assert_int_equal(rc, HM_EUNAVAIL);
    assert_int_equal(stats(db).connected, 0);
    /* ...the next reconnects at once and prepares its statements again. */
    assert_int_equal(hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL), 0);
    st = stats(db);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.reconnects, 1);
    assert_int_equal(st.connected, 1);
    assert_int_equal(st.connect_failures, 0);

    /* Statements the server forgot (DISCARD ALL, a pooler) are prepared again transparently. */
    sql_ok(db, "DEALLOCATE ALL");
    assert_int_equal(hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL), 0);
    hm_db_destroy(db);
}

/* A transaction whose connection is killed from the side connection. */
typedef struct lost {
    testpg_t *t;     /* for the side connection that kills the backend */
    bool exec_after; /* run a statement after the kill (must not reconnect mid-transaction) */
    int calls;       /* times the callback ran (1: never retried) */
    int after_rc;    /* result of the first statement after the kill */
} lost_t;

static int lose_fn(hm_db_t *db, void *arg)
{
    lost_t *l = arg;
    const char *p[2] = {"doomed", "1"};
    int rc;

    l->calls++;
    rc = hm_db_exec(db, &st_add, p, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    kill_backend(l->t, db);
    if (l->exec_after) {
        l->after_rc = hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL);
        /* Swallowed on purpose: a second statement must not run on a fresh connection. */
        (void)hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL);
    }
    return 0;
}

static void test_tx_connection_lost(void **state)
{
    testpg_t *t = *state;
    hm_db_t *db;
    lost_t l = {.t = t};

    SKIP_WITHOUT_PG();
    db = open_db(t, 5000);
    create_things(db);

    /* Lost before COMMIT could be confirmed: unknown outcome, HM_EUNAVAIL, never retried. */
    assert_int_equal(hm_db_tx(db, lose_fn, &l, HM_DB_SERIALIZABLE), HM_EUNAVAIL);
    assert_int_equal(l.calls, 1);
    assert_int_equal(stats(db).tx_retries, 0);
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 0);

    /* Lost in the middle: later statements of the transaction fail instead of reconnecting. */
    l = (lost_t){.t = t, .exec_after = true};
    assert_int_equal(hm_db_tx(db, lose_fn, &l, HM_DB_READ_COMMITTED), HM_EUNAVAIL);
    assert_int_equal(l.after_rc, HM_EUNAVAIL);
    assert_int_equal(stats(db).connects, 2); /* only the reconnect for this transaction */
    assert_int_equal(testpg_value(t, "SELECT count(*) FROM things"), 0);

    /* The next call reconnects. */
    assert_int_equal(hm_db_exec(db, &st_count, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(stats(db).connects, 3);
    hm_db_destroy(db);
}

static void test_backoff(void **state)
{
    hm_db_t *db;
    hm_db_stats_t st;
    char conninfo[512];
    int64_t t0;

    (void)state;
    SKIP_WITHOUT_PG();
    /* A socket directory where nothing listens: each attempt fails at once. */
    snprintf(conninfo, sizeof conninfo, "host=/nonexistent/hm-test port=1 user=postgres");
    db = hm_db_create(conninfo, 1000);
    assert_non_null(db);
    assert_int_equal(hm_db_ping(db), HM_EUNAVAIL);
    assert_true(hm_db_last_message(db)[0] != '\0');
    assert_int_equal(stats(db).connect_failures, 1);

    /* While backing off, calls fail fast without trying. */
    t0 = now_ms();
    for (int i = 0; i < 100; i++)
        assert_int_equal(hm_db_exec_sql(db, "SELECT 1", NULL), HM_EUNAVAIL);
    assert_true(now_ms() - t0 < 50);
    st = stats(db);
    assert_int_equal(st.connect_failures, 1);
    assert_int_equal(st.errors, 101);

    /* After the pause (<= 100 ms at first) it tries again, then waits longer (<= 200 ms). */
    sleep_ms(120);
    assert_int_equal(hm_db_ping(db), HM_EUNAVAIL);
    assert_int_equal(stats(db).connect_failures, 2);
    sleep_ms(30);
    assert_int_equal(hm_db_ping(db), HM_EUNAVAIL);
    assert_int_equal(stats(db).connect_failures, 2);
    sleep_ms(200);
    assert_int_equal(hm_db_ping(db), HM_EUNAVAIL);
    assert_int_equal(stats(db).connect_failures, 3);
    assert_int_equal(stats(db).connects, 0);
    hm_db_destroy(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_sqlstate),
        cmocka_unit_test(test_create_bad_conninfo),
        cmocka_unit_test_setup(test_exec_and_helpers, setup),
        cmocka_unit_test_setup(test_sqlstate_mapping, setup),
        cmocka_unit_test_setup(test_statement_timeout, setup),
        cmocka_unit_test_setup(test_deadline, setup),
        cmocka_unit_test_setup(test_timeout_round_trips, setup),
        cmocka_unit_test_setup(test_tx_commit_rollback, setup),
        cmocka_unit_test_setup(test_tx_serialization_retry, setup),
        cmocka_unit_test_setup(test_reconnect_after_terminate, setup),
        cmocka_unit_test_setup(test_tx_connection_lost, setup),
        cmocka_unit_test(test_backoff),
    };
    hm_log_level_t level;
    int failed;

    /* Everything is logged (so logging paths run under the sanitizers too); lower it with
     * HM_TEST_LOG_LEVEL=error when reading the output by hand. */
    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_db", level);
    failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    if (failed == 0 && !testpg_available()) {
        fprintf(stderr, "test_db: HM_TEST_PG_HOST not set: skipped\n");
        return 77;
    }
    return failed;
}
