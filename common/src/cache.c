/*
 * cache.c - Redis per worker thread (hm/cache.h) over hiredis' blocking API with connect and
 * command timeouts. Any transport error frees the context and starts a backoff during which
 * calls fail at once, so a dead or hung Redis costs a call at most one timeout.
 *
 * Replies handed to callers are freed by their arena (freeReplyObject as a cleanup), so a
 * hit's value is used in place without a copy.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "hm/cache.h"
#include "hm/err.h"
#include "hm/log.h"

#define CACHE_DEFAULT_TIMEOUT_MS 200
#define CACHE_BACKOFF_MIN_MS     100
#define CACHE_BACKOFF_MAX_MS     2000
/* DEL takes keys in batches of this many arguments. */
#define CACHE_DEL_BATCH 64

struct hm_cache {
    char *host;             /* owned; host name, IP or unix socket path; NULL = disabled */
    int port;               /* TCP port; 0 for a unix socket */
    struct timeval timeout; /* connect and command timeout */
    redisContext *ctx;      /* owned; NULL while disconnected */
    int64_t retry_at_ms;    /* monotonic ms before which no connection is attempted */
    int64_t backoff_ms;     /* last pause; 0 after a command succeeded */
    uint64_t rng;           /* xorshift64 state for jitter; never 0 */
    bool had_connection;    /* a connection was established once (reconnect counting) */
    unsigned failures;      /* failures in a row (logging: the first is a warning) */
    struct {                /* written by the owning thread, read by any (relaxed) */
        _Atomic uint64_t hits, misses, errors, reconnects, connected;
    } st;
};

#define STAT_INC(c, f) atomic_fetch_add_explicit(&(c)->st.f, 1, memory_order_relaxed)

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t jitter(hm_cache_t *c, int64_t base)
{
    uint64_t x = c->rng;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return base / 2 + (int64_t)(x % (uint64_t)(base / 2 + 1));
}

/* Splits "host:port" / "[v6]:port" / "/path"; 0 or HM_EINVAL. */
static int parse_addr(const char *addr, char **host, int *port)
{
    const char *colon;
    const char *h = addr;
    size_t hlen;
    long p = 0;

    if (addr[0] == '/') {
        *host = hm_xstrdup(addr);
        *port = 0;
        return 0;
    }
    colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || colon[1] == '\0')
        return HM_EINVAL;
    for (const char *d = colon + 1; *d != '\0'; d++) {
        if (*d < '0' || *d > '9' || p > 65535)
            return HM_EINVAL;
        p = p * 10 + (*d - '0');
    }
    if (p < 1 || p > 65535)
        return HM_EINVAL;
    hlen = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (hlen < 3 || colon[-1] != ']')
            return HM_EINVAL;
        h++;
        hlen -= 2;
    }
    *host = hm_xmalloc(hlen + 1);
    memcpy(*host, h, hlen);
    (*host)[hlen] = '\0';
    *port = (int)p;
    return 0;
}

