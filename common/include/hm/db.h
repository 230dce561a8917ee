/*
 * hm/db.h - Postgres access for handlers: one connection per worker thread, prepared
 * statements declared as static data, SQLSTATE mapped to HM_E* codes, the call's deadline
 * turned into statement_timeout, and transactions retried on serialization failures.
 *
 * An hm_db_t belongs to one thread (a worker, or a background job) and takes no locks; only
 * hm_db_stats() may be called from another thread. The connection is opened lazily and
 * reopened after it is lost; while reconnecting backs off (up to about 2 s), calls fail at
 * once with HM_EUNAVAIL instead of blocking the worker. SQL text and parameters are logged at
 * debug level only.
 */
#ifndef HM_DB_H
#define HM_DB_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "hm/arena.h"

typedef struct hm_db hm_db_t;

/*
 * A prepared statement, declared once as static data and shared by every worker:
 *
 *     static const hm_stmt_t get_guest = {
 *         "guest_get", "SELECT id, email FROM guests WHERE id = $1", 1};
 *
 * It is prepared on a connection the first time it is used there, and again after a
 * reconnect. `name` must be unique among the statements one hm_db_t runs (use a prefix per
 * store). Prefer explicit column lists to SELECT *: a plan cached before a migration changes
 * a table's columns fails with "cached plan must not change result type".
 */
typedef struct hm_stmt {
    const char *name; /* server-side statement name, unique per daemon */
    const char *sql;  /* with $1..$n placeholders */
    int nparams;      /* number of parameters the caller passes */
} hm_stmt_t;

/* Transaction isolation levels for hm_db_tx(). */
enum {
    HM_DB_READ_COMMITTED = 0,
    HM_DB_REPEATABLE_READ = 1,
    HM_DB_SERIALIZABLE = 2,
};

/* Serialization failures and deadlocks are retried this many times by hm_db_tx(). */
#define HM_DB_TX_RETRIES 5

/* Counters for metrics; monotonic except `connected`. */
typedef struct hm_db_stats {
    uint64_t queries;          /* statements sent to the server */
    uint64_t errors;           /* calls that failed, for any reason (fast fails included) */
    uint64_t connects;         /* connections established, the first one included */
    uint64_t reconnects;       /* connections established to replace a lost one */
    uint64_t connect_failures; /* connection attempts that failed */
    uint64_t tx_retries;       /* transactions run again after HM_ERETRY */
    uint64_t timeout_sets;     /* round trips spent on SET statement_timeout */
    uint64_t connected;        /* 1 while a connection is open, else 0 */
} hm_db_stats_t;

/*
 * Creates a handle for `conninfo` (a libpq keyword string or URI, copied; NULL or "" means
 * libpq's defaults from PGHOST and friends) without connecting. `statement_timeout_ms` is the
 * ceiling for every statement (<= 0: none). A connect_timeout of 3 s applies unless conninfo
 * sets one. Returns NULL, with a log line that does not echo the string (it may hold a
 * password), when conninfo does not parse.
 */
hm_db_t *hm_db_create(const char *conninfo, int64_t statement_timeout_ms);

/* Closes the connection and frees the handle. NULL is a no-op. */
void hm_db_destroy(hm_db_t *db);

/*
 * Changes the statement_timeout ceiling (<= 0: none) and returns the previous one. Used by
 * migrations and batch jobs that may legitimately run long.
 */
int64_t hm_db_set_statement_timeout(hm_db_t *db, int64_t ceiling_ms);

/*
 * Sets the time left to the current call (<0: no deadline); the runtime calls it before each
 * handler. Each statement then runs with statement_timeout = min(time left, ceiling); the
 * session's setting is changed (one extra round trip) only when the wanted value differs from
 * it by more than 20%. Once the time is up, calls fail with HM_ETIMEDOUT without touching the
 * database.
 */
void hm_db_set_deadline(hm_db_t *db, int64_t remaining_ms);

/*
 * Ends a call on this handle: clears the deadline and, should a handler have left a
 * transaction open (with hm_db_exec_sql("BEGIN")), rolls it back and logs an error. The
 * runtime calls it after each handler.
 */
void hm_db_end_call(hm_db_t *db);

