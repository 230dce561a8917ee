/*
 * bus.c - event consumers (hm_consumer_*) and the stream operations behind `hmctl events`
 * (hm_bus_*), see hm/bus.h.
 *
 * A consumer thread loops: create its groups if needed; every retry_ms re-read its own pending
 * entries (XREADGROUP ... 0: failed or unacknowledged ones; each read counts as a delivery);
 * every claim interval take over entries other consumers left idle for claim_idle_ms
 * (XAUTOCLAIM); every stats interval refresh the lag gauges (XINFO GROUPS); then read new
 * entries (XREADGROUP ... BLOCK ... >). Each set of entries read is handled the same way:
 *
 *   1. decode each envelope against the registry; one that does not decode goes to the
 *      dead-letter stream at once, types the consumer does not take are acknowledged;
 *   2. one transaction: insert all event ids into processed_events (ON CONFLICT DO NOTHING
 *      RETURNING), run the handler for each id that was new (not for suppressed subjects),
 *      commit; ids that were not new are duplicates;
 *   3. if a handler failed, roll back and do step 2 once per event, so only the poison event
 *      fails; a failed event stays pending, or is dead-lettered after max_deliveries;
 *   4. XACK what was committed (or dead-lettered), per stream in one command.
 * A crash between 2 and 4 leaves entries pending that are already applied: re-read later,
 * they are duplicates. Nothing is acknowledged that did not commit.
 */
#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "hm/bus.h"
#include "hm/err.h"
#include "hm/log.h"

#define CONS_DEFAULT_BATCH      256
#define CONS_DEFAULT_BLOCK_MS   250
#define CONS_DEFAULT_DELIVERIES 5
#define CONS_DEFAULT_CLAIM_MS   30000
#define CONS_DEFAULT_RETRY_MS   1000
#define CONS_DEFAULT_STATS_MS   5000
#define CONS_DEFAULT_PRUNE_MS   600000
/* processed_events rows are kept this much longer than the stream entries they guard (clock
 * skew between Redis and Postgres, entries trimmed while being read). */
#define CONS_PRUNE_MARGIN_MS    (3600LL * 1000)
#define CONS_DEFAULT_DLQ_MAXLEN 100000LL
#define CONS_DEFAULT_REDIS_MS   1000
#define CONS_DEFAULT_STMT_MS    10000
#define CONS_BACKOFF_MIN_MS     100
#define CONS_BACKOFF_MAX_MS     2000
/* Reads per stream in one retry or claim pass (each of up to `batch` entries). */
#define CONS_PASS_READS 16
/* Consumers with nothing pending and idle this long are removed from the group. */
#define CONS_GC_IDLE_MS    (3600LL * 1000)
#define BUS_DEFAULT_MAXLEN 1000000LL

static const hm_stmt_t processed_prune = {
    "hm_bus_processed_prune",
    "DELETE FROM processed_events WHERE processed_at < to_timestamp($1::bigint / 1000.0)", 1};

static const hm_stmt_t processed_insert = {
    "hm_bus_processed",
    "INSERT INTO processed_events (event_id, event_type) "
    "SELECT * FROM unnest($1::uuid[], $2::text[]) ON CONFLICT (event_id) DO NOTHING "
    "RETURNING event_id::text",
    2};

struct hm_consumer {
    hm_consumer_config_t cfg; /* defaults applied; strings point to the copies below */
    char *daemon;             /* owned: group name */
    char *name;               /* owned: consumer name in the group */
    char *dlq;                /* owned: "hm:dlq:<daemon>" */
    char **streams;           /* owned: cfg.nstreams names */
    bool *group_ready;        /* per stream: XGROUP CREATE done (consumer thread only) */
    bool regroup;             /* a group vanished (Redis lost its data): recreate at 0 */
    bool *want;               /* hm_event_ntypes flags, NULL = every type (owned) */
    hm_db_t *db;              /* owned; consumer thread only */
    hm_cache_t *cache;        /* owned; consumer thread only */
    pthread_t thread;
    pthread_mutex_t lock; /* guards stopping */
    pthread_cond_t cond;  /* signalled by hm_consumer_stop */
    bool stopping;
    struct { /* written by the consumer thread, read by any (relaxed) */
        _Atomic uint64_t delivered, processed, duplicates, suppressed, skipped, failures,
            dead_letters, claimed, batches, redis_errors, db_errors, pruned;
        _Atomic int64_t lag, pending;
    } st;
};

#define STAT_ADD(c, f, v) atomic_fetch_add_explicit(&(c)->st.f, (v), memory_order_relaxed)

enum entry_state {
    ENTRY_TODO, /* to apply */
    ENTRY_ACK,  /* done (applied, duplicate, suppressed, skipped, dead-lettered): XACK */
    ENTRY_KEEP, /* failed: stays pending for a retry */
};

enum entry_outcome { OUT_NONE, OUT_APPLIED, OUT_DUPLICATE, OUT_SUPPRESSED };

/* One stream entry being handled; strings point into the reply (the cycle's arena). */
typedef struct entry {
    size_t stream;                            /* index into c->streams */
    const char *id;                           /* stream entry id */
    bool deleted;                             /* trimmed from the stream before we read it */
    const char *event_id;                     /* field "id", or NULL */
    const char *type;                         /* field "type", or NULL */
    const uint8_t *env;                       /* field "env", or NULL */
    size_t env_len;                           /* its length */
    const Hospitality__Events__V1__Event *ev; /* decoded envelope (TODO entries) */
    const ProtobufCMessage *payload;          /* decoded payload (TODO entries) */
    enum entry_state state;
    enum entry_outcome outcome; /* of the last transaction attempt */
} entry_t;

/* One transaction over `n` entries (hm_db_tx callback state). */
typedef struct batch {
    hm_consumer_t *c;
    hm_arena_t *arena;
    entry_t **todo;
    size_t n;
    long failed;    /* index into todo of the handler that failed, -1 if none */
    int handler_rc; /* its error */
} batch_t;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool transient(int rc)
{
    return rc == HM_EUNAVAIL || rc == HM_ETIMEDOUT || rc == HM_ERETRY;
}

/* ---- reply helpers ---- */

