/*
 * migrate.c - applies, rolls back and reports the schema migrations embedded in a daemon
 * (hm/migrate.h), under a per-service advisory lock, one transaction per migration.
 *
 * The lock is a session lock held on the handle's connection across the migrations; if that
 * connection is lost the lock is gone with it, so the run stops (HM_EUNAVAIL) instead of
 * carrying on unlocked on a new connection.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/err.h"
#include "hm/log.h"
#include "hm/migrate.h"

#define CREATE_TABLE_SQL                                                                           \
    "CREATE TABLE IF NOT EXISTS hm_schema_migrations ("                                            \
    "version int PRIMARY KEY, "                                                                    \
    "name text NOT NULL, "                                                                         \
    "checksum text NOT NULL, "                                                                     \
    "applied_at timestamptz NOT NULL DEFAULT now())"

static const hm_stmt_t st_lock = {"hm_migrate_lock",
                                  "SELECT pg_advisory_lock(hashtext('hm_migrate:' || $1))", 1};
static const hm_stmt_t st_unlock = {"hm_migrate_unlock",
                                    "SELECT pg_advisory_unlock(hashtext('hm_migrate:' || $1))", 1};
static const hm_stmt_t st_exists = {"hm_migrate_exists",
                                    "SELECT to_regclass('hm_schema_migrations') IS NOT NULL", 0};
static const hm_stmt_t st_list = {
    "hm_migrate_list",
    "SELECT version, name, checksum, "
    "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "FROM hm_schema_migrations ORDER BY version",
    0};
static const hm_stmt_t st_record = {
    "hm_migrate_record",
    "INSERT INTO hm_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", 3};
static const hm_stmt_t st_forget = {"hm_migrate_forget",
                                    "DELETE FROM hm_schema_migrations WHERE version = $1", 1};

/* One run's state: the handle's settings to restore and the connection the lock lives on. */
typedef struct run {
    hm_db_t *db;
    const char *service;
    int64_t saved_ceiling_ms; /* statement_timeout ceiling to restore */
    uint64_t conn_id;         /* hm_db_stats().connects when the lock was taken */
    bool locked;
    char *err;
    size_t errlen;
} run_t;

/* What a transaction callback applies or undoes. */
typedef struct step {
    const hm_migration_t *m;
    bool down;
} step_t;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t conn_id(hm_db_t *db)
{
    hm_db_stats_t st;

    hm_db_stats(db, &st);
    return st.connects;
}

static int check_array(const hm_migration_t *migs, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const hm_migration_t *m = &migs[i];

        if (m->version != (int)i + 1 || m->name == NULL || m->up == NULL || m->down == NULL ||
            m->checksum == NULL || strlen(m->checksum) != 64) {
            snprintf(err, errlen, "migration table entry %zu is malformed", i + 1);
            return HM_EINVAL;
        }
    }
    return 0;
}

/* A db failure into err: "what: message (sqlstate X)". */
static int db_fail(run_t *r, int rc, const char *what)
{
    const char *state = hm_db_last_sqlstate(r->db), *msg = hm_db_last_message(r->db);

    if (msg[0] == '\0')
        msg = hm_strerror(rc);
    snprintf(r->err, r->errlen, "%s: %s%s%s%s", what, msg, state[0] ? " (sqlstate " : "", state,
             state[0] ? ")" : "");
    return rc;
}

static int start(run_t *r, hm_db_t *db, const char *service, char *err, size_t errlen)
{
    const char *params[1] = {service};
    int rc;

    memset(r, 0, sizeof *r);
    r->db = db;
    r->service = service;
    r->err = err;
    r->errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    /* Migrations may legitimately run long, and waiting for the lock may too. */
    r->saved_ceiling_ms = hm_db_set_statement_timeout(db, 0);
    hm_db_set_deadline(db, -1);
    rc = hm_db_exec(db, &st_lock, params, NULL, NULL, NULL);
    if (rc != 0)
        return db_fail(r, rc, "taking the migration lock");
    r->locked = true;
    r->conn_id = conn_id(db);
    return 0;
}

/* 0 while the connection holding the lock is the one we took it on. */
static int still_locked(run_t *r)
{
    if (conn_id(r->db) != r->conn_id) {
        snprintf(r->err, r->errlen, "connection lost during migration; the lock went with it");
        r->locked = false;
        return HM_EUNAVAIL;
    }
    return 0;
}

