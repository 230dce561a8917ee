/*
 * db.c - Postgres access (hm/db.h): one libpq connection per worker thread, lazy connect with
 * backoff, statements prepared per connection on first use, SQLSTATE -> HM_E* mapping, the
 * call's deadline as statement_timeout, and transactions with serialization retries.
 *
 * Nothing here is shared between threads except the counters, which are atomics so the
 * metrics endpoint can read them while the owning worker updates them.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/db.h"
#include "hm/err.h"
#include "hm/log.h"

/* First pause after a failed connection attempt, doubled per failure up to the cap. */
#define DB_BACKOFF_MIN_MS 100
#define DB_BACKOFF_MAX_MS 2000
/* Pause before retry n of a transaction: jittered in [base/2, base], base = MIN << n. */
#define DB_TX_PAUSE_MIN_MS 2
/* The session's statement_timeout is kept while within this fraction (1/5) of the wanted. */
#define DB_TIMEOUT_SLACK_DIV 5

/* Set of the statements prepared on the current connection, by address (open addressing). */
typedef struct stmt_set {
    const hm_stmt_t **slots; /* NULL = free slot; array owned by the set */
    size_t cap;              /* 0 or a power of two, kept at most half full */
    size_t count;
} stmt_set_t;

struct hm_db {
    char *conninfo;              /* owned copy; may hold a password: never logged */
    PGconn *conn;                /* owned; NULL while disconnected */
    stmt_set_t prepared;         /* statements prepared on `conn`; emptied when it closes */
    int64_t ceiling_ms;          /* statement_timeout ceiling; <= 0 = none */
    int64_t deadline_ms;         /* monotonic ms when the call's time is up; -1 = no deadline */
    int64_t session_timeout_ms;  /* statement_timeout the session has now; -1 = unknown */
    int64_t retry_at_ms;         /* monotonic ms before which no connection is attempted */
    int64_t backoff_ms;          /* last pause after a failed attempt; 0 once connected */
    uint64_t rng;                /* xorshift64 state for jitter; never 0 */
    bool in_tx;                  /* inside hm_db_tx()'s callback */
    bool tx_lost;                /* connection lost inside hm_db_tx(): no reconnect until it ends */
    bool ever_connected;         /* a connection was established once (reconnect counting) */
    unsigned failed_attempts;    /* connection attempts failed in a row (logging) */
    char sqlstate[6];            /* last failed call's SQLSTATE, "" when not from the server */
    char constraint[64];         /* last failed call's constraint name (NAMEDATALEN), or "" */
    char message[256];           /* last failed call's primary message, or "" */
    pthread_mutex_t cancel_lock; /* guards `cancel`: hm_db_abort() runs on another thread */
    PGcancel *cancel;            /* cancel handle of `conn` (PQgetCancel); NULL when closed */
    atomic_bool aborted;         /* hm_db_abort() was called: every call fails from now on */
    struct {                     /* written by the owning thread, read by any (relaxed) */
        _Atomic uint64_t queries, errors, connects, reconnects, connect_failures, tx_retries,
            timeout_sets, connected;
    } st;
};

#define STAT_INC(db, f) atomic_fetch_add_explicit(&(db)->st.f, 1, memory_order_relaxed)

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A value in [base/2, base]. */
static int64_t jitter(hm_db_t *db, int64_t base)
{
    uint64_t x = db->rng;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    db->rng = x;
    if (base < 2)
        return base;
    return base / 2 + (int64_t)(x % (uint64_t)(base / 2 + 1));
}

/* ---- the set of prepared statements ---- */

static size_t stmt_hash(const hm_stmt_t *s, size_t cap)
{
    uintptr_t h = (uintptr_t)s;

    h ^= h >> 17;
    h *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 7) & (cap - 1);
}

static bool set_has(const stmt_set_t *set, const hm_stmt_t *s)
{
    if (set->cap == 0)
        return false;
    for (size_t i = stmt_hash(s, set->cap);; i = (i + 1) & (set->cap - 1)) {
        if (set->slots[i] == s)
            return true;
        if (set->slots[i] == NULL)
            return false;
    }
}