static bool is_str(const redisReply *r)
{
    return r != NULL && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* The value after `key` in a flat [k1, v1, k2, v2, ...] array (XINFO in RESP2), or NULL. */
static const redisReply *kv_get(const redisReply *arr, const char *key)
{
    if (arr == NULL || arr->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < arr->elements; i += 2) {
        if (is_str(arr->element[i]) && strcmp(arr->element[i]->str, key) == 0)
            return arr->element[i + 1];
    }
    return NULL;
}

static long long kv_int(const redisReply *arr, const char *key, long long dflt)
{
    const redisReply *v = kv_get(arr, key);

    if (v == NULL)
        return dflt;
    if (v->type == REDIS_REPLY_INTEGER)
        return v->integer;
    if (is_str(v))
        return strtoll(v->str, NULL, 10);
    return dflt;
}

static const char *kv_str(const redisReply *arr, const char *key)
{
    const redisReply *v = kv_get(arr, key);

    return is_str(v) ? v->str : "";
}

/* Fills an entry from [id, [field, value, ...] | nil]. False when malformed. */
static bool parse_entry(const redisReply *r, size_t stream, entry_t *e)
{
    const redisReply *f;

    memset(e, 0, sizeof *e);
    e->stream = stream;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0]))
        return false;
    e->id = r->element[0]->str;
    f = r->element[1];
    if (f == NULL || f->type == REDIS_REPLY_NIL) {
        e->deleted = true;
        return true;
    }
    if (f->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];

        if (!is_str(k) || !is_str(v))
            continue;
        if (strcmp(k->str, "id") == 0)
            e->event_id = v->str;
        else if (strcmp(k->str, "type") == 0)
            e->type = v->str;
        else if (strcmp(k->str, "env") == 0) {
            e->env = (const uint8_t *)v->str;
            e->env_len = v->len;
        }
    }
    return true;
}

/* ---- waiting and stopping ---- */

static bool cons_stopping(hm_consumer_t *c)
{
    bool s;

    pthread_mutex_lock(&c->lock);
    s = c->stopping;
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* Sleeps up to ms or until stopped; true when stopping. */
static bool cons_wait(hm_consumer_t *c, int64_t ms)
{
    struct timespec until;
    bool s;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->lock);
    while (!c->stopping) {
        if (pthread_cond_timedwait(&c->cond, &c->lock, &until) != 0)
            break;
    }
    s = c->stopping;
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* ---- Redis side of the consumer ---- */

static redisReply *cmd(hm_consumer_t *c, hm_arena_t *arena, int argc, const char **argv,
                       const size_t *argvlen)
{
    redisReply *r = hm_cache_command_argv(c->cache, arena, argc, argv, argvlen);

    if (r == NULL)
        STAT_ADD(c, redis_errors, 1);
    return r;
}

/* XGROUP CREATE for the streams whose group is not known to exist. 0 or HM_EUNAVAIL. */
static int ensure_groups(hm_consumer_t *c, hm_arena_t *arena)
{
    for (size_t i = 0; i < c->cfg.nstreams; i++) {
        const char *argv[6] = {"XGROUP",
                               "CREATE",
                               c->streams[i],
                               c->daemon,
                               c->cfg.from_start || c->regroup ? "0" : "$",
                               "MKSTREAM"};
        redisReply *r;

        if (c->group_ready[i])
            continue;
        r = cmd(c, arena, 6, argv, NULL);
        if (r == NULL)
            return HM_EUNAVAIL;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
            HM_WARN("consumer: %s: cannot create group on %s: %s", c->daemon, c->streams[i],
                    r->str);
            STAT_ADD(c, redis_errors, 1);
            return HM_EUNAVAIL;
        }
        if (r->type != REDIS_REPLY_ERROR)
            HM_INFO("consumer: %s: created group on %s from %s", c->daemon, c->streams[i],
                    c->cfg.from_start || c->regroup ? "the start" : "the end");
        c->group_ready[i] = true;
    }
    return 0;
}

/*
 * An error reply that means the group (or its stream) is gone, as after a Redis restart
 * without persistence: recreate it reading from the start of what the stream holds, since
 * events may have arrived before the group existed again (duplicates are skipped).
 */
static void check_nogroup(hm_consumer_t *c, const redisReply *r)
{
    if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0) {
        HM_WARN("consumer: %s: group vanished (%s); recreating it from the start", c->daemon,
                r->str);
        c->regroup = true;
        for (size_t i = 0; i < c->cfg.nstreams; i++)
            c->group_ready[i] = false;
    }
}

/* Delivery count of an entry (XPENDING stream group id id 1); 0 when unknown. */
static long long deliveries(hm_consumer_t *c, hm_arena_t *arena, const entry_t *e)
{
    const char *argv[7] = {"XPENDING", c->streams[e->stream], c->daemon, e->id, e->id, "1"};
    redisReply *r = cmd(c, arena, 6, argv, NULL);
    const redisReply *row;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return 0;
    row = r->element[0];
    if (row->type != REDIS_REPLY_ARRAY || row->elements < 4 ||
        row->element[3]->type != REDIS_REPLY_INTEGER)
        return 0;
    return row->element[3]->integer;
}

/* Writes the entry to the dead-letter stream. 0 or HM_EUNAVAIL. */
static int dead_letter(hm_consumer_t *c, hm_arena_t *arena, entry_t *e, const char *why)
{
    char attempts[24], maxlen[24];
    const char *argv[20];
    size_t argvlen[20];
    int argc = 0;
    redisReply *r;

#define ARG(s, n)                                                                                  \
    do {                                                                                           \
        argv[argc] = (s);                                                                          \
        argvlen[argc++] = (n);                                                                     \
    } while (0)
#define ARGS(s) ARG((s), strlen(s))
    snprintf(attempts, sizeof attempts, "%lld", deliveries(c, arena, e));
    snprintf(maxlen, sizeof maxlen, "%lld", c->cfg.dlq_maxlen);
    ARGS("XADD");
    ARGS(c->dlq);
    ARGS("MAXLEN");
    ARGS("~");
    ARGS(maxlen);
    ARGS("*");
    ARGS("stream");
    ARGS(c->streams[e->stream]);
    ARGS("entry");
    ARGS(e->id);
    ARGS("id");
    ARGS(e->event_id != NULL ? e->event_id : "");
    ARGS("type");
    ARGS(e->type != NULL ? e->type : "");
    ARGS("env");
    ARG(e->env != NULL ? (const char *)e->env : "", e->env != NULL ? e->env_len : 0);
    ARGS("error");
    ARGS(why);
    ARGS("attempts");
    ARGS(attempts);
#undef ARGS
#undef ARG
    r = cmd(c, arena, argc, argv, argvlen);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        if (r != NULL)
            HM_WARN("consumer: %s: dead-letter write refused: %s", c->daemon, r->str);
        return HM_EUNAVAIL;
    }
    STAT_ADD(c, dead_letters, 1);
    HM_WARN("consumer: %s: event %s (%s) from %s entry %s dead-lettered after %s "
            "deliveries: %s",
            c->daemon, e->event_id != NULL ? e->event_id : "?", e->type != NULL ? e->type : "?",
            c->streams[e->stream], e->id, attempts, why);
    return 0;
}

