/*
 * outbox.c - the transactional outbox (hm_outbox_add) and its relay thread (hm/outbox.h).
 *
 * One relay cycle is one Postgres transaction: lock up to `batch` unpublished rows (FOR UPDATE
 * SKIP LOCKED, so replicas take disjoint rows), append them to their streams, mark the ones
 * Redis took as published, commit. The appends of one stream go out as one EVAL of a small Lua
 * script that runs XADD ... MAXLEN ~ per row: one round trip per stream and batch instead of
 * one per row (hm/cache.h has no pipelining, and a script keeps each call to one key, which a
 * Redis Cluster needs). A crash anywhere before COMMIT leaves the rows unpublished, so they
 * are sent again: at least once, deduplicated by the consumers.
 *
 * Between cycles the thread sleeps `poll_ms` (or until hm_relay_kick), backs off while Redis
 * or Postgres is down, and now and then counts the unpublished rows (the pending gauge) and
 * prunes published rows older than the retention.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/cache.h"
#include "hm/err.h"
#include "hm/log.h"
#include "hm/outbox.h"
#include "hm/server.h"
#include "hm/trace.h"

#define RELAY_DEFAULT_BATCH     500
#define RELAY_DEFAULT_MAXLEN    1000000LL
#define RELAY_DEFAULT_POLL_MS   50
#define RELAY_DEFAULT_RETENTION (24LL * 3600 * 1000)
#define RELAY_DEFAULT_PRUNE_MS  60000
#define RELAY_DEFAULT_STATS_MS  5000
#define RELAY_DEFAULT_FLUSH_MS  2000
#define RELAY_DEFAULT_REDIS_MS  1000
#define RELAY_DEFAULT_STMT_MS   10000
#define RELAY_BACKOFF_MIN_MS    100
#define RELAY_BACKOFF_MAX_MS    2000
/* Rows a prune statement looks at (the oldest ids), and statements per prune pass. */
#define RELAY_PRUNE_WINDOW 5000
#define RELAY_PRUNE_ROUNDS 20

/* KEYS[1] = stream, ARGV[1] = MAXLEN bound, then (event id, type, envelope) per entry. */
static const char xadd_script[] =
    "local n = 0\n"
    "for i = 2, #ARGV, 3 do\n"
    "  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',\n"
    "             'id', ARGV[i], 'type', ARGV[i + 1], 'env', ARGV[i + 2])\n"
    "  n = n + 1\n"
    "end\n"
    "return n\n";