static void set_add(stmt_set_t *set, const hm_stmt_t *s)
{
    if ((set->count + 1) * 2 > set->cap) {
        stmt_set_t big = {.cap = set->cap ? set->cap * 2 : 32};

        big.slots = hm_xcalloc(big.cap, sizeof *big.slots);
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i] != NULL)
                set_add(&big, set->slots[i]);
        }
        free(set->slots);
        *set = big;
    }
    size_t i = stmt_hash(s, set->cap);

    while (set->slots[i] != NULL && set->slots[i] != s)
        i = (i + 1) & (set->cap - 1);
    if (set->slots[i] == NULL) {
        set->slots[i] = s;
        set->count++;
    }
}

static void set_clear(stmt_set_t *set)
{
    if (set->cap > 0)
        memset(set->slots, 0, set->cap * sizeof *set->slots);
    set->count = 0;
}

/* ---- errors ---- */

static void clear_err(hm_db_t *db)
{
    db->sqlstate[0] = '\0';
    db->constraint[0] = '\0';
    db->message[0] = '\0';
}

/* Copies a message on one line: libpq's multi-line texts joined, trailing space dropped. */
static void set_message(hm_db_t *db, const char *msg)
{
    size_t n = 0;
    bool space = false;

    for (const char *p = msg != NULL ? msg : ""; *p != '\0' && n + 1 < sizeof db->message; p++) {
        if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < sizeof db->message)
            db->message[n++] = ' ';
        space = false;
        db->message[n++] = *p;
    }
    db->message[n] = '\0';
}

int hm_db_map_sqlstate(const char *s)
{
    if (s == NULL || strlen(s) != 5)
        return HM_EINTERNAL;
    if (strcmp(s, "23505") == 0 || strcmp(s, "23P01") == 0)
        return HM_EEXIST;
    /* HM001: a daemon's SQL function refusing a request whose precondition fails (RAISE ...
     * USING ERRCODE = 'HM001', e.g. a redemption beyond the balance). */
    if (strcmp(s, "23503") == 0 || strcmp(s, "HM001") == 0)
        return HM_EPRECOND;
    /* HM002: a daemon's SQL function refusing a change based on a stale version (ABORTED). */
    if (strcmp(s, "HM002") == 0)
        return HM_ECONFLICT;
    if (strcmp(s, "23502") == 0 || strcmp(s, "23514") == 0 || strncmp(s, "22", 2) == 0)
        return HM_EINVAL;
    if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
        return HM_ERETRY;
    if (strcmp(s, "57014") == 0)
        return HM_ETIMEDOUT;
    /* 08P01 also reports a wrong parameter count: our bug, and the connection is fine. */
    if (strcmp(s, "08P01") == 0)
        return HM_EINTERNAL;
    if (strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 ||
        strcmp(s, "57P03") == 0 || strncmp(s, "53", 2) == 0)
        return HM_EUNAVAIL;
    return HM_EINTERNAL;
}

/* Closes the connection; the next call reconnects (or, inside hm_db_tx, fails). */
static void drop_conn(hm_db_t *db)
{
    if (db->conn == NULL)
        return;
    pthread_mutex_lock(&db->cancel_lock);
    PQfreeCancel(db->cancel);
    db->cancel = NULL;
    pthread_mutex_unlock(&db->cancel_lock);
    PQfinish(db->conn);
    db->conn = NULL;
    set_clear(&db->prepared);
    db->session_timeout_ms = -1;
    if (db->in_tx)
        db->tx_lost = true;
    atomic_store_explicit(&db->st.connected, 0, memory_order_relaxed);
}

/* A failure that never reached the server (deadline, backoff). */
static int fail_fast(hm_db_t *db, int rc, const char *msg)
{
    clear_err(db);
    set_message(db, msg);
    STAT_INC(db, errors);
    return rc;
}

/*
 * Records a failed result (res may be NULL), maps it, drops the connection when it is gone or
 * unusable, logs at a level that matches whose fault it is, and returns the HM_E* code.
 */