/* XACK of the entries in state ACK, one command per stream. */
static void ack(hm_consumer_t *c, hm_arena_t *arena, entry_t *es, size_t n)
{
    for (size_t s = 0; s < c->cfg.nstreams; s++) {
        const char **argv = NULL;
        int argc = 0;
        redisReply *r;

        for (size_t i = 0; i < n; i++) {
            if (es[i].stream != s || es[i].state != ENTRY_ACK)
                continue;
            if (argv == NULL) {
                argv = hm_arena_alloc(arena, sizeof *argv * (n + 3));
                argv[argc++] = "XACK";
                argv[argc++] = c->streams[s];
                argv[argc++] = c->daemon;
            }
            argv[argc++] = es[i].id;
        }
        if (argv == NULL)
            continue;
        r = cmd(c, arena, argc, argv, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            HM_WARN("consumer: %s: XACK of %d entries on %s failed; they will be seen again "
                    "as duplicates",
                    c->daemon, argc - 3, c->streams[s]);
    }
}

/* ---- Postgres side: one transaction over a batch ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends "{a,b,c}" of n strings to the arena; the strings need no quoting (UUIDs and
 * registered type names). */
static char *pg_array(hm_arena_t *arena, entry_t **todo, size_t n, bool types)
{
    size_t len = 3;
    char *out, *p;

    for (size_t i = 0; i < n; i++)
        len += strlen(types ? todo[i]->ev->type : todo[i]->ev->id) + 1;
    out = p = hm_arena_alloc(arena, len);
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        const char *s = types ? todo[i]->ev->type : todo[i]->ev->id;
        size_t k = strlen(s);

        if (i > 0)
            *p++ = ',';
        memcpy(p, s, k);
        p += k;
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

static int batch_tx(hm_db_t *db, void *arg)
{
    batch_t *b = arg;
    hm_consumer_t *c = b->c;
    const char *params[2];
    const char **fresh;
    bool *taken;
    PGresult *res;
    size_t nfresh;
    int rc;

    b->failed = -1;
    b->handler_rc = 0;
    params[0] = pg_array(b->arena, b->todo, b->n, false);
    params[1] = pg_array(b->arena, b->todo, b->n, true);
    rc = hm_db_exec_arena(db, b->arena, &processed_insert, params, NULL, NULL, &res);
    if (rc != 0)
        return rc;
    nfresh = (size_t)PQntuples(res);
    fresh = hm_arena_alloc(b->arena, sizeof *fresh * (nfresh + 1));
    taken = hm_arena_zalloc(b->arena, sizeof *taken * (nfresh + 1));
    for (size_t i = 0; i < nfresh; i++)
        fresh[i] = hm_db_get(res, (int)i, 0);
    qsort(fresh, nfresh, sizeof *fresh, cmp_str);

    /* The first entry of each newly recorded id applies it; the rest are duplicates. */
    for (size_t i = 0; i < b->n; i++) {
        entry_t *e = b->todo[i];
        const char *key = e->ev->id;
        const char **hit = bsearch(&key, fresh, nfresh, sizeof *fresh, cmp_str);

        if (hit == NULL || taken[hit - fresh]) {
            e->outcome = OUT_DUPLICATE;
            continue;
        }
        taken[hit - fresh] = true;
        if (c->cfg.suppressed != NULL && c->cfg.suppressed(e->ev->subject, c->cfg.user)) {
            e->outcome = OUT_SUPPRESSED;
            continue;
        }
        rc = c->cfg.handle(db, b->arena, e->ev, e->payload, c->cfg.user);
        if (rc != 0) {
            b->failed = (long)i;
            b->handler_rc = rc;
            return rc;
        }
        e->outcome = OUT_APPLIED;
    }
    return 0;
}

/* Runs one transaction over todo[0..n). 0 when committed (outcomes set), else the error with
 * b->failed >= 0 when a handler failed. */
static int run_batch(hm_consumer_t *c, hm_arena_t *arena, entry_t **todo, size_t n, batch_t *b)
{
    int rc;

    *b = (batch_t){.c = c, .arena = arena, .todo = todo, .n = n, .failed = -1};
    for (size_t i = 0; i < n; i++)
        todo[i]->outcome = OUT_NONE;
    rc = hm_db_tx(c->db, batch_tx, b, HM_DB_READ_COMMITTED);
    if (rc == 0) {
        STAT_ADD(c, batches, 1);
        for (size_t i = 0; i < n; i++) {
            todo[i]->state = ENTRY_ACK;
            if (todo[i]->outcome == OUT_APPLIED)
                STAT_ADD(c, processed, 1);
            else if (todo[i]->outcome == OUT_DUPLICATE)
                STAT_ADD(c, duplicates, 1);
            else if (todo[i]->outcome == OUT_SUPPRESSED)
                STAT_ADD(c, suppressed, 1);
        }
        return 0;
    }
    if (b->failed >= 0)
        STAT_ADD(c, failures, 1);
    else
        STAT_ADD(c, db_errors, 1);
    return rc;
}

/* After a handler failed on entry e alone: dead-letter it once it was delivered often enough
 * (non-transient errors only), else leave it pending. */
static void handler_failed(hm_consumer_t *c, hm_arena_t *arena, entry_t *e, int rc)
{
    long long n;
    char why[160];

    e->state = ENTRY_KEEP;
    if (transient(rc)) {
        HM_WARN("consumer: %s: %s %s: handler failed (%s), will retry", c->daemon, e->ev->type,
                e->ev->id, hm_err_name(rc));
        return;
    }
    n = deliveries(c, arena, e);
    HM_WARN("consumer: %s: %s %s: handler failed (%s), delivery %lld of %d", c->daemon, e->ev->type,
            e->ev->id, hm_err_name(rc), n, c->cfg.max_deliveries);
    if (n < c->cfg.max_deliveries)
        return;
    snprintf(why, sizeof why, "handler failed: %s (%s)", hm_err_name(rc), hm_strerror(rc));
    if (dead_letter(c, arena, e, why) == 0)
        e->state = ENTRY_ACK;
}

/*
 * Handles the entries read in one go (steps 1-4 of the file comment). Returns 0, or
 * HM_EUNAVAIL when Postgres or a dependency failed (the caller backs off; entries stay
 * pending).
 */
static int handle_entries(hm_consumer_t *c, hm_arena_t *arena, entry_t *es, size_t n)
{
    entry_t **todo = hm_arena_alloc(arena, sizeof *todo * (n + 1));
    size_t ntodo = 0;
    int status = 0;
    batch_t b;

    STAT_ADD(c, delivered, n);
    for (size_t i = 0; i < n; i++) {
        entry_t *e = &es[i];
        const hm_event_type_t *t;
        char why[160];
        const char *field;

        if (e->deleted) {
            HM_WARN("consumer: %s: entry %s of %s was trimmed before it was processed (raise "
                    "the stream's MAXLEN)",
                    c->daemon, e->id, c->streams[e->stream]);
            e->state = ENTRY_ACK;
            continue;
        }
        if (hm_event_decode(arena, e->env, e->env_len, &e->ev, &e->payload) != 0) {
            const char *msg = hm_event_last_error(&field);

            snprintf(why, sizeof why, "invalid event: %s%s%s", field, field[0] ? ": " : "", msg);
            e->state = dead_letter(c, arena, e, why) == 0 ? ENTRY_ACK : ENTRY_KEEP;
            continue;
        }
        if (e->type != NULL && strcmp(e->type, e->ev->type) != 0) {
            e->state = dead_letter(c, arena, e,
                                   "invalid event: type field differs from the "
                                   "envelope's type") == 0
                           ? ENTRY_ACK
                           : ENTRY_KEEP;
            continue;
        }
        t = hm_event_type_lookup(e->ev->type);
        if (c->want != NULL && !c->want[t->index]) {
            STAT_ADD(c, skipped, 1);
            e->state = ENTRY_ACK;
            continue;
        }
        e->state = ENTRY_TODO;
        todo[ntodo++] = e;
    }

    if (ntodo > 0) {
        int rc = run_batch(c, arena, todo, ntodo, &b);

        if (rc != 0 && b.failed >= 0 && ntodo > 1 && !transient(b.handler_rc)) {
            /* One event per transaction: only the poison one fails. */
            for (size_t i = 0; i < ntodo; i++) {
                rc = run_batch(c, arena, &todo[i], 1, &b);
                if (rc == 0)
                    continue;
                if (b.failed >= 0 && !transient(b.handler_rc)) {
                    handler_failed(c, arena, todo[i], b.handler_rc);
                    continue;
                }
                if (b.failed >= 0)
                    handler_failed(c, arena, todo[i], b.handler_rc);
                for (size_t k = i; k < ntodo; k++) {
                    if (todo[k]->state == ENTRY_TODO)
                        todo[k]->state = ENTRY_KEEP;
                }
                status = HM_EUNAVAIL;
                break;
            }
        } else if (rc != 0) {
            if (b.failed >= 0 && ntodo == 1)
                handler_failed(c, arena, todo[0], b.handler_rc);
            else if (b.failed >= 0)
                HM_WARN("consumer: %s: handler failed (%s); batch of %zu left pending", c->daemon,
                        hm_err_name(b.handler_rc), ntodo);
            else
                HM_WARN("consumer: %s: transaction failed (%s); batch of %zu left pending",
                        c->daemon, hm_err_name(rc), ntodo);
            for (size_t i = 0; i < ntodo; i++) {
                if (todo[i]->state == ENTRY_TODO)
                    todo[i]->state = ENTRY_KEEP;
            }
            if (b.failed < 0 || transient(b.handler_rc))
                status = HM_EUNAVAIL;
        }
    }
    ack(c, arena, es, n);
    return status;
}

/* Parses [[id, fields], ...] of stream s into a new array. */
static entry_t *parse_entries(hm_arena_t *arena, const redisReply *list, size_t s, size_t *n)
{
    entry_t *es;

    *n = 0;
    if (list == NULL || list->type != REDIS_REPLY_ARRAY || list->elements == 0)
        return NULL;
    es = hm_arena_alloc(arena, sizeof *es * list->elements);
    for (size_t i = 0; i < list->elements; i++) {
        if (parse_entry(list->element[i], s, &es[*n]))
            (*n)++;
    }
    return es;
}

/* Index of a stream by name, or (size_t)-1. */
static size_t stream_index(const hm_consumer_t *c, const char *name)
{
    for (size_t i = 0; i < c->cfg.nstreams; i++) {
        if (strcmp(c->streams[i], name) == 0)
            return i;
    }
    return (size_t)-1;
}

/* New entries: XREADGROUP ... BLOCK ... STREAMS s1..sn > ... >. 0 or HM_EUNAVAIL. */
static int read_new(hm_consumer_t *c, hm_arena_t *arena)
{
    size_t ns = c->cfg.nstreams;
    const char **argv = hm_arena_alloc(arena, sizeof *argv * (10 + 2 * ns));
    char count[24], block[24];
    int argc = 0, status = 0;
    redisReply *r;

    snprintf(count, sizeof count, "%d", c->cfg.batch);
    snprintf(block, sizeof block, "%" PRId64, c->cfg.block_ms);
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = c->daemon;
    argv[argc++] = c->name;
    argv[argc++] = "COUNT";
    argv[argc++] = count;
    argv[argc++] = "BLOCK";
    argv[argc++] = block;
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < ns; i++)
        argv[argc++] = c->streams[i];
    for (size_t i = 0; i < ns; i++)
        argv[argc++] = ">";
    r = cmd(c, arena, argc, argv, NULL);
    if (r == NULL)
        return HM_EUNAVAIL;
    if (r->type == REDIS_REPLY_ERROR) {
        HM_WARN("consumer: %s: XREADGROUP refused: %s", c->daemon, r->str);
        check_nogroup(c, r);
        STAT_ADD(c, redis_errors, 1);
        return HM_EUNAVAIL;
    }
    if (r->type != REDIS_REPLY_ARRAY)
        return 0; /* nil: nothing new within BLOCK */
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sr = r->element[i];
        size_t s, n;
        entry_t *es;

        if (sr->type != REDIS_REPLY_ARRAY || sr->elements < 2 || !is_str(sr->element[0]))
            continue;
        s = stream_index(c, sr->element[0]->str);
        if (s == (size_t)-1)
            continue;
        es = parse_entries(arena, sr->element[1], s, &n);
        if (n > 0 && handle_entries(c, arena, es, n) != 0)
            status = HM_EUNAVAIL;
    }
    return status;
}