hm_cache_t *hm_cache_create(const char *addr, int64_t timeout_ms)
{
    hm_cache_t *c = hm_xcalloc(1, sizeof *c);

    if (timeout_ms <= 0)
        timeout_ms = CACHE_DEFAULT_TIMEOUT_MS;
    c->timeout.tv_sec = (time_t)(timeout_ms / 1000);
    c->timeout.tv_usec = (suseconds_t)((timeout_ms % 1000) * 1000);
    c->rng = ((uint64_t)(uintptr_t)c ^ (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull) | 1;
    if (addr != NULL && addr[0] != '\0' && parse_addr(addr, &c->host, &c->port) != 0) {
        HM_ERROR("redis: bad address \"%s\": want host:port or a socket path", addr);
        free(c);
        return NULL;
    }
    return c;
}

static void drop_ctx(hm_cache_t *c)
{
    if (c->ctx == NULL)
        return;
    redisFree(c->ctx);
    c->ctx = NULL;
    atomic_store_explicit(&c->st.connected, 0, memory_order_relaxed);
}

void hm_cache_destroy(hm_cache_t *c)
{
    if (c == NULL)
        return;
    drop_ctx(c);
    free(c->host);
    free(c);
}

bool hm_cache_available(const hm_cache_t *c)
{
    return c != NULL && c->host != NULL && (c->ctx != NULL || now_ms() >= c->retry_at_ms);
}

/* Counts a transport failure, frees the context and starts (or lengthens) the backoff. */
static void fail(hm_cache_t *c, const char *what, const char *why_in)
{
    char why[128];

    /* why_in may be the context's errstr, which drop_ctx() frees. */
    snprintf(why, sizeof why, "%s", why_in);
    STAT_INC(c, errors);
    drop_ctx(c);
    c->backoff_ms = c->backoff_ms == 0 ? CACHE_BACKOFF_MIN_MS : c->backoff_ms * 2;
    if (c->backoff_ms > CACHE_BACKOFF_MAX_MS)
        c->backoff_ms = CACHE_BACKOFF_MAX_MS;
    c->retry_at_ms = now_ms() + jitter(c, c->backoff_ms);
    if (c->failures++ == 0)
        HM_WARN("redis: %s failed: %s; serving without cache", what, why);
    else
        HM_DEBUG("redis: %s failed: %s", what, why);
}

/* A connected context, or NULL (disabled, backing off, or the attempt failed). */
static redisContext *get_ctx(hm_cache_t *c)
{
    redisContext *ctx;

    if (c == NULL || c->host == NULL)
        return NULL;
    if (c->ctx != NULL)
        return c->ctx;
    if (now_ms() < c->retry_at_ms) {
        STAT_INC(c, errors);
        return NULL;
    }
    if (c->port == 0)
        ctx = redisConnectUnixWithTimeout(c->host, c->timeout);
    else
        ctx = redisConnectWithTimeout(c->host, c->port, c->timeout);
    if (ctx == NULL || ctx->err != 0) {
        char why[160];

        snprintf(why, sizeof why, "%s", ctx != NULL ? ctx->errstr : "out of memory");
        if (ctx != NULL)
            redisFree(ctx);
        fail(c, "connect", why);
        return NULL;
    }
    if (redisSetTimeout(ctx, c->timeout) != REDIS_OK) {
        c->ctx = ctx;
        fail(c, "set timeout", ctx->errstr);
        return NULL;
    }
    if (c->port != 0)
        (void)redisEnableKeepAlive(ctx);
    c->ctx = ctx;
    atomic_store_explicit(&c->st.connected, 1, memory_order_relaxed);
    if (c->had_connection || c->failures > 0)
        STAT_INC(c, reconnects);
    if (c->failures > 0)
        HM_INFO("redis: reconnected after %u failure(s)", c->failures);
    c->had_connection = true;
    return ctx;
}

/* After a reply arrived: the connection works, so the next failure starts a fresh backoff. */
static void succeeded(hm_cache_t *c)
{
    c->backoff_ms = 0;
    c->failures = 0;
}

static void free_reply(void *r)
{
    freeReplyObject(r);
}

/* Runs one command (a NULL reply means the transport failed: handled here). */
static redisReply *run_argv(hm_cache_t *c, const char *what, int argc, const char **argv,
                            const size_t *argvlen)
{
    redisContext *ctx = get_ctx(c);
    redisReply *r;

    if (ctx == NULL)
        return NULL;
    r = redisCommandArgv(ctx, argc, argv, argvlen);
    if (r == NULL) {
        fail(c, what, ctx->errstr[0] ? ctx->errstr : "no reply");
        return NULL;
    }
    succeeded(c);
    return r;
}

char *hm_cache_key(hm_arena_t *arena, const char *daemon, const char *entity, const char *id)
{
    return hm_arena_printf(arena, "hm:%s:%s:%s", daemon, entity, id);
}

int hm_cache_get(hm_cache_t *c, hm_arena_t *arena, const char *key, char **val, size_t *len)
{
    const char *argv[2] = {"GET", key};
    redisReply *r;

    *val = NULL;
    if (len != NULL)
        *len = 0;
    if (c == NULL || c->host == NULL)
        return HM_ENOTFOUND;
    r = run_argv(c, "get", 2, argv, NULL);
    if (r == NULL) {
        STAT_INC(c, misses);
        return HM_ENOTFOUND;
    }
    if (r->type == REDIS_REPLY_STRING) {
        hm_arena_defer(arena, free_reply, r);
        *val = r->str;
        if (len != NULL)
            *len = r->len;
        STAT_INC(c, hits);
        return 0;
    }
    if (r->type != REDIS_REPLY_NIL) {
        STAT_INC(c, errors);
        HM_DEBUG("redis: get answered with reply type %d", r->type);
    }
    freeReplyObject(r);
    STAT_INC(c, misses);
    return HM_ENOTFOUND;
}

int hm_cache_set(hm_cache_t *c, const char *key, const void *val, size_t len, int64_t ttl_ms)
{
    char ttl[24];
    const char *argv[5] = {"SET", key, val, "PX", ttl};
    size_t argvlen[5] = {3, strlen(key), len, 2, 0};
    redisReply *r;
    int rc = 0;

    if (ttl_ms <= 0)
        return HM_EINVAL;
    if (c == NULL || c->host == NULL)
        return HM_EUNAVAIL;
    argvlen[4] = (size_t)snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    r = run_argv(c, "set", 5, argv, argvlen);
    if (r == NULL)
        return HM_EUNAVAIL;
    if (r->type == REDIS_REPLY_ERROR) {
        STAT_INC(c, errors);
        HM_WARN("redis: set refused: %s", r->str);
        rc = HM_EUNAVAIL;
    }
    freeReplyObject(r);
    return rc;
}

int hm_cache_del(hm_cache_t *c, const char *const *keys, size_t n)
{
    const char *argv[CACHE_DEL_BATCH + 1];

    if (c == NULL || c->host == NULL)
        return n == 0 ? 0 : HM_EUNAVAIL;
    argv[0] = "DEL";
    for (size_t done = 0; done < n;) {
        size_t k = n - done < CACHE_DEL_BATCH ? n - done : CACHE_DEL_BATCH;
        redisReply *r;
        bool refused;

        for (size_t i = 0; i < k; i++)
            argv[i + 1] = keys[done + i];
        r = run_argv(c, "del", (int)k + 1, argv, NULL);
        if (r == NULL) {
            HM_WARN("redis: invalidation of %zu keys failed; they expire with their TTL", n);
            return HM_EUNAVAIL;
        }
        refused = r->type == REDIS_REPLY_ERROR;
        if (refused) {
            STAT_INC(c, errors);
            HM_WARN("redis: del refused: %s", r->str);
        }
        freeReplyObject(r);
        if (refused)
            return HM_EUNAVAIL;
        done += k;
    }
    return 0;
}

redisReply *hm_cache_command(hm_cache_t *c, hm_arena_t *arena, const char *fmt, ...)
{
    redisContext *ctx = get_ctx(c);
    redisReply *r;
    va_list ap;

    if (ctx == NULL)
        return NULL;
    va_start(ap, fmt);
    r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        fail(c, "command", ctx->errstr[0] ? ctx->errstr : "no reply");
        return NULL;
    }
    succeeded(c);
    hm_arena_defer(arena, free_reply, r);
    return r;
}

redisReply *hm_cache_command_argv(hm_cache_t *c, hm_arena_t *arena, int argc, const char **argv,
                                  const size_t *argvlen)
{
    redisReply *r = run_argv(c, "command", argc, argv, argvlen);

    if (r != NULL)
        hm_arena_defer(arena, free_reply, r);
    return r;
}

void hm_cache_stats(const hm_cache_t *c, hm_cache_stats_t *out)
{
    hm_cache_t *m = (hm_cache_t *)c; /* atomic loads take non-const pointers in C17 */

    out->hits = atomic_load_explicit(&m->st.hits, memory_order_relaxed);
    out->misses = atomic_load_explicit(&m->st.misses, memory_order_relaxed);
    out->errors = atomic_load_explicit(&m->st.errors, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&m->st.reconnects, memory_order_relaxed);
    out->connected = atomic_load_explicit(&m->st.connected, memory_order_relaxed);
}