static int result_error(hm_db_t *db, const PGresult *res, const char *what)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *cons = res != NULL ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    const char *msg = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    int rc;

    snprintf(db->sqlstate, sizeof db->sqlstate, "%s", state != NULL ? state : "");
    snprintf(db->constraint, sizeof db->constraint, "%s", cons != NULL ? cons : "");
    if (msg == NULL && res != NULL)
        msg = PQresultErrorMessage(res);
    if ((msg == NULL || msg[0] == '\0') && db->conn != NULL)
        msg = PQerrorMessage(db->conn);
    set_message(db, msg);
    STAT_INC(db, errors);

    rc = state != NULL ? hm_db_map_sqlstate(state) : HM_EINTERNAL;
    if (db->conn == NULL || PQstatus(db->conn) == CONNECTION_BAD)
        rc = HM_EUNAVAIL;

    switch (rc) {
    case HM_EUNAVAIL:
        HM_WARN("postgres: %s failed, dropping the connection: %s%s%s", what, db->message,
                db->sqlstate[0] ? " sqlstate " : "", db->sqlstate);
        drop_conn(db);
        break;
    case HM_ETIMEDOUT:
        HM_WARN("postgres: %s timed out", what);
        break;
    case HM_EINTERNAL:
        HM_ERROR("postgres: %s failed: sqlstate %s: %s", what,
                 db->sqlstate[0] ? db->sqlstate : "none", db->message);
        break;
    default: /* the request's fault, reported to the client: not worth more than debug */
        HM_DEBUG("postgres: %s failed: sqlstate %s constraint %s: %s", what, db->sqlstate,
                 db->constraint[0] ? db->constraint : "-", db->message);
        break;
    }
    return rc;
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);

    return res != NULL &&
           (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY);
}

/* ---- connections ---- */

/* Postgres NOTICE/WARNING messages go to our log instead of libpq's stderr default. */
static void on_notice(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    (void)arg;
    if (sev != NULL && strcmp(sev, "WARNING") == 0)
        HM_WARN("postgres: %s", msg != NULL ? msg : "warning");
    else
        HM_DEBUG("postgres: %s", msg != NULL ? msg : "notice");
}

static int db_connect(hm_db_t *db)
{
    /* connect_timeout comes before the expanded conninfo so that conninfo can override it. */
    static const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *vals[] = {"3", db->conninfo, NULL};
    int64_t now;
    PGconn *c;

    if (db->conn != NULL)
        return 0;
    if (db->tx_lost)
        return fail_fast(db, HM_EUNAVAIL, "connection lost inside the transaction");
    now = now_ms();
    if (now < db->retry_at_ms)
        return fail_fast(db, HM_EUNAVAIL, "postgres unavailable (reconnect backing off)");

    c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        clear_err(db);
        set_message(db, c != NULL ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        db->backoff_ms = db->backoff_ms == 0 ? DB_BACKOFF_MIN_MS : db->backoff_ms * 2;
        if (db->backoff_ms > DB_BACKOFF_MAX_MS)
            db->backoff_ms = DB_BACKOFF_MAX_MS;
        db->retry_at_ms = now_ms() + jitter(db, db->backoff_ms);
        STAT_INC(db, connect_failures);
        STAT_INC(db, errors);
        if (db->failed_attempts++ == 0)
            HM_WARN("postgres: connection failed: %s", db->message);
        else
            HM_DEBUG("postgres: connection attempt %u failed: %s", db->failed_attempts,
                     db->message);
        return HM_EUNAVAIL;
    }
    PQsetNoticeReceiver(c, on_notice, db);
    PGcancel *cancel = PQgetCancel(c);
    pthread_mutex_lock(&db->cancel_lock);
    db->cancel = cancel;
    pthread_mutex_unlock(&db->cancel_lock);
    db->conn = c;
    db->session_timeout_ms = -1;
    set_clear(&db->prepared);
    db->backoff_ms = 0;
    db->retry_at_ms = 0;
    STAT_INC(db, connects);
    if (db->ever_connected)
        STAT_INC(db, reconnects);
    atomic_store_explicit(&db->st.connected, 1, memory_order_relaxed);
    if (db->failed_attempts > 0)
        HM_INFO("postgres: connected after %u failed attempts", db->failed_attempts);
    else if (db->ever_connected)
        HM_INFO("postgres: reconnected");
    db->ever_connected = true;
    db->failed_attempts = 0;
    return 0;
}

/* statement_timeout wanted now: min(time left, ceiling); 0 = none. */
static int64_t wanted_timeout(const hm_db_t *db, int64_t now)
{
    int64_t eff = db->ceiling_ms > 0 ? db->ceiling_ms : 0;

    if (db->deadline_ms >= 0) {
        int64_t left = db->deadline_ms - now;

        if (left < 1)
            left = 1;
        if (eff == 0 || left < eff)
            eff = left;
    }
    return eff;
}

