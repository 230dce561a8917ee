/*
 * testpg.c - a private Postgres database per test (testpg.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testpg.h"

bool testpg_available(void)
{
    const char *h = getenv("HM_TEST_PG_HOST");

    return h != NULL && h[0] != '\0';
}

static void conninfo_for(char *buf, size_t cap, const char *dbname)
{
    const char *host = getenv("HM_TEST_PG_HOST");
    const char *port = getenv("HM_TEST_PG_PORT");
    const char *user = getenv("HM_TEST_PG_USER");

    snprintf(buf, cap, "host=%s port=%s user=%s dbname=%s", host,
             port != NULL && port[0] ? port : "5432", user != NULL && user[0] ? user : "postgres",
             dbname);
}

const char *testpg_admin_conninfo(void)
{
    static char buf[512];

    conninfo_for(buf, sizeof buf, "postgres");
    return buf;
}

static void admin_exec(const char *sql)
{
    PGconn *c = PQconnectdb(testpg_admin_conninfo());
    PGresult *r;

    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "testpg: cannot connect: %s", PQerrorMessage(c));
        abort();
    }
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "testpg: %s: %s", sql, PQerrorMessage(c));
        abort();
    }
    PQclear(r);
    PQfinish(c);
}

void testpg_setup(testpg_t *t)
{
    static unsigned seq;
    struct timespec ts;
    char sql[128];

    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(t->dbname, sizeof t->dbname, "hm_t_%ld_%u_%ld", (long)getpid(), seq++,
             ts.tv_nsec % 100000);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", t->dbname);
    admin_exec(sql);
    conninfo_for(t->conninfo, sizeof t->conninfo, t->dbname);
    t->side = PQconnectdb(t->conninfo);
    if (PQstatus(t->side) != CONNECTION_OK) {
        fprintf(stderr, "testpg: cannot connect to %s: %s", t->dbname, PQerrorMessage(t->side));
        abort();
    }
    PQclear(PQexec(t->side, "SET client_min_messages = warning"));
}

void testpg_reset(testpg_t *t)
{
    PQclear(testpg_query(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"));
    PQclear(testpg_query(t, "SELECT pg_advisory_unlock_all()"));
    PQclear(testpg_query(t, "DROP SCHEMA public CASCADE"));
    PQclear(testpg_query(t, "CREATE SCHEMA public"));
}

void testpg_teardown(testpg_t *t)
{
    char sql[128];

    PQfinish(t->side);
    t->side = NULL;
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", t->dbname);
    admin_exec(sql);
}

PGresult *testpg_query(testpg_t *t, const char *sql)
{
    PGresult *r = PQexec(t->side, sql);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "testpg: %s: %s", sql, PQerrorMessage(t->side));
        abort();
    }
    return r;
}

long testpg_value(testpg_t *t, const char *sql)
{
    PGresult *r = testpg_query(t, sql);
    long v = 0;

    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}