/* Own pending entries (failed or unacknowledged), oldest first: XREADGROUP ... STREAMS s <id>.
 * Each read counts as a delivery. 0 or HM_EUNAVAIL. */
static int retry_pending(hm_consumer_t *c, hm_arena_t *arena)
{
    char count[24];

    snprintf(count, sizeof count, "%d", c->cfg.batch);
    for (size_t s = 0; s < c->cfg.nstreams; s++) {
        const char *after = "0";

        for (int round = 0; round < CONS_PASS_READS; round++) {
            const char *argv[9] = {"XREADGROUP", "GROUP",   c->daemon,     c->name, "COUNT",
                                   count,        "STREAMS", c->streams[s], after};
            redisReply *r = cmd(c, arena, 9, argv, NULL);
            const redisReply *list;
            entry_t *es;
            size_t n;

            if (r == NULL)
                return HM_EUNAVAIL;
            if (r->type == REDIS_REPLY_ERROR) {
                check_nogroup(c, r);
                return HM_EUNAVAIL;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
                r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements < 2)
                break;
            list = r->element[0]->element[1];
            es = parse_entries(arena, list, s, &n);
            if (n == 0)
                break;
            after = hm_arena_strdup(arena, es[n - 1].id);
            if (handle_entries(c, arena, es, n) != 0)
                return HM_EUNAVAIL;
        }
    }
    return 0;
}