static bool timeout_close_enough(int64_t cur, int64_t want)
{
    int64_t diff;

    if (cur < 0)
        return false;
    if (cur == want)
        return true;
    if (cur == 0 || want == 0)
        return false;
    diff = cur > want ? cur - want : want - cur;
    return diff * DB_TIMEOUT_SLACK_DIV <= cur;
}

/* Everything before a statement: deadline, connection, statement_timeout. */
static int begin_call(hm_db_t *db)
{
    int64_t now = now_ms(), want;
    char sql[64];
    PGresult *res;
    int rc;

    clear_err(db);
    if (atomic_load(&db->aborted))
        return fail_fast(db, HM_EUNAVAIL, "shutting down");
    if (db->deadline_ms >= 0 && now >= db->deadline_ms)
        return fail_fast(db, HM_ETIMEDOUT, "deadline exceeded");
    rc = db_connect(db);
    if (rc != 0)
        return rc;

    now = now_ms(); /* connecting may have taken a while */
    if (db->deadline_ms >= 0 && now >= db->deadline_ms)
        return fail_fast(db, HM_ETIMEDOUT, "deadline exceeded");
    want = wanted_timeout(db, now);
    if (timeout_close_enough(db->session_timeout_ms, want))
        return 0;
    snprintf(sql, sizeof sql, "SET statement_timeout = %" PRId64, want);
    res = PQexec(db->conn, sql);
    STAT_INC(db, queries);
    STAT_INC(db, timeout_sets);
    if (!result_ok(res)) {
        rc = result_error(db, res, "set statement_timeout");
        PQclear(res);
        return rc;
    }
    PQclear(res);
    db->session_timeout_ms = want;
    return 0;
}