/*
 * Runs a prepared statement. `params` holds stmt->nparams values (NULL = SQL NULL); `lengths`
 * and `formats` are NULL for all-text parameters, else as for PQexecPrepared (format 1 =
 * binary, with its length). Results are in text format.
 *
 * Returns 0 and, when `out` is not NULL, stores the result in *out: the caller owns it and
 * PQclear()s it. On failure *out is NULL and the return value is
 *   HM_EEXIST      unique (23505) or exclusion (23P01) violation
 *   HM_EPRECOND    foreign key violation (23503), or HM001 raised by a daemon's SQL function
 *                  for a failed precondition (its message is meant for the client)
 *   HM_EINVAL      not-null (23502) or check (23514) violation, bad data (22xxx)
 *   HM_ERETRY      serialization failure (40001) or deadlock (40P01): retry the transaction
 *   HM_ETIMEDOUT   the deadline passed, or the statement hit statement_timeout (57014)
 *   HM_EUNAVAIL    no connection (or backing off), connection lost, server shutting down
 *                  or out of resources (08xxx, 57P01..03, 53xxx); the connection is dropped
 *                  and the next call reconnects
 *   HM_EINTERNAL   anything else (a bug: bad SQL, wrong parameter count, ...)
 * See hm_db_last_sqlstate() and friends for the details.
 */
int hm_db_exec(hm_db_t *db, const hm_stmt_t *stmt, const char *const *params, const int *lengths,
               const int *formats, PGresult **out);

/* hm_db_exec(), with the result (when `out` is not NULL) freed by the arena's next reset. */
int hm_db_exec_arena(hm_db_t *db, hm_arena_t *arena, const hm_stmt_t *stmt,
                     const char *const *params, const int *lengths, const int *formats,
                     PGresult **out);

/*
 * Runs unparameterized SQL with the simple query protocol (several statements allowed: the
 * result is the last one's). For utility SQL and migrations only; never build SQL from input.
 * Same errors and ownership of *out as hm_db_exec().
 */
int hm_db_exec_sql(hm_db_t *db, const char *sql, PGresult **out);

/*
 * Shutdown: cancels the statement running on the handle (PQcancel) and makes every later
 * call fail at once with HM_EUNAVAIL. The one function callable from a thread other than the
 * handle's owner (the runtime calls it when the shutdown grace period is over).
 */
void hm_db_abort(hm_db_t *db);

/* SELECT 1: 0, or the error the connection would give a call. */
int hm_db_ping(hm_db_t *db);

/*
 * Runs fn in one transaction: BEGIN ISOLATION LEVEL <isolation>, fn(db, arg), COMMIT. When fn
 * returns non-zero, or its transaction is found aborted, the transaction is rolled back. On
 * HM_ERETRY (from a statement or from COMMIT) the whole transaction, fn included, runs again
 * after a short jittered pause, at most HM_DB_TX_RETRIES more times; so fn must return the
 * HM_E* code of a failed statement unchanged and must not have effects outside the database
 * it cannot repeat.
 *
 * Returns 0 when committed, else fn's error or the statement's. If the connection is lost
 * after COMMIT was sent, the outcome is unknown (the transaction may have committed): that
 * returns HM_EUNAVAIL and is never retried. Returns HM_EINVAL for an unknown isolation level
 * or when called inside another hm_db_tx() on the same handle (no nesting).
 */
int hm_db_tx(hm_db_t *db, int (*fn)(hm_db_t *db, void *arg), void *arg, int isolation);

/*
 * The last failed call's SQLSTATE ("23505"), constraint name (PG_DIAG_CONSTRAINT_NAME) and
 * primary message; "" when not known. Valid until the next call on the handle. The message
 * may quote input values: never log it above debug level, never return it to clients as is.
 */
const char *hm_db_last_sqlstate(const hm_db_t *db);
const char *hm_db_last_constraint(const hm_db_t *db);
const char *hm_db_last_message(const hm_db_t *db);

/* The HM_E* code for a SQLSTATE (see hm_db_exec); HM_EINTERNAL for NULL or unknown ones. */
int hm_db_map_sqlstate(const char *sqlstate);

/* Snapshot of the counters; callable from any thread. */
void hm_db_stats(const hm_db_t *db, hm_db_stats_t *out);

/* A text-format value, or NULL for SQL NULL or a row/column out of range. Owned by res. */
const char *hm_db_get(const PGresult *res, int row, int col);

/*
 * A value parsed as int64 ("-42") or bool ("t"/"f", as Postgres prints booleans). 0,
 * HM_ENOTFOUND for SQL NULL (or out of range), HM_EINVAL when the text is not one.
 */
int hm_db_get_int64(const PGresult *res, int row, int col, int64_t *out);
int hm_db_get_bool(const PGresult *res, int row, int col, bool *out);

/*
 * A bytea value decoded into the arena (*out, *len; binary-format columns are copied as they
 * are). 0, HM_ENOTFOUND for SQL NULL (or out of range), HM_EINVAL for a malformed encoding.
 */
int hm_db_get_bytea(const PGresult *res, int row, int col, hm_arena_t *arena, unsigned char **out,
                    size_t *len);

/* Text parameters for integers and booleans, allocated in the arena. */
const char *hm_db_param_int64(hm_arena_t *arena, int64_t v);
const char *hm_db_param_bool(bool v);

#endif