/* Removes consumers that hold nothing and have been idle for long (crashed replicas). */
static void gc_consumers(hm_consumer_t *c, hm_arena_t *arena, size_t s)
{
    const char *argv[4] = {"XINFO", "CONSUMERS", c->streams[s], c->daemon};
    redisReply *r = cmd(c, arena, 4, argv, NULL);

    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *info = r->element[i];
        const char *name = kv_str(info, "name");

        if (name[0] == '\0' || strcmp(name, c->name) == 0 || kv_int(info, "pending", 1) != 0 ||
            kv_int(info, "idle", 0) < CONS_GC_IDLE_MS)
            continue;
        const char *dargv[5] = {"XGROUP", "DELCONSUMER", c->streams[s], c->daemon, name};
        if (cmd(c, arena, 5, dargv, NULL) != NULL)
            HM_INFO("consumer: %s: removed idle consumer %s from %s", c->daemon, name,
                    c->streams[s]);
    }
}

/* Entries other consumers left idle for claim_idle_ms: XAUTOCLAIM. 0 or HM_EUNAVAIL. */
static int claim_idle(hm_consumer_t *c, hm_arena_t *arena)
{
    char idle[24], count[24];

    snprintf(idle, sizeof idle, "%" PRId64, c->cfg.claim_idle_ms);
    snprintf(count, sizeof count, "%d", c->cfg.batch);
    for (size_t s = 0; s < c->cfg.nstreams; s++) {
        const char *cursor = "0-0";

        for (int round = 0; round < CONS_PASS_READS; round++) {
            const char *argv[8] = {"XAUTOCLAIM", c->streams[s], c->daemon, c->name,
                                   idle,         cursor,        "COUNT",   count};
            redisReply *r = cmd(c, arena, 8, argv, NULL);
            entry_t *es;
            size_t n;

            if (r == NULL)
                return HM_EUNAVAIL;
            if (r->type == REDIS_REPLY_ERROR) {
                check_nogroup(c, r);
                return HM_EUNAVAIL;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0]))
                break;
            es = parse_entries(arena, r->element[1], s, &n);
            if (r->elements >= 3 && r->element[2]->type == REDIS_REPLY_ARRAY &&
                r->element[2]->elements > 0)
                HM_WARN("consumer: %s: %zu pending entries of %s were trimmed before they "
                        "were processed",
                        c->daemon, r->element[2]->elements, c->streams[s]);
            if (n > 0) {
                STAT_ADD(c, claimed, n);
                HM_INFO("consumer: %s: claimed %zu idle entries of %s", c->daemon, n,
                        c->streams[s]);
                if (handle_entries(c, arena, es, n) != 0)
                    return HM_EUNAVAIL;
            }
            cursor = hm_arena_strdup(arena, r->element[0]->str);
            if (strcmp(cursor, "0-0") == 0)
                break;
        }
        gc_consumers(c, arena, s);
    }
    return 0;
}

/* Lag and pending of the group, summed over the streams (XINFO GROUPS). */
static void refresh_gauges(hm_consumer_t *c, hm_arena_t *arena)
{
    int64_t lag = 0, pending = 0;
    bool lag_known = true;

    for (size_t s = 0; s < c->cfg.nstreams; s++) {
        const char *argv[3] = {"XINFO", "GROUPS", c->streams[s]};
        redisReply *r = cmd(c, arena, 3, argv, NULL);
        bool found = false;

        if (r == NULL || r->type != REDIS_REPLY_ARRAY)
            return;
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *g = r->element[i];
            const redisReply *l;

            if (strcmp(kv_str(g, "name"), c->daemon) != 0)
                continue;
            found = true;
            pending += kv_int(g, "pending", 0);
            l = kv_get(g, "lag");
            if (l != NULL && l->type == REDIS_REPLY_INTEGER)
                lag += l->integer;
            else
                lag_known = false;
        }
        if (!found)
            lag_known = false;
    }
    atomic_store_explicit(&c->st.lag, lag_known ? lag : -1, memory_order_relaxed);
    atomic_store_explicit(&c->st.pending, pending, memory_order_relaxed);
}

/* Milliseconds of a stream entry id ("1700000000000-3"); -1 when malformed. */
static int64_t entry_ms(const char *id)
{
    char *end;
    long long ms = strtoll(id, &end, 10);
    return end != id && *end == '-' && ms >= 0 ? (int64_t)ms : -1;
}

/*
 * Deletes the processed_events rows no redelivery can need any more: an event processed
 * before the first entry still held by every stream this consumer reads was added before
 * that entry, so its own entry has been trimmed (MAXLEN) and cannot be delivered or replayed
 * again. The cut-off is that entry's time (Redis's clock; "now" for an empty stream) minus a
 * margin. Assumes this consumer is the only one of its database (one per daemon). 0 or an
 * error (logged by the caller's backoff).
 */
