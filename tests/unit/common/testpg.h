/*
 * testpg.h - a private Postgres database per test, for the integration tests of libhm.
 *
 * Reads HM_TEST_PG_HOST (socket directory or host), HM_TEST_PG_PORT and HM_TEST_PG_USER
 * (default "postgres"). A test program creates its private database hm_t_<pid>_<n>_<random>
 * once (testpg_setup, as cmocka group setup) and drops it at the end (testpg_teardown), so
 * programs can run in parallel against one server; between tests, testpg_reset() gives the
 * next test an empty schema (cheaper than a database per test: CREATE/DROP DATABASE
 * checkpoint).
 */
#ifndef HM_TESTPG_H
#define HM_TESTPG_H

#include <stdbool.h>

#include <libpq-fe.h>

typedef struct testpg {
    char dbname[64];    /* the private database */
    char conninfo[512]; /* libpq conninfo of the private database */
    PGconn *side;       /* own connection to it, for work behind the tested handle's back */
} testpg_t;

/* True when HM_TEST_PG_HOST is set (else the tests skip). */
bool testpg_available(void);

/* Creates the private database and opens `side`; aborts the test program on failure. */
void testpg_setup(testpg_t *t);

/*
 * Empties the database for the next test: ends every other session on it (a failed test may
 * leave connections and their advisory locks behind) and recreates the public schema.
 */
void testpg_reset(testpg_t *t);

/* Closes `side` and drops the database, disconnecting whoever is still connected. */
void testpg_teardown(testpg_t *t);

/* Conninfo of the server's maintenance database "postgres" (static buffer). */
const char *testpg_admin_conninfo(void);

/* Runs SQL on `side` and returns the result; aborts when it fails. The caller PQclear()s. */
PGresult *testpg_query(testpg_t *t, const char *sql);

/* Runs SQL on `side` and returns the first value as a long (0 for no rows or NULL). */
long testpg_value(testpg_t *t, const char *sql);

#endif
