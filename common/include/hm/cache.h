/*
 * hm/cache.h - Redis for handlers: one connection per worker thread, used as a cache and a
 * coordination tool, never as the only copy of anything.
 *
 * A Redis failure never fails a call: a get that cannot reach Redis is a miss, a set or a
 * delete that cannot is counted and logged. The connection is opened lazily with a connect
 * timeout, commands run with a command timeout, and after any error the connection is freed
 * and reconnecting backs off (up to about 2 s) while calls fail at once. Keys follow
 * hm:<daemon>:<entity>:<id> (hm_cache_key), and every cached value has a TTL.
 *
 * An hm_cache_t belongs to one thread; only hm_cache_stats() may be called from another.
 * The process must ignore SIGPIPE (the runtime does): hiredis writes to sockets that Redis may
 * have closed.
 */
#ifndef HM_CACHE_H
#define HM_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "hm/arena.h"

typedef struct hm_cache hm_cache_t;

/* Counters for metrics; monotonic except `connected`. */
typedef struct hm_cache_stats {
    uint64_t hits;       /* gets that found the key */
    uint64_t misses;     /* gets that did not, Redis failures included (not when disabled) */
    uint64_t errors;     /* commands that failed for want of Redis (I/O, timeout, backoff) */
    uint64_t reconnects; /* connections established after a failure or a lost connection */
    uint64_t connected;  /* 1 while a connection is open, else 0 */
} hm_cache_stats_t;

/*
 * Creates a handle for `addr` ("host:port", "[v6]:port" or a unix socket path starting with
 * '/') without connecting; NULL or "" gives a disabled cache, where gets miss and sets do
 * nothing. `timeout_ms` bounds connecting and each command (<= 0: 200 ms). Returns NULL when
 * addr is malformed.
 */
hm_cache_t *hm_cache_create(const char *addr, int64_t timeout_ms);

/* Closes the connection and frees the handle. NULL is a no-op. */
void hm_cache_destroy(hm_cache_t *c);

/* True when a Redis is configured and not known to be down (not backing off). */
bool hm_cache_available(const hm_cache_t *c);

/*
 * "hm:<daemon>:<entity>:<id>", allocated in the arena.
 */
char *hm_cache_key(hm_arena_t *arena, const char *daemon, const char *entity, const char *id);

/*
 * GET key. Returns 0 with *val (NUL-terminated, binary-safe with *len; lives until the arena's
 * next reset) on a hit, HM_ENOTFOUND on a miss, and HM_ENOTFOUND too when Redis is disabled,
 * down or answers with an error (counted in errors).
 */
int hm_cache_get(hm_cache_t *c, hm_arena_t *arena, const char *key, char **val, size_t *len);

/*
 * SET key val PX ttl_ms. Returns 0, HM_EINVAL for ttl_ms <= 0 (every cached value expires),
 * or HM_EUNAVAIL when Redis is disabled or failed (counted; callers normally ignore it).
 */
int hm_cache_set(hm_cache_t *c, const char *key, const void *val, size_t len, int64_t ttl_ms);

/*
 * DEL of n keys, for invalidation after a commit. 0, or HM_EUNAVAIL when Redis is disabled or
 * failed (the entries then live until their TTL; logged at warn).
 */
int hm_cache_del(hm_cache_t *c, const char *const *keys, size_t n);

/*
 * Any command, printf-style as redisCommand (%s for C strings, %b for binary with a size_t
 * length). Returns the reply, error replies included (type REDIS_REPLY_ERROR), freed by the
 * arena's next reset; NULL when Redis is disabled, down or failed.
 */
redisReply *hm_cache_command(hm_cache_t *c, hm_arena_t *arena, const char *fmt, ...);

/* The same with an argument vector (binary-safe; argvlen NULL = strlen of each). */
redisReply *hm_cache_command_argv(hm_cache_t *c, hm_arena_t *arena, int argc, const char **argv,
                                  const size_t *argvlen);

/* Snapshot of the counters; callable from any thread. */
void hm_cache_stats(const hm_cache_t *c, hm_cache_stats_t *out);

#endif