static int prune_processed(hm_consumer_t *c, hm_arena_t *arena)
{
    const char *targv[1] = {"TIME"};
    redisReply *t = cmd(c, arena, 1, targv, NULL);
    int64_t cutoff;
    int rc;

    if (t == NULL || t->type != REDIS_REPLY_ARRAY || t->elements < 1 || !is_str(t->element[0]))
        return HM_EUNAVAIL;
    cutoff = strtoll(t->element[0]->str, NULL, 10) * 1000;
    for (size_t s = 0; s < c->cfg.nstreams; s++) {
        const char *argv[6] = {"XRANGE", c->streams[s], "-", "+", "COUNT", "1"};
        redisReply *r = cmd(c, arena, 6, argv, NULL);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY)
            return HM_EUNAVAIL;
        if (r->elements > 0 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements > 0 && is_str(r->element[0]->element[0])) {
            int64_t ms = entry_ms(r->element[0]->element[0]->str);
            if (ms < 0)
                return HM_EINTERNAL;
            if (ms < cutoff)
                cutoff = ms;
        }
    }
    cutoff -= CONS_PRUNE_MARGIN_MS;
    const char *params[1] = {hm_db_param_int64(arena, cutoff)};
    PGresult *res = NULL;
    rc = hm_db_exec_arena(c->db, arena, &processed_prune, params, NULL, NULL, &res);
    if (rc != 0) {
        STAT_ADD(c, db_errors, 1);
        return rc;
    }
    long long n = atoll(PQcmdTuples(res));
    if (n > 0) {
        STAT_ADD(c, pruned, (uint64_t)n);
        HM_INFO("consumer: %s: pruned %lld processed_events row(s) older than the streams",
                c->daemon, n);
    }
    return 0;
}

static void *consumer_main(void *arg)
{
    hm_consumer_t *c = arg;
    int64_t claim_every = c->cfg.claim_idle_ms / 2;
    int64_t next_retry = 0, next_claim = 0, next_stats = 0, next_prune = 0, backoff = 0;
    hm_arena_t arena;

    if (claim_every > 5000)
        claim_every = 5000;
    if (claim_every < 100)
        claim_every = 100;
    hm_arena_init(&arena, 64 * 1024);
    HM_INFO("consumer: %s: %s started on %zu stream(s)", c->daemon, c->name, c->cfg.nstreams);
    while (!cons_stopping(c)) {
        int64_t now = mono_ms();
        int rc = ensure_groups(c, &arena);

        if (rc == 0 && now >= next_retry) {
            rc = retry_pending(c, &arena);
            next_retry = now + c->cfg.retry_ms;
        }
        if (rc == 0 && now >= next_claim) {
            rc = claim_idle(c, &arena);
            next_claim = now + claim_every;
        }
        if (rc == 0 && now >= next_stats) {
            refresh_gauges(c, &arena);
            next_stats = now + c->cfg.stats_interval_ms;
        }
        if (rc == 0 && c->cfg.prune_interval_ms > 0 && now >= next_prune) {
            if (prune_processed(c, &arena) != 0)
                HM_WARN("consumer: %s: pruning processed_events failed; next try in %lld ms",
                        c->daemon, (long long)c->cfg.prune_interval_ms);
            next_prune = now + c->cfg.prune_interval_ms;
        }
        hm_arena_reset(&arena);
        if (rc == 0)
            rc = read_new(c, &arena);
        hm_arena_reset(&arena);
        if (rc == 0) {
            backoff = 0;
            continue;
        }
        backoff = backoff == 0 ? CONS_BACKOFF_MIN_MS : backoff * 2;
        if (backoff > CONS_BACKOFF_MAX_MS)
            backoff = CONS_BACKOFF_MAX_MS;
        cons_wait(c, backoff);
    }
    HM_INFO("consumer: %s: %s stopped", c->daemon, c->name);
    hm_arena_deinit(&arena);
    return NULL;
}

static void consumer_free(hm_consumer_t *c)
{
    for (size_t i = 0; c->streams != NULL && i < c->cfg.nstreams; i++)
        free(c->streams[i]);
    free(c->streams);
    free(c->group_ready);
    free(c->want);
    hm_db_destroy(c->db);
    hm_cache_destroy(c->cache);
    free(c->daemon);
    free(c->name);
    free(c->dlq);
    free(c);
}

hm_consumer_t *hm_consumer_start(const hm_consumer_config_t *cfg)
{
    static atomic_uint seq;
    pthread_condattr_t ca;
    hm_consumer_t *c;
    char host[64], buf[160];

    if (cfg->daemon == NULL || cfg->daemon[0] == '\0' || cfg->redis_addr == NULL ||
        cfg->redis_addr[0] == '\0' || cfg->nstreams == 0 || cfg->streams == NULL ||
        cfg->handle == NULL) {
        HM_ERROR("consumer: daemon, redis address, streams and handler are required");
        return NULL;
    }
    c = hm_xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->daemon = hm_xstrdup(cfg->daemon);
    if (cfg->consumer != NULL && cfg->consumer[0] != '\0') {
        c->name = hm_xstrdup(cfg->consumer);
    } else {
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "host");
        host[sizeof host - 1] = '\0';
        snprintf(buf, sizeof buf, "%s-%ld-%u", host, (long)getpid(), atomic_fetch_add(&seq, 1));
        c->name = hm_xstrdup(buf);
    }
    snprintf(buf, sizeof buf, "%s%s", HM_BUS_DLQ_PREFIX, cfg->daemon);
    c->dlq = hm_xstrdup(buf);
    c->streams = hm_xcalloc(cfg->nstreams, sizeof *c->streams);
    for (size_t i = 0; i < cfg->nstreams; i++)
        c->streams[i] = hm_xstrdup(cfg->streams[i]);
    c->group_ready = hm_xcalloc(cfg->nstreams, sizeof *c->group_ready);
    if (cfg->types != NULL) {
        c->want = hm_xcalloc(hm_event_ntypes + 1, sizeof *c->want);
        for (size_t i = 0; i < cfg->ntypes; i++) {
            const hm_event_type_t *t = hm_event_type_lookup(cfg->types[i]);

            if (t == NULL) {
                HM_ERROR("consumer: %s: unknown event type \"%s\" in its types", cfg->daemon,
                         cfg->types[i]);
                consumer_free(c);
                return NULL;
            }
            c->want[t->index] = true;
        }
    }
    c->cfg.daemon = c->daemon;
    c->cfg.consumer = c->name;
    c->cfg.database_url = NULL;
    c->cfg.redis_addr = NULL;
    c->cfg.streams = NULL;
    c->cfg.types = NULL;