static const hm_stmt_t outbox_insert = {
    "hm_outbox_insert",
    "INSERT INTO outbox (event_id, event_type, subject, stream, envelope) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    5};

static const hm_stmt_t outbox_lock = {
    "hm_outbox_lock",
    "SELECT id, event_id::text, event_type, stream, envelope FROM outbox "
    "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    1};

static const hm_stmt_t outbox_mark = {
    "hm_outbox_mark", "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", 1};

/* Deletes published rows past the retention among the oldest RELAY_PRUNE_WINDOW ids: the
 * primary key bounds the scan (published_at has no index, and needs none). */
static const hm_stmt_t outbox_prune = {
    "hm_outbox_prune",
    "WITH oldest AS (SELECT id FROM outbox ORDER BY id LIMIT $2) "
    "DELETE FROM outbox o USING oldest WHERE o.id = oldest.id "
    "AND o.published_at < now() - $1::bigint * interval '1 millisecond'",
    2};

static const hm_stmt_t outbox_pending = {
    "hm_outbox_pending",
    "SELECT count(*), COALESCE((EXTRACT(EPOCH FROM now() - min(created_at)) * 1000)::bigint, 0) "
    "FROM outbox WHERE published_at IS NULL",
    0};

int hm_outbox_add(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *ev)
{
    const char *params[5];
    int lengths[5] = {0, 0, 0, 0, 0};
    const int formats[5] = {0, 0, 0, 0, 1};
    const hm_event_type_t *t;
    PGresult *res;
    uint8_t *bytes;
    size_t n;
    int rc;

    rc = hm_event_validate(arena, ev, NULL);
    if (rc == 0)
        rc = hm_event_pack(arena, ev, &bytes, &n);
    if (rc != 0)
        return rc;
    t = hm_event_type_lookup(ev->type);
    params[0] = ev->id;
    params[1] = t->type;
    params[2] = ev->subject != NULL ? ev->subject : "";
    params[3] = t->stream;
    params[4] = (const char *)bytes;
    lengths[4] = (int)n;
    rc = hm_db_exec_arena(db, arena, &outbox_insert, params, lengths, formats, &res);
    if (rc != 0)
        return rc;
    return strcmp(PQcmdTuples(res), "1") == 0 ? 0 : HM_EEXIST;
}

/* ---- the relay ---- */

struct hm_relay {
    char *name;            /* owned copy of cfg.name */
    hm_relay_config_t cfg; /* defaults applied; its strings point to the owned copies */
    hm_db_t *db;           /* owned; used by the relay thread only */
    hm_cache_t *cache;     /* owned; used by the relay thread only */
    pthread_t thread;
    pthread_mutex_t lock; /* guards stopping and kicked */
    pthread_cond_t cond;  /* signalled by hm_relay_kick and hm_relay_stop */
    bool stopping;        /* hm_relay_stop was called: flush, then exit */
    bool kicked;          /* hm_relay_kick since the thread last slept */
    struct {              /* written by the relay thread, read by any (relaxed) */
        _Atomic uint64_t published, batches, redis_errors, db_errors, pruned;
        _Atomic int64_t pending, oldest_ms;
        _Atomic uint64_t by_type[HM_EVENT_TYPES_MAX + 1];
    } st;
};

#define STAT_ADD(r, f, v) atomic_fetch_add_explicit(&(r)->st.f, (v), memory_order_relaxed)

/* One locked row of a cycle. */
typedef struct relay_row {
    const char *id;       /* outbox.id, text */
    const char *event_id; /* text form of the uuid */
    const char *type;
    const char *stream;
    unsigned char *env; /* envelope bytes (arena) */
    size_t env_len;
    bool grouped; /* already part of a stream's EVAL */
    bool sent;    /* Redis took it */
} relay_row_t;

/* State of one cycle, reset at the start of each attempt of the transaction. */
typedef struct relay_cycle {
    hm_relay_t *r;
    hm_arena_t *arena;
    relay_row_t *rows;
    int n;             /* rows locked */
    int sent;          /* rows Redis took (and marked, once committed) */
    bool redis_failed; /* a stream's EVAL failed */
} relay_cycle_t;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Appends the rows of stream rows[first].stream with one EVAL; marks them sent. */
static void publish_stream(relay_cycle_t *c, int first)
{
    hm_relay_t *r = c->r;
    const char *stream = c->rows[first].stream;
    int count = 0, argc = 0;
    const char **argv;
    size_t *argvlen;
    redisReply *reply;
    char maxlen[24];

    for (int i = first; i < c->n; i++) {
        if (!c->rows[i].grouped && strcmp(c->rows[i].stream, stream) == 0)
            count++;
    }
    argv = hm_arena_alloc(c->arena, sizeof *argv * (size_t)(5 + 3 * count));
    argvlen = hm_arena_alloc(c->arena, sizeof *argvlen * (size_t)(5 + 3 * count));
    snprintf(maxlen, sizeof maxlen, "%lld", r->cfg.maxlen);
    argv[argc] = "EVAL";
    argvlen[argc++] = 4;
    argv[argc] = xadd_script;
    argvlen[argc++] = sizeof xadd_script - 1;
    argv[argc] = "1";
    argvlen[argc++] = 1;
    argv[argc] = stream;
    argvlen[argc++] = strlen(stream);
    argv[argc] = maxlen;
    argvlen[argc++] = strlen(maxlen);
    for (int i = first; i < c->n; i++) {
        relay_row_t *row = &c->rows[i];

        if (row->grouped || strcmp(row->stream, stream) != 0)
            continue;
        row->grouped = true;
        argv[argc] = row->event_id;
        argvlen[argc++] = strlen(row->event_id);
        argv[argc] = row->type;
        argvlen[argc++] = strlen(row->type);
        argv[argc] = (const char *)row->env;
        argvlen[argc++] = row->env_len;
    }
    reply = hm_cache_command_argv(r->cache, c->arena, argc, argv, argvlen);
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != count) {
        c->redis_failed = true;
        STAT_ADD(r, redis_errors, 1);
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
            HM_WARN("relay: %s: redis refused %d events for %s: %s", r->name, count, stream,
                    reply->str);
        else
            HM_DEBUG("relay: %s: publishing %d events to %s failed", r->name, count, stream);
        return;
    }
    for (int i = first; i < c->n; i++) {
        if (c->rows[i].grouped && !c->rows[i].sent && strcmp(c->rows[i].stream, stream) == 0) {
            c->rows[i].sent = true;
            c->sent++;
        }
    }
}

/* The transaction of one cycle (hm_db_tx callback). */
static int cycle_tx(hm_db_t *db, void *arg)
{
    relay_cycle_t *c = arg;
    const char *params[1];
    PGresult *res;
    char *ids, *p;
    int rc;

    c->n = 0;
    c->sent = 0;
    c->redis_failed = false;
    params[0] = hm_db_param_int64(c->arena, c->r->cfg.batch);
    rc = hm_db_exec_arena(db, c->arena, &outbox_lock, params, NULL, NULL, &res);
    if (rc != 0)
        return rc;
    c->n = PQntuples(res);
    if (c->n == 0)
        return 0;
    c->rows = hm_arena_zalloc(c->arena, sizeof *c->rows * (size_t)c->n);
    for (int i = 0; i < c->n; i++) {
        relay_row_t *row = &c->rows[i];

        row->id = hm_db_get(res, i, 0);
        row->event_id = hm_db_get(res, i, 1);
        row->type = hm_db_get(res, i, 2);
        row->stream = hm_db_get(res, i, 3);
        if (row->id == NULL || row->event_id == NULL || row->type == NULL || row->stream == NULL ||
            hm_db_get_bytea(res, i, 4, c->arena, &row->env, &row->env_len) != 0) {
            HM_ERROR("relay: %s: malformed outbox row", c->r->name);
            return HM_EINTERNAL;
        }
    }
    for (int i = 0; i < c->n; i++) {
        if (!c->rows[i].grouped)
            publish_stream(c, i);
    }
    if (c->sent == 0)
        return HM_EUNAVAIL; /* nothing went out: roll back, the rows stay unpublished */

    /* "{1,2,3}": ids are bigint text from Postgres, at most 20 characters each. */
    ids = p = hm_arena_alloc(c->arena, (size_t)c->sent * 21 + 3);
    *p++ = '{';
    for (int i = 0; i < c->n; i++) {
        if (!c->rows[i].sent)
            continue;
        if (p[-1] != '{')
            *p++ = ',';
        size_t len = strlen(c->rows[i].id);
        memcpy(p, c->rows[i].id, len);
        p += len;
    }
    *p++ = '}';
    *p = '\0';
    params[0] = ids;
    return hm_db_exec_arena(db, c->arena, &outbox_mark, params, NULL, NULL, NULL);
}

/* One cycle. Returns the rows published (>= 0) or an HM_E* code; *redis_down is set when
 * Redis refused or failed. */
static int run_cycle(hm_relay_t *r, hm_arena_t *arena, bool *redis_down)
{
    relay_cycle_t c = {.r = r, .arena = arena};
    int rc = hm_db_tx(r->db, cycle_tx, &c, HM_DB_READ_COMMITTED);

    *redis_down = c.redis_failed;
    if (rc != 0) {
        if (!c.redis_failed || c.sent > 0)
            STAT_ADD(r, db_errors, 1);
        return rc;
    }
    if (c.sent > 0) {
        STAT_ADD(r, published, (uint64_t)c.sent);
        STAT_ADD(r, batches, 1);
        for (int i = 0; i < c.n; i++) {
            const hm_event_type_t *t;

            if (!c.rows[i].sent)
                continue;
            t = hm_event_type_lookup(c.rows[i].type);
            STAT_ADD(r, by_type[t != NULL ? t->index : hm_event_ntypes], 1);
        }
    }
    return c.sent;
}

static void prune(hm_relay_t *r, hm_arena_t *arena)
{
    const char *params[2];
    uint64_t total = 0;

    params[0] = hm_db_param_int64(arena, r->cfg.retention_ms);
    params[1] = hm_db_param_int64(arena, RELAY_PRUNE_WINDOW);
    for (int round = 0; round < RELAY_PRUNE_ROUNDS; round++) {
        PGresult *res;
        long n;

        if (hm_db_exec_arena(r->db, arena, &outbox_prune, params, NULL, NULL, &res) != 0)
            break;
        n = strtol(PQcmdTuples(res), NULL, 10);
        total += (uint64_t)n;
        if (n == 0)
            break;
    }
    if (total > 0) {
        STAT_ADD(r, pruned, total);
        HM_DEBUG("relay: %s: pruned %" PRIu64 " published rows", r->name, total);
    }
}

static void count_pending(hm_relay_t *r, hm_arena_t *arena)
{
    PGresult *res;
    int64_t n, age;

    if (hm_db_exec_arena(r->db, arena, &outbox_pending, NULL, NULL, NULL, &res) != 0)
        return;
    if (hm_db_get_int64(res, 0, 0, &n) == 0 && hm_db_get_int64(res, 0, 1, &age) == 0) {
        atomic_store_explicit(&r->st.pending, n, memory_order_relaxed);
        atomic_store_explicit(&r->st.oldest_ms, age, memory_order_relaxed);
    }
}

/* Sleeps up to ms, or until kicked or stopped. Returns true when stopping. */
static bool relay_wait(hm_relay_t *r, int64_t ms)
{
    struct timespec until;
    bool stopping;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&r->lock);
    while (!r->stopping && !r->kicked) {
        if (pthread_cond_timedwait(&r->cond, &r->lock, &until) != 0)
            break;
    }
    r->kicked = false;
    stopping = r->stopping;
    pthread_mutex_unlock(&r->lock);
    return stopping;
}