static void finish(run_t *r)
{
    const char *params[1] = {r->service};

    if (r->locked && conn_id(r->db) == r->conn_id &&
        hm_db_exec(r->db, &st_unlock, params, NULL, NULL, NULL) != 0)
        HM_WARN("migrate %s: releasing the migration lock failed", r->service);
    hm_db_set_statement_timeout(r->db, r->saved_ceiling_ms);
}

/* The applied rows (version, name, checksum, applied_at), or *res = NULL if no table. */
static int list_applied(run_t *r, PGresult **res)
{
    PGresult *ex;
    bool exists = false;
    int rc;

    *res = NULL;
    rc = hm_db_exec(r->db, &st_exists, NULL, NULL, NULL, &ex);
    if (rc != 0)
        return db_fail(r, rc, "looking for hm_schema_migrations");
    rc = hm_db_get_bool(ex, 0, 0, &exists);
    PQclear(ex);
    if (rc != 0 || !exists)
        return 0;
    rc = hm_db_exec(r->db, &st_list, NULL, NULL, NULL, res);
    if (rc != 0)
        return db_fail(r, rc, "reading hm_schema_migrations");
    return 0;
}

static int row_version(const PGresult *res, int row)
{
    int64_t v = 0;

    hm_db_get_int64(res, row, 0, &v);
    return (int)v;
}

static int step_fn(hm_db_t *db, void *arg)
{
    const step_t *s = arg;
    char v[16];
    int rc;

    snprintf(v, sizeof v, "%d", s->m->version);
    rc = hm_db_exec_sql(db, s->down ? s->m->down : s->m->up, NULL);
    if (rc != 0)
        return rc;
    if (s->down) {
        const char *params[1] = {v};

        return hm_db_exec(db, &st_forget, params, NULL, NULL, NULL);
    } else {
        const char *params[3] = {v, s->m->name, s->m->checksum};

        return hm_db_exec(db, &st_record, params, NULL, NULL, NULL);
    }
}

static int run_step(run_t *r, const hm_migration_t *m, bool down)
{
    step_t s = {m, down};
    int64_t t0 = now_ms();
    char what[128];
    int rc = still_locked(r);

    if (rc != 0)
        return rc;
    rc = hm_db_tx(r->db, step_fn, &s, HM_DB_READ_COMMITTED);
    if (rc != 0) {
        snprintf(what, sizeof what, "migration %d (%s) %s failed", m->version, m->name,
                 down ? "down" : "up");
        return db_fail(r, rc, what);
    }
    HM_INFO("migrate %s: %s %d (%s) in %lld ms", r->service, down ? "rolled back" : "applied",
            m->version, m->name, (long long)(now_ms() - t0));
    return still_locked(r);
}

int hm_migrate_up(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n, char *err,
                  size_t errlen)
{
    PGresult *res = NULL;
    bool *applied = NULL;
    int newest = 0, first_pending = 0, applied_now = 0;
    run_t r;
    int rc;

    rc = check_array(migs, n, err, errlen);
    if (rc != 0)
        return rc;
    rc = start(&r, db, service, err, errlen);
    if (rc != 0)
        goto out;
    rc = hm_db_exec_sql(db, CREATE_TABLE_SQL, NULL);
    if (rc != 0) {
        db_fail(&r, rc, "creating hm_schema_migrations");
        goto out;
    }
    rc = list_applied(&r, &res);
    if (rc != 0)
        goto out;

    applied = hm_xcalloc(n + 1, sizeof *applied);
    for (int i = 0; res != NULL && i < PQntuples(res); i++) {
        int v = row_version(res, i);
        const char *name = hm_db_get(res, i, 1), *sum = hm_db_get(res, i, 2);

        if (v > newest)
            newest = v;
        if (v < 1 || (size_t)v > n) {
            HM_WARN("migrate %s: the database has migration %d (%s), unknown to this binary; "
                    "leaving it (a newer release applied it)",
                    service, v, name != NULL ? name : "?");
            continue;
        }
        if (sum == NULL || strcmp(sum, migs[v - 1].checksum) != 0) {
            snprintf(err, errlen,
                     "migration %d (%s) was changed after it was applied: checksum mismatch "
                     "(restore the released file; changes go in a new migration)",
                     v, migs[v - 1].name);
            rc = HM_EPRECOND;
            goto out;
        }
        applied[v] = true;
    }
    for (size_t v = 1; v <= n && first_pending == 0; v++) {
        if (!applied[v])
            first_pending = (int)v;
    }
    if (first_pending != 0 && newest > first_pending) {
        snprintf(err, errlen, "migration %d (%s) is pending but the later migration %d is applied",
                 first_pending, migs[first_pending - 1].name, newest);
        rc = HM_EPRECOND;
        goto out;
    }
    for (size_t v = first_pending > 0 ? (size_t)first_pending : n + 1; v <= n; v++) {
        rc = run_step(&r, &migs[v - 1], false);
        if (rc != 0)
            goto out;
        applied_now++;
    }
    if (applied_now > 0)
        HM_INFO("migrate %s: schema at version %zu", service, n);
    else
        HM_DEBUG("migrate %s: schema up to date at version %d", service, newest);
out:
    free(applied);
    PQclear(res);
    finish(&r);
    return rc;
}