/* After a successful result: a ROLLBACK undid any SET made in its transaction. */
static void note_result(hm_db_t *db, PGresult *res)
{
    if (strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
        db->session_timeout_ms = -1;
}

static int ensure_prepared(hm_db_t *db, const hm_stmt_t *stmt)
{
    PGresult *res;
    int rc;

    if (set_has(&db->prepared, stmt))
        return 0;
    res = PQprepare(db->conn, stmt->name, stmt->sql, stmt->nparams, NULL);
    STAT_INC(db, queries);
    if (!result_ok(res)) {
        rc = result_error(db, res, stmt->name);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    HM_DEBUG("postgres: prepared %s: %s", stmt->name, stmt->sql);
    set_add(&db->prepared, stmt);
    return 0;
}

/* ---- public API ---- */

hm_db_t *hm_db_create(const char *conninfo, int64_t statement_timeout_ms)
{
    char *perr = NULL;
    PQconninfoOption *opts;
    hm_db_t *db;

    if (conninfo == NULL)
        conninfo = ""; /* libpq's defaults (PGHOST, ...) */
    opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        /* perr may quote part of the string, password included: not logged. */
        PQfreemem(perr);
        HM_ERROR("postgres: the connection string does not parse");
        return NULL;
    }
    PQconninfoFree(opts);

    db = hm_xcalloc(1, sizeof *db);
    pthread_mutex_init(&db->cancel_lock, NULL);
    db->conninfo = hm_xstrdup(conninfo);
    db->ceiling_ms = statement_timeout_ms > 0 ? statement_timeout_ms : 0;
    db->deadline_ms = -1;
    db->session_timeout_ms = -1;
    db->rng = ((uint64_t)(uintptr_t)db ^ (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull) | 1;
    return db;
}

void hm_db_destroy(hm_db_t *db)
{
    if (db == NULL)
        return;
    db->in_tx = false;
    drop_conn(db);
    pthread_mutex_destroy(&db->cancel_lock);
    free(db->prepared.slots);
    free(db->conninfo);
    free(db);
}

int64_t hm_db_set_statement_timeout(hm_db_t *db, int64_t ceiling_ms)
{
    int64_t old = db->ceiling_ms;

    db->ceiling_ms = ceiling_ms > 0 ? ceiling_ms : 0;
    return old;
}

void hm_db_set_deadline(hm_db_t *db, int64_t remaining_ms)
{
    db->deadline_ms = remaining_ms < 0 ? -1 : now_ms() + remaining_ms;
}

/* Ends an open transaction with ROLLBACK; drops the connection if even that fails. */
static void rollback_if_open(hm_db_t *db)
{
    PGTransactionStatusType ts;
    PGresult *res;

    if (db->conn == NULL)
        return;
    ts = PQtransactionStatus(db->conn);
    if (ts == PQTRANS_IDLE)
        return;
    if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR) {
        drop_conn(db);
        return;
    }
    res = PQexec(db->conn, "ROLLBACK");
    STAT_INC(db, queries);
    if (!result_ok(res)) {
        HM_WARN("postgres: rollback failed, dropping the connection");
        drop_conn(db);
    }
    PQclear(res);
    db->session_timeout_ms = -1;
}

void hm_db_end_call(hm_db_t *db)
{
    db->deadline_ms = -1;
    if (db->conn != NULL && PQtransactionStatus(db->conn) != PQTRANS_IDLE) {
        HM_ERROR("postgres: a transaction was left open by the call; rolling it back");
        rollback_if_open(db);
    }
}

int hm_db_exec(hm_db_t *db, const hm_stmt_t *stmt, const char *const *params, const int *lengths,
               const int *formats, PGresult **out)
{
    PGresult *res;
    int rc;

    if (out != NULL)
        *out = NULL;
    rc = begin_call(db);
    if (rc == 0)
        rc = ensure_prepared(db, stmt);
    if (rc != 0)
        return rc;
    for (int attempt = 0;; attempt++) {
        const char *state;

        res = PQexecPrepared(db->conn, stmt->name, stmt->nparams, params, lengths, formats, 0);
        STAT_INC(db, queries);
        if (result_ok(res))
            break;
        state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        /* The server forgot the statement (DISCARD ALL, a pooler): prepare it again, once. */
        if (attempt == 0 && state != NULL && strcmp(state, "26000") == 0 &&
            PQtransactionStatus(db->conn) == PQTRANS_IDLE) {
            PQclear(res);
            set_clear(&db->prepared);
            rc = ensure_prepared(db, stmt);
            if (rc != 0)
                return rc;
            continue;
        }
        rc = result_error(db, res, stmt->name);
        PQclear(res);
        return rc;
    }
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return 0;
}

static void clear_result(void *res)
{
    PQclear(res);
}

int hm_db_exec_arena(hm_db_t *db, hm_arena_t *arena, const hm_stmt_t *stmt,
                     const char *const *params, const int *lengths, const int *formats,
                     PGresult **out)
{
    int rc = hm_db_exec(db, stmt, params, lengths, formats, out);

    if (rc == 0 && out != NULL)
        hm_arena_defer(arena, clear_result, *out);
    return rc;
}

int hm_db_exec_sql(hm_db_t *db, const char *sql, PGresult **out)
{
    PGresult *res;
    int rc;

    if (out != NULL)
        *out = NULL;
    rc = begin_call(db);
    if (rc != 0)
        return rc;
    res = PQexec(db->conn, sql);
    STAT_INC(db, queries);
    if (!result_ok(res)) {
        rc = result_error(db, res, "sql");
        PQclear(res);
        return rc;
    }
    note_result(db, res);
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return 0;
}

int hm_db_ping(hm_db_t *db)
{
    return hm_db_exec_sql(db, "SELECT 1", NULL);
}

/* COMMIT; a connection lost on the way makes the outcome unknown (HM_EUNAVAIL). */
static int commit(hm_db_t *db)
{
    PGresult *res;
    int rc;

    clear_err(db);
    if (db->deadline_ms >= 0 && now_ms() >= db->deadline_ms)
        return fail_fast(db, HM_ETIMEDOUT, "deadline exceeded before commit");
    res = PQexec(db->conn, "COMMIT");
    STAT_INC(db, queries);
    if (result_ok(res) && strcmp(PQcmdStatus(res), "COMMIT") == 0) {
        PQclear(res);
        return 0;
    }
    if (result_ok(res)) { /* "ROLLBACK": the transaction had failed */
        PQclear(res);
        db->session_timeout_ms = -1;
        return fail_fast(db, HM_EINTERNAL, "transaction was aborted; commit rolled back");
    }
    rc = result_error(db, res, "commit");
    PQclear(res);
    if (rc == HM_EUNAVAIL && db->conn == NULL)
        HM_WARN("postgres: connection lost during commit: the transaction may have committed");
    return rc;
}

static int tx_once(hm_db_t *db, int (*fn)(hm_db_t *, void *), void *arg, const char *begin)
{
    int rc;

    if (db->conn != NULL && PQtransactionStatus(db->conn) != PQTRANS_IDLE) {
        HM_ERROR("postgres: hm_db_tx called with a transaction already open");
        return fail_fast(db, HM_EINVAL, "a transaction is already open");
    }
    rc = hm_db_exec_sql(db, begin, NULL);
    if (rc != 0)
        return rc;
    db->in_tx = true;
    db->tx_lost = false;
    rc = fn(db, arg);
    if (rc == 0) {
        if (db->tx_lost || db->conn == NULL) {
            HM_ERROR("postgres: transaction callback returned success after losing the "
                     "connection");
            rc = fail_fast(db, HM_EUNAVAIL, "connection lost inside the transaction");
        } else if (PQtransactionStatus(db->conn) == PQTRANS_INERROR) {
            HM_ERROR("postgres: transaction callback returned success after a failed statement");
            rc = fail_fast(db, HM_EINTERNAL, "transaction aborted by an earlier error");
        } else if (PQtransactionStatus(db->conn) != PQTRANS_INTRANS) {
            HM_ERROR("postgres: transaction callback ended the transaction itself");
            rc = fail_fast(db, HM_EINTERNAL, "transaction ended inside its callback");
        } else {
            rc = commit(db);
        }
    }
    if (rc != 0) {
        rollback_if_open(db);
        db->session_timeout_ms = -1;
    }
    db->in_tx = false;
    db->tx_lost = false;
    return rc;
}

int hm_db_tx(hm_db_t *db, int (*fn)(hm_db_t *db, void *arg), void *arg, int isolation)
{
    static const char *const begin[] = {
        [HM_DB_READ_COMMITTED] = "BEGIN ISOLATION LEVEL READ COMMITTED",
        [HM_DB_REPEATABLE_READ] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
        [HM_DB_SERIALIZABLE] = "BEGIN ISOLATION LEVEL SERIALIZABLE",
    };

    if (isolation < HM_DB_READ_COMMITTED || isolation > HM_DB_SERIALIZABLE)
        return fail_fast(db, HM_EINVAL, "unknown isolation level");
    if (db->in_tx) {
        HM_ERROR("postgres: nested hm_db_tx");
        return fail_fast(db, HM_EINVAL, "transactions do not nest");
    }
    for (int attempt = 0;; attempt++) {
        int rc = tx_once(db, fn, arg, begin[isolation]);
        int64_t pause;

        if (rc != HM_ERETRY || attempt >= HM_DB_TX_RETRIES)
            return rc;
        STAT_INC(db, tx_retries);
        pause = jitter(db, (int64_t)DB_TX_PAUSE_MIN_MS << attempt);
        if (db->deadline_ms >= 0) {
            int64_t left = db->deadline_ms - now_ms();

            if (pause > left)
                pause = left > 0 ? left : 0;
        }
        HM_DEBUG("postgres: transaction retry %d after sqlstate %s", attempt + 1, db->sqlstate);
        if (pause > 0)
            sleep_ms(pause);
    }
}

const char *hm_db_last_sqlstate(const hm_db_t *db)
{
    return db->sqlstate;
}

const char *hm_db_last_constraint(const hm_db_t *db)
{
    return db->constraint;
}

const char *hm_db_last_message(const hm_db_t *db)
{
    return db->message;
}

void hm_db_stats(const hm_db_t *db, hm_db_stats_t *out)
{
    hm_db_t *d = (hm_db_t *)db; /* atomic loads take non-const pointers in C17 */

    out->queries = atomic_load_explicit(&d->st.queries, memory_order_relaxed);
    out->errors = atomic_load_explicit(&d->st.errors, memory_order_relaxed);
    out->connects = atomic_load_explicit(&d->st.connects, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&d->st.reconnects, memory_order_relaxed);
    out->connect_failures = atomic_load_explicit(&d->st.connect_failures, memory_order_relaxed);
    out->tx_retries = atomic_load_explicit(&d->st.tx_retries, memory_order_relaxed);
    out->timeout_sets = atomic_load_explicit(&d->st.timeout_sets, memory_order_relaxed);
    out->connected = atomic_load_explicit(&d->st.connected, memory_order_relaxed);
}

/* ---- result helpers ---- */

const char *hm_db_get(const PGresult *res, int row, int col)
{
    if (res == NULL || row < 0 || col < 0 || row >= PQntuples(res) || col >= PQnfields(res) ||
        PQgetisnull(res, row, col))
        return NULL;
    return PQgetvalue(res, row, col);
}

int hm_db_get_int64(const PGresult *res, int row, int col, int64_t *out)
{
    const char *s = hm_db_get(res, row, col);
    int64_t v = 0;
    bool neg;
    size_t i = 0;

    if (s == NULL)
        return HM_ENOTFOUND;
    neg = s[0] == '-';
    if (neg || s[0] == '+')
        i++;
    if (s[i] == '\0')
        return HM_EINVAL;
    for (; s[i] != '\0'; i++) {
        int d = s[i] - '0';

        if (d < 0 || d > 9)
            return HM_EINVAL;
        /* Accumulate negatively so INT64_MIN parses. */
        if (v < (INT64_MIN + d) / 10)
            return HM_EINVAL;
        v = v * 10 - d;
    }
    if (!neg) {
        if (v == INT64_MIN)
            return HM_EINVAL;
        v = -v;
    }
    *out = v;
    return 0;
}

int hm_db_get_bool(const PGresult *res, int row, int col, bool *out)
{
    const char *s = hm_db_get(res, row, col);

    if (s == NULL)
        return HM_ENOTFOUND;
    if (strcmp(s, "t") == 0 || strcmp(s, "true") == 0) {
        *out = true;
        return 0;
    }
    if (strcmp(s, "f") == 0 || strcmp(s, "false") == 0) {
        *out = false;
        return 0;
    }
    return HM_EINVAL;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int hm_db_get_bytea(const PGresult *res, int row, int col, hm_arena_t *arena, unsigned char **out,
                    size_t *len)
{
    const char *s = hm_db_get(res, row, col);
    unsigned char *buf;
    size_t n;

    *out = NULL;
    *len = 0;
    if (s == NULL)
        return HM_ENOTFOUND;
    if (PQfformat(res, col) == 1) {
        n = (size_t)PQgetlength(res, row, col);
        buf = hm_arena_alloc(arena, n + 1);
        memcpy(buf, s, n);
        buf[n] = '\0';
        *out = buf;
        *len = n;
        return 0;
    }
    if (s[0] == '\\' && s[1] == 'x') { /* hex format, the server's default since 9.0 */
        s += 2;
        n = strlen(s);
        if (n % 2 != 0)
            return HM_EINVAL;
        buf = hm_arena_alloc(arena, n / 2 + 1);
        for (size_t i = 0; i < n / 2; i++) {
            int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);

            if (hi < 0 || lo < 0)
                return HM_EINVAL;
            buf[i] = (unsigned char)(hi << 4 | lo);
        }
        buf[n / 2] = '\0';
        *out = buf;
        *len = n / 2;
        return 0;
    }
    {
        /* The old escape format (bytea_output = escape). */
        unsigned char *tmp = PQunescapeBytea((const unsigned char *)s, &n);

        if (tmp == NULL)
            return HM_EINVAL;
        buf = hm_arena_alloc(arena, n + 1);
        memcpy(buf, tmp, n);
        buf[n] = '\0';
        PQfreemem(tmp);
        *out = buf;
        *len = n;
        return 0;
    }
}

const char *hm_db_param_int64(hm_arena_t *arena, int64_t v)
{
    return hm_arena_printf(arena, "%" PRId64, v);
}

const char *hm_db_param_bool(bool v)
{
    return v ? "true" : "false";
}

void hm_db_abort(hm_db_t *db)
{
    if (db == NULL)
        return;
    atomic_store(&db->aborted, true);
    pthread_mutex_lock(&db->cancel_lock);
    if (db->cancel != NULL) {
        char err[256];
        if (!PQcancel(db->cancel, err, sizeof err))
            HM_WARN("postgres: cancel request failed: %s", err);
    }
    pthread_mutex_unlock(&db->cancel_lock);
}