static bool is_stopping(hm_relay_t *r)
{
    bool s;

    pthread_mutex_lock(&r->lock);
    s = r->stopping;
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void *relay_main(void *arg)
{
    hm_relay_t *r = arg;
    hm_arena_t arena;
    int64_t next_prune = mono_ms() + r->cfg.prune_interval_ms;
    int64_t next_stats = 0, flush_until = -1, backoff = 0;

    hm_arena_init(&arena, 64 * 1024);
    HM_INFO("relay: %s: started (batch %d, maxlen ~%lld)", r->name, r->cfg.batch, r->cfg.maxlen);
    for (;;) {
        int64_t now = mono_ms();
        bool redis_down = false;
        int n;

        if (flush_until < 0 && is_stopping(r))
            flush_until = now + r->cfg.flush_ms;
        if (flush_until >= 0 && now >= flush_until)
            break;
        if (flush_until < 0 && now >= next_stats) {
            count_pending(r, &arena);
            hm_arena_reset(&arena);
            next_stats = now + r->cfg.stats_interval_ms;
        }
        if (flush_until < 0 && now >= next_prune) {
            prune(r, &arena);
            hm_arena_reset(&arena);
            next_prune = now + r->cfg.prune_interval_ms;
        }
        if (hm_cache_available(r->cache)) {
            n = run_cycle(r, &arena, &redis_down);
        } else {
            n = HM_EUNAVAIL; /* backing off: do not lock rows only to fail */
            redis_down = true;
        }
        hm_arena_reset(&arena);
        if (n >= 0 && !redis_down) {
            backoff = 0;
            if (n >= r->cfg.batch)
                continue; /* more may be waiting */
            if (flush_until >= 0)
                break; /* drained */
            relay_wait(r, r->cfg.poll_ms);
            continue;
        }
        if (n > 0)
            continue; /* some streams went out; retry the rest at once */
        if (flush_until >= 0)
            break; /* Redis or Postgres down: nothing more to flush */
        backoff = backoff == 0 ? RELAY_BACKOFF_MIN_MS : backoff * 2;
        if (backoff > RELAY_BACKOFF_MAX_MS)
            backoff = RELAY_BACKOFF_MAX_MS;
        relay_wait(r, backoff);
    }
    HM_INFO("relay: %s: stopped", r->name);
    hm_arena_deinit(&arena);
    return NULL;
}

hm_relay_t *hm_relay_start(const hm_relay_config_t *cfg)
{
    pthread_condattr_t ca;
    hm_relay_t *r;
    int rc;

    if (cfg->redis_addr == NULL || cfg->redis_addr[0] == '\0') {
        HM_ERROR("relay: no redis address");
        return NULL;
    }
    r = hm_xcalloc(1, sizeof *r);
    r->cfg = *cfg;
    r->name = hm_xstrdup(cfg->name != NULL && cfg->name[0] != '\0' ? cfg->name : "relay");
    r->cfg.name = r->name;
    r->cfg.database_url = NULL;
    r->cfg.redis_addr = NULL;
#define DEFAULT(f, v)                                                                              \
    if (r->cfg.f <= 0)                                                                             \
    r->cfg.f = (v)
    DEFAULT(redis_timeout_ms, RELAY_DEFAULT_REDIS_MS);
    DEFAULT(statement_timeout_ms, RELAY_DEFAULT_STMT_MS);
    DEFAULT(batch, RELAY_DEFAULT_BATCH);
    DEFAULT(maxlen, RELAY_DEFAULT_MAXLEN);
    DEFAULT(poll_ms, RELAY_DEFAULT_POLL_MS);
    DEFAULT(retention_ms, RELAY_DEFAULT_RETENTION);
    DEFAULT(prune_interval_ms, RELAY_DEFAULT_PRUNE_MS);
    DEFAULT(stats_interval_ms, RELAY_DEFAULT_STATS_MS);
    DEFAULT(flush_ms, RELAY_DEFAULT_FLUSH_MS);
#undef DEFAULT
    r->db = hm_db_create(cfg->database_url, r->cfg.statement_timeout_ms);
    r->cache = hm_cache_create(cfg->redis_addr, r->cfg.redis_timeout_ms);
    if (r->db == NULL || r->cache == NULL) {
        hm_db_destroy(r->db);
        hm_cache_destroy(r->cache);
        free(r->name);
        free(r);
        return NULL;
    }
    atomic_store(&r->st.pending, -1);
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    rc = pthread_create(&r->thread, NULL, relay_main, r);
    if (rc != 0) {
        HM_ERROR("relay: cannot start its thread");
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        hm_db_destroy(r->db);
        hm_cache_destroy(r->cache);
        free(r->name);
        free(r);
        return NULL;
    }
    return r;
}

void hm_relay_kick(hm_relay_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->kicked = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

void hm_relay_stop(hm_relay_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    hm_db_destroy(r->db);
    hm_cache_destroy(r->cache);
    free(r->name);
    free(r);
}

void hm_relay_stats(const hm_relay_t *relay, hm_relay_stats_t *out)
{
    hm_relay_t *r = (hm_relay_t *)relay; /* atomic loads take non-const pointers in C17 */

    memset(out, 0, sizeof *out);
    out->published = atomic_load_explicit(&r->st.published, memory_order_relaxed);
    out->batches = atomic_load_explicit(&r->st.batches, memory_order_relaxed);
    out->redis_errors = atomic_load_explicit(&r->st.redis_errors, memory_order_relaxed);
    out->db_errors = atomic_load_explicit(&r->st.db_errors, memory_order_relaxed);
    out->pruned = atomic_load_explicit(&r->st.pruned, memory_order_relaxed);
    out->pending = atomic_load_explicit(&r->st.pending, memory_order_relaxed);
    out->oldest_ms = atomic_load_explicit(&r->st.oldest_ms, memory_order_relaxed);
    for (size_t i = 0; i <= hm_event_ntypes; i++)
        out->published_by_type[i] = atomic_load_explicit(&r->st.by_type[i], memory_order_relaxed);
}

int hm_publish(hm_db_t *db, hm_arena_t *arena, const char *type, const char *subject,
               const char *traceparent, const ProtobufCMessage *payload)
{
    Hospitality__Events__V1__Event *ev;
    const char *source = hm_daemon_name();
    int rc = hm_event_build(arena, type, source != NULL ? source : "libhm",
                            subject != NULL && subject[0] != '\0' ? subject : NULL, traceparent,
                            payload, &ev);

    if (rc != 0) {
        const char *field = NULL;
        const char *why = hm_event_last_error(&field);
        HM_ERROR("publish %s: %s (%s)", type, why, field != NULL ? field : "envelope");
        return rc;
    }
    return hm_outbox_add(db, arena, ev);
}

int hm_call_publish(hm_call_t *call, hm_db_t *db, const char *type, const char *subject,
                    const ProtobufCMessage *payload)
{
    char tp[HM_TRACEPARENT_LEN + 1];
    int rc;

    if (call->span != NULL && call->span->trace_id[0] != '\0')
        hm_trace_child_traceparent(call->span, tp);
    else
        tp[0] = '\0';
    rc = hm_publish(db, &call->arena, type, subject, tp, payload);
    if (rc == 0)
        call->published = true;
    return rc;
}