#define DEFAULT(f, v)                                                                              \
    if (c->cfg.f <= 0)                                                                             \
    c->cfg.f = (v)
    DEFAULT(redis_timeout_ms, CONS_DEFAULT_REDIS_MS);
    DEFAULT(statement_timeout_ms, CONS_DEFAULT_STMT_MS);
    DEFAULT(batch, CONS_DEFAULT_BATCH);
    DEFAULT(block_ms, CONS_DEFAULT_BLOCK_MS);
    DEFAULT(max_deliveries, CONS_DEFAULT_DELIVERIES);
    DEFAULT(claim_idle_ms, CONS_DEFAULT_CLAIM_MS);
    DEFAULT(retry_ms, CONS_DEFAULT_RETRY_MS);
    DEFAULT(stats_interval_ms, CONS_DEFAULT_STATS_MS);
    if (c->cfg.prune_interval_ms == 0)
        c->cfg.prune_interval_ms = CONS_DEFAULT_PRUNE_MS;
    DEFAULT(dlq_maxlen, CONS_DEFAULT_DLQ_MAXLEN);
#undef DEFAULT
    c->db = hm_db_create(cfg->database_url, c->cfg.statement_timeout_ms);
    /* A blocked XREADGROUP must not count as a timeout. */
    c->cache = hm_cache_create(cfg->redis_addr, c->cfg.redis_timeout_ms + c->cfg.block_ms);
    if (c->db == NULL || c->cache == NULL) {
        consumer_free(c);
        return NULL;
    }
    atomic_store(&c->st.lag, -1);
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&c->thread, NULL, consumer_main, c) != 0) {
        HM_ERROR("consumer: %s: cannot start its thread", c->daemon);
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        consumer_free(c);
        return NULL;
    }
    return c;
}

void hm_consumer_stop(hm_consumer_t *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    consumer_free(c);
}

const char *hm_consumer_name(const hm_consumer_t *c)
{
    return c->name;
}

void hm_consumer_stats(const hm_consumer_t *consumer, hm_consumer_stats_t *out)
{
    hm_consumer_t *c = (hm_consumer_t *)consumer; /* atomic loads take non-const pointers */

#define LOAD(f) out->f = atomic_load_explicit(&c->st.f, memory_order_relaxed)
    LOAD(delivered);
    LOAD(processed);
    LOAD(duplicates);
    LOAD(suppressed);
    LOAD(skipped);
    LOAD(failures);
    LOAD(dead_letters);
    LOAD(claimed);
    LOAD(batches);
    LOAD(redis_errors);
    LOAD(db_errors);
    LOAD(pruned);
    LOAD(lag);
    LOAD(pending);
#undef LOAD
}

/* ---- operations ---- */

static int cmp_stream(const void *a, const void *b)
{
    return strcmp(((const hm_bus_stream_t *)a)->name, ((const hm_bus_stream_t *)b)->name);
}

/* First or last entry id of an XINFO STREAM reply's first-entry/last-entry. */
static const char *entry_id_of(hm_arena_t *arena, const redisReply *e)
{
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 1 || !is_str(e->element[0]))
        return "";
    return hm_arena_strdup(arena, e->element[0]->str);
}

int hm_bus_list_streams(hm_cache_t *cache, hm_arena_t *arena, const char *prefix,
                        hm_bus_stream_t **out, size_t *n)
{
    const char *pattern = hm_arena_printf(arena, "%s*", prefix != NULL ? prefix : "");
    const char *cursor = "0";
    hm_bus_stream_t *list = NULL;
    size_t cap = 0, count = 0;

    *out = NULL;
    *n = 0;
    do {
        const char *argv[8] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000", "TYPE", "stream"};
        redisReply *r = hm_cache_command_argv(cache, arena, 8, argv, NULL);
        const redisReply *keys;

        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0]))
            return HM_EUNAVAIL;
        cursor = hm_arena_strdup(arena, r->element[0]->str);
        keys = r->element[1];
        for (size_t i = 0; keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
            if (!is_str(keys->element[i]))
                continue;
            if (count == cap) {
                hm_bus_stream_t *bigger;

                cap = cap ? cap * 2 : 16;
                bigger = hm_arena_zalloc(arena, sizeof *bigger * cap);
                if (count > 0)
                    memcpy(bigger, list, sizeof *list * count);
                list = bigger;
            }
            list[count++].name = hm_arena_strdup(arena, keys->element[i]->str);
        }
    } while (strcmp(cursor, "0") != 0);

    for (size_t i = 0; i < count; i++) {
        hm_bus_stream_t *s = &list[i];
        const char *iargv[3] = {"XINFO", "STREAM", s->name};
        const char *gargv[3] = {"XINFO", "GROUPS", s->name};
        redisReply *info = hm_cache_command_argv(cache, arena, 3, iargv, NULL);
        redisReply *groups;

        if (info == NULL)
            return HM_EUNAVAIL;
        s->length = kv_int(info, "length", 0);
        s->first_id = entry_id_of(arena, kv_get(info, "first-entry"));
        s->last_id = entry_id_of(arena, kv_get(info, "last-entry"));
        groups = hm_cache_command_argv(cache, arena, 3, gargv, NULL);
        if (groups == NULL)
            return HM_EUNAVAIL;
        if (groups->type != REDIS_REPLY_ARRAY || groups->elements == 0)
            continue;
        s->groups = hm_arena_zalloc(arena, sizeof *s->groups * groups->elements);
        for (size_t g = 0; g < groups->elements; g++) {
            const redisReply *gi = groups->element[g];
            const redisReply *lag = kv_get(gi, "lag");
            hm_bus_group_t *out_g = &s->groups[s->ngroups++];

            out_g->name = hm_arena_strdup(arena, kv_str(gi, "name"));
            out_g->consumers = kv_int(gi, "consumers", 0);
            out_g->pending = kv_int(gi, "pending", 0);
            out_g->lag = lag != NULL && lag->type == REDIS_REPLY_INTEGER ? lag->integer : -1;
            out_g->last_id = hm_arena_strdup(arena, kv_str(gi, "last-delivered-id"));
        }
    }
    if (count > 1)
        qsort(list, count, sizeof *list, cmp_stream);
    *out = list;
    *n = count;
    return 0;
}