int hm_migrate_down(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n,
                    int target_version, char *err, size_t errlen)
{
    PGresult *res = NULL;
    run_t r;
    int rc;

    if (target_version < 0) {
        snprintf(err, errlen, "target version must be 0 or more");
        return HM_EINVAL;
    }
    rc = check_array(migs, n, err, errlen);
    if (rc != 0)
        return rc;
    rc = start(&r, db, service, err, errlen);
    if (rc == 0)
        rc = list_applied(&r, &res);
    if (rc != 0 || res == NULL)
        goto out;

    /* Check every migration to undo before undoing any. */
    for (int i = 0; i < PQntuples(res); i++) {
        int v = row_version(res, i);
        const char *sum = hm_db_get(res, i, 2);

        if (v <= target_version)
            continue;
        if (v < 1 || (size_t)v > n) {
            snprintf(err, errlen,
                     "cannot roll back migration %d: unknown to this binary (use the release "
                     "that applied it)",
                     v);
            rc = HM_EPRECOND;
            goto out;
        }
        if (sum == NULL || strcmp(sum, migs[v - 1].checksum) != 0) {
            snprintf(err, errlen,
                     "cannot roll back migration %d (%s): changed since it was applied "
                     "(checksum mismatch)",
                     v, migs[v - 1].name);
            rc = HM_EPRECOND;
            goto out;
        }
    }
    for (int i = PQntuples(res) - 1; i >= 0; i--) {
        int v = row_version(res, i);

        if (v <= target_version)
            break;
        rc = run_step(&r, &migs[v - 1], true);
        if (rc != 0)
            goto out;
    }
out:
    PQclear(res);
    finish(&r);
    return rc;
}

int hm_migrate_status(hm_db_t *db, const char *service, const hm_migration_t *migs, size_t n,
                      FILE *out)
{
    char err[256];
    PGresult *res = NULL;
    run_t r = {.db = db, .service = service, .err = err, .errlen = sizeof err};
    int rows, rc;

    rc = list_applied(&r, &res);
    if (rc != 0) {
        HM_ERROR("migrate %s: %s", service, err);
        return rc;
    }
    rows = res != NULL ? PQntuples(res) : 0;
    fprintf(out, "%-8s %-36s %-22s %s\n", "VERSION", "NAME", "APPLIED_AT", "STATE");
    for (size_t v = 1; v <= n; v++) {
        const hm_migration_t *m = &migs[v - 1];
        const char *state = "pending", *at = "-";

        for (int i = 0; i < rows; i++) {
            if (row_version(res, i) == (int)v) {
                const char *sum = hm_db_get(res, i, 2);

                state = sum != NULL && strcmp(sum, m->checksum) == 0 ? "applied" : "changed";
                at = hm_db_get(res, i, 3) != NULL ? hm_db_get(res, i, 3) : "-";
                break;
            }
        }
        fprintf(out, "%-8d %-36s %-22s %s\n", m->version, m->name, at, state);
    }
    for (int i = 0; i < rows; i++) {
        int v = row_version(res, i);
        const char *name = hm_db_get(res, i, 1), *at = hm_db_get(res, i, 3);

        if (v < 1 || (size_t)v > n)
            fprintf(out, "%-8d %-36s %-22s %s\n", v, name != NULL ? name : "?",
                    at != NULL ? at : "-", "unknown");
    }
    PQclear(res);
    return 0;
}
