/*
 * hm/ratelimit.h - per-caller rate limits: a token bucket per (method group, principal) kept
 * in Redis and updated by one Lua script, so the check is atomic and every instance of a
 * daemon draws from the same buckets.
 *
 * HM_RATE_LIMITS declares the groups, "group=rate/period[:burst],...", for example
 * "default=50/1s:100,write=10/1s:20": the bucket of a group holds at most `burst` tokens
 * (default: `rate`) and refills at `rate` tokens per `period`, continuously. A call takes one
 * token from hm:<daemon>:rl:<group>:<principal>; with none left it is refused with the time
 * until the next token. A method whose group has no rule of its own draws from the "default"
 * rule's bucket; without a "default" rule such methods are not limited. An empty
 * HM_RATE_LIMITS turns limiting off.
 *
 * The script reads the clock with Redis TIME, so instances with skewed clocks agree, refills
 * by the time elapsed since the bucket's last use, takes a token and sets the bucket to
 * expire when it would be full again (a missing bucket is a full one). It runs with EVALSHA;
 * after NOSCRIPT (a Redis restart or SCRIPT FLUSH) it is loaded again with SCRIPT LOAD.
 *
 * Limits protect the service, they are not a security boundary: when Redis is disabled, down
 * or answers with an error the call is allowed ("fails open") and counted, and hm/cache.h's
 * backoff makes that cost nothing while Redis stays down. Requires Redis 4 or later.
 *
 * An hm_ratelimit_t is immutable after hm_ratelimit_create() except for its atomic counters:
 * all workers share one, each passing its own hm_cache_t.
 */
#ifndef HM_RATELIMIT_H
#define HM_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/cache.h"
#include "hm/config.h"

/* The group of methods that name none. */
#define HM_RATELIMIT_DEFAULT_GROUP "default"

/* Most rules in HM_RATE_LIMITS; longest group name (letters, digits, '_', '-', '.'): long
 * enough for a full service name, the group of methods that name none of their own. */
#define HM_RATELIMIT_MAX_RULES 32
#define HM_RATELIMIT_GROUP_MAX 64

/* The group service callers draw from when HM_RATE_LIMITS declares it (they are not limited
 * otherwise: a peer's calls carry many end users' traffic under one principal). */
#define HM_RATELIMIT_SERVICE_GROUP "service"

/* Principals longer than this many bytes are keyed by their SHA-256 (hex), which bounds
 * the size of keys whatever the subject of a token looks like. */
#define HM_RATELIMIT_PRINCIPAL_MAX 128

typedef struct hm_ratelimit hm_ratelimit_t;

/* Configuration, filled from hm_ratelimit_config_vars by hm_config_load(). */
typedef struct hm_ratelimit_config {
    const char *limits; /* HM_RATE_LIMITS: "group=rate/period[:burst],..."; NULL or "" = off */
} hm_ratelimit_config_t;

extern const hm_cfg_var_t hm_ratelimit_config_vars[];
extern const size_t hm_ratelimit_config_nvars;

/* Counters for metrics, summed over the groups; monotonic. */
typedef struct hm_ratelimit_stats {
    uint64_t allowed;      /* calls that got a token */
    uint64_t limited;      /* calls refused (HM_ERATE) */
    uint64_t fail_open;    /* calls allowed because Redis was disabled, down or failed */
    uint64_t script_loads; /* SCRIPT LOADs after NOSCRIPT */
} hm_ratelimit_stats_t;

/*
 * Parses the rules. `daemon` names the key space (hm:<daemon>:rl:...) and is copied. Returns
 * the limiter (also when HM_RATE_LIMITS is empty: then hm_ratelimit_take() always allows), or
 * NULL with a message naming HM_RATE_LIMITS and the bad entry in err. Rates, bursts: 1 to
 * 1000000; periods: 1ms to 24h; group names unique. The caller destroys the result.
 */
hm_ratelimit_t *hm_ratelimit_create(const hm_ratelimit_config_t *cfg, const char *daemon, char *err,
                                    size_t errlen);

/* Frees the limiter; no thread may be using it. NULL is a no-op. */
void hm_ratelimit_destroy(hm_ratelimit_t *rl);

/* True when at least one rule is configured. False for NULL. */
bool hm_ratelimit_enabled(const hm_ratelimit_t *rl);

/* True when HM_RATE_LIMITS has a rule named `group` itself (the "default" fallback does not
 * count). False for NULL. */
bool hm_ratelimit_has_group(const hm_ratelimit_t *rl, const char *group);

/*
 * Takes one token for `principal` (NULL or "" share the bucket "-") from the bucket of
 * `group` (NULL = HM_RATELIMIT_DEFAULT_GROUP), using `cache`, the calling thread's Redis
 * handle. Returns 0 when the call may proceed: a token was taken, the group is not limited,
 * rl is NULL or off, or Redis could not decide (fail open: counted, logged at warn the first
 * time and when Redis answers again). Returns HM_ERATE when the bucket is empty, with
 * *retry_after_ms (>= 1) the time until a token is available; *retry_after_ms is 0 otherwise.
 * One Redis round trip (two more after NOSCRIPT); never blocks longer than the cache's
 * command timeout.
 */
int hm_ratelimit_take(hm_ratelimit_t *rl, hm_cache_t *cache, const char *group,
                      const char *principal, int64_t *retry_after_ms);

/* Snapshot of the counters; callable from any thread. Zeros for NULL. */
void hm_ratelimit_stats(const hm_ratelimit_t *rl, hm_ratelimit_stats_t *out);

/*
 * Appends the counters to a Prometheus text exposition, per group:
 * hm_rate_limit_decisions_total{group="write",decision="allowed|limited|fail_open"}, and
 * hm_rate_limit_script_loads_total. Nothing for NULL or when off.
 */
void hm_ratelimit_metrics(const hm_ratelimit_t *rl, FILE *out);

#endif