/* Fills a dead letter from a DLQ entry [id, [field, value, ...]]. */
static bool parse_dead_letter(hm_arena_t *arena, const redisReply *r, hm_bus_dead_letter_t *d)
{
    const redisReply *f;

    memset(d, 0, sizeof *d);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0]) ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return false;
    f = r->element[1];
    d->dlq_id = hm_arena_strdup(arena, r->element[0]->str);
    d->stream = d->entry_id = d->event_id = d->type = d->error = "";
    d->env = (const uint8_t *)"";
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];

        if (!is_str(k) || !is_str(v))
            continue;
        if (strcmp(k->str, "stream") == 0)
            d->stream = hm_arena_strdup(arena, v->str);
        else if (strcmp(k->str, "entry") == 0)
            d->entry_id = hm_arena_strdup(arena, v->str);
        else if (strcmp(k->str, "id") == 0)
            d->event_id = hm_arena_strdup(arena, v->str);
        else if (strcmp(k->str, "type") == 0)
            d->type = hm_arena_strdup(arena, v->str);
        else if (strcmp(k->str, "error") == 0)
            d->error = hm_arena_strdup(arena, v->str);
        else if (strcmp(k->str, "attempts") == 0)
            d->attempts = strtoll(v->str, NULL, 10);
        else if (strcmp(k->str, "env") == 0) {
            d->env = hm_arena_memdup(arena, v->str, v->len + 1);
            d->env_len = v->len;
        }
    }
    return true;
}

int hm_bus_dlq_list(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *after,
                    size_t max, hm_bus_dead_letter_t **out, size_t *n)
{
    const char *key = hm_arena_printf(arena, "%s%s", HM_BUS_DLQ_PREFIX, daemon);
    const char *start =
        after != NULL && after[0] != '\0' ? hm_arena_printf(arena, "(%s", after) : "-";
    const char *count = hm_arena_printf(arena, "%zu", max > 0 ? max : 100);
    const char *argv[6] = {"XRANGE", key, start, "+", "COUNT", count};
    redisReply *r = hm_cache_command_argv(cache, arena, 6, argv, NULL);

    *out = NULL;
    *n = 0;
    if (r == NULL)
        return HM_EUNAVAIL;
    if (r->type == REDIS_REPLY_ERROR)
        return HM_EINVAL; /* a malformed `after` */
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return 0;
    *out = hm_arena_zalloc(arena, sizeof **out * r->elements);
    for (size_t i = 0; i < r->elements; i++) {
        if (parse_dead_letter(arena, r->element[i], &(*out)[*n]))
            (*n)++;
    }
    return 0;
}

int hm_bus_dlq_requeue(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *dlq_id,
                       long long maxlen)
{
    const char *key = hm_arena_printf(arena, "%s%s", HM_BUS_DLQ_PREFIX, daemon);
    const char *rargv[4] = {"XRANGE", key, dlq_id, dlq_id};
    const char *ml = hm_arena_printf(arena, "%lld", maxlen > 0 ? maxlen : BUS_DEFAULT_MAXLEN);
    hm_bus_dead_letter_t d;
    redisReply *r;

    r = hm_cache_command_argv(cache, arena, 4, rargv, NULL);
    if (r == NULL)
        return HM_EUNAVAIL;
    if (r->type == REDIS_REPLY_ERROR)
        return HM_EINVAL;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return HM_ENOTFOUND;
    if (!parse_dead_letter(arena, r->element[0], &d) ||
        strncmp(d.stream, HM_BUS_STREAM_PREFIX, strlen(HM_BUS_STREAM_PREFIX)) != 0 ||
        d.env_len == 0)
        return HM_EINVAL;
    {
        const char *argv[12] = {"XADD", d.stream,   "MAXLEN", "~",    ml,    "*",
                                "id",   d.event_id, "type",   d.type, "env", (const char *)d.env};
        size_t argvlen[12];

        for (int i = 0; i < 11; i++)
            argvlen[i] = strlen(argv[i]);
        argvlen[11] = d.env_len;
        r = hm_cache_command_argv(cache, arena, 12, argv, argvlen);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            return HM_EUNAVAIL;
    }
    {
        const char *argv[3] = {"XDEL", key, dlq_id};

        r = hm_cache_command_argv(cache, arena, 3, argv, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            return HM_EUNAVAIL; /* requeued but still listed: a second requeue is harmless */
    }
    return 0;
}

/* Parses "YYYY-MM-DDTHH:MM:SS[.fff]Z" into ms since the epoch. */
static bool parse_utc(const char *s, int64_t *ms)
{
    struct tm tm;
    const char *p;
    int64_t frac = 0, scale = 100;

    memset(&tm, 0, sizeof tm);
    p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        return false;
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++) {
            frac += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (strcmp(p, "Z") != 0)
        return false;
    *ms = (int64_t)timegm(&tm) * 1000 + frac;
    return true;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

int hm_bus_replay(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *stream,
                  const char *from)
{
    const char *id = NULL, *dash;
    int64_t ms = -1;
    redisReply *r;

    if (from == NULL || daemon == NULL || stream == NULL)
        return HM_EINVAL;
    if (strcmp(from, "0") == 0 || strcmp(from, "start") == 0)
        id = "0";
    else if (strcmp(from, "$") == 0 || strcmp(from, "end") == 0)
        id = "$";
    else if (from[0] == '@' && all_digits(from + 1, strlen(from + 1)))
        ms = strtoll(from + 1, NULL, 10);
    else if ((dash = strchr(from, '-')) != NULL && all_digits(from, (size_t)(dash - from)) &&
             all_digits(dash + 1, strlen(dash + 1)))
        id = from;
    else if (!parse_utc(from, &ms))
        return HM_EINVAL;
    if (id == NULL) {
        /* Entries added at or after ms: the position just before ms-0. */
        id = ms <= 0 ? "0" : hm_arena_printf(arena, "%" PRId64 "-18446744073709551615", ms - 1);
    }
    {
        const char *argv[5] = {"XGROUP", "SETID", stream, daemon, id};

        r = hm_cache_command_argv(cache, arena, 5, argv, NULL);
    }
    if (r == NULL)
        return HM_EUNAVAIL;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOGROUP", 7) == 0 || strstr(r->str, "requires the key to exist"))
            return HM_ENOTFOUND;
        return HM_EINVAL;
    }
    return 0;
}
