/*
 * hm/bus.h - event consumers on Redis Streams with exactly-once effects, dead letters, and the
 * operations hmctl builds on (DESIGN.md §6, docs/events.md).
 *
 * A consumer is a thread with its own Postgres and Redis connections reading its streams as
 * the consumer group named after the daemon (XREADGROUP). For each event its handler's effects
 * and the insert of the event id into processed_events commit in ONE transaction, then the
 * entry is acknowledged (XACK): a redelivered duplicate finds its id and is acknowledged
 * without effect. Many events share a transaction; when a handler fails, the batch is rolled
 * back and replayed one event per transaction, so one poison event costs the others nothing.
 * A failed event stays pending and is retried; after max_deliveries deliveries it moves to
 * the daemon's dead-letter stream hm:dlq:<daemon> with the error. Entries left pending by a
 * dead consumer are taken over (XAUTOCLAIM) after claim_idle_ms.
 */
#ifndef HM_BUS_H
#define HM_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "hm/arena.h"
#include "hm/cache.h"
#include "hm/db.h"
#include "hm/events.h"

/* "hm:dlq:" + daemon: the dead-letter stream of a daemon's consumers. */
#define HM_BUS_DLQ_PREFIX "hm:dlq:"
/* Prefix of the event streams ("hm:events:booking"). */
#define HM_BUS_STREAM_PREFIX "hm:events:"

/*
 * Applies one event. Runs inside the consumer's transaction on `db` (no BEGIN/COMMIT, no
 * hm_db_tx: use hm_db_exec and friends), after the event's id was recorded in processed_events, so
 * its effects commit together with that record or not at all. `arena` lives until the batch ends.
 * Returns 0, or an HM_E* code: the transaction is rolled back and the event retried. Errors
 * that say a dependency is down (HM_EUNAVAIL, HM_ETIMEDOUT, HM_ERETRY) are retried without
 * counting towards the dead-letter limit; any other error moves the event to the dead-letter
 * stream once it has been delivered max_deliveries times. Must not have effects outside
 * Postgres it cannot repeat.
 */
typedef int (*hm_event_handler_fn)(hm_db_t *db, hm_arena_t *arena,
                                   const Hospitality__Events__V1__Event *env,
                                   const ProtobufCMessage *payload, void *user);

/* Erasure suppression: true when events about `subject` (a guest id, may be "") must not be
 * applied. Such events are recorded as processed and acknowledged without the handler. Runs on
 * the consumer's thread. */
typedef bool (*hm_event_suppressed_fn)(const char *subject, void *user);

/* Consumer settings; zero values take the defaults in brackets. Strings are copied. */
typedef struct hm_consumer_config {
    const char *daemon;           /* consumer group and dead-letter stream name; required */
    const char *consumer;         /* name within the group [<hostname>-<pid>-<n>] */
    const char *database_url;     /* libpq conninfo of the daemon's database */
    const char *redis_addr;       /* "host:port" or a socket path; required */
    int64_t redis_timeout_ms;     /* connect and command timeout, BLOCK excluded [1000] */
    int64_t statement_timeout_ms; /* ceiling per SQL statement [10000] */
    const char *const *streams;   /* streams to read ("hm:events:booking"); required */
    size_t nstreams;
    const char *const *types; /* only these registered types reach the handler (others are
                               * acknowledged unrecorded); NULL = every type. An unknown name
                               * makes hm_consumer_start fail */
    size_t ntypes;
    hm_event_handler_fn handle;        /* required */
    hm_event_suppressed_fn suppressed; /* NULL: nothing is suppressed */
    void *user;                        /* passed to handle and suppressed */
    bool from_start;                   /* a group created now starts at 0 instead of $ */
    int batch;                         /* entries per read and per transaction [256] */
    int64_t block_ms;                  /* XREADGROUP BLOCK [250]; bounds hm_consumer_stop */
    int max_deliveries;                /* deliveries before dead-lettering [5] */
    int64_t claim_idle_ms;             /* others' pending entries idle this long are claimed
                                        * [30000] */
    int64_t retry_ms;                  /* own failed entries are retried this often [1000] */
    int64_t stats_interval_ms;         /* lag/pending refresh (XINFO GROUPS) [5000] */
    int64_t prune_interval_ms;         /* processed_events rows older than the first entry of
                                        * every stream (minus an hour) are deleted this often
                                        * [600000]; < 0 never */
    long long dlq_maxlen;              /* MAXLEN ~ of the dead-letter stream [100000] */
} hm_consumer_config_t;

/* Counters for metrics; monotonic except the gauges. */
typedef struct hm_consumer_stats {
    uint64_t delivered;    /* entries read: new, retried and claimed */
    uint64_t processed;    /* events applied (handler committed) */
    uint64_t duplicates;   /* already processed: acknowledged without effect */
    uint64_t suppressed;   /* subject suppressed: recorded and acknowledged, no handler */
    uint64_t skipped;      /* types the consumer does not take: acknowledged */
    uint64_t failures;     /* handler failures (every attempt counts) */
    uint64_t dead_letters; /* entries moved to the dead-letter stream */
    uint64_t claimed;      /* entries taken over from other consumers (XAUTOCLAIM) */
    uint64_t batches;      /* transactions committed */
    uint64_t redis_errors; /* Redis commands that failed */
    uint64_t db_errors;    /* transactions that failed in Postgres (not in a handler) */
    uint64_t pruned;       /* processed_events rows deleted (no redelivery can need them) */
    int64_t lag;           /* gauge: entries not yet delivered to the group, summed over the
                            * streams (XINFO GROUPS lag); -1 when unknown */
    int64_t pending;       /* gauge: delivered but unacknowledged entries of the group */
} hm_consumer_stats_t;

typedef struct hm_consumer hm_consumer_t;

/*
 * Starts a consumer thread. Groups are created (XGROUP CREATE ... MKSTREAM, an existing one is
 * kept) by the thread, which retries while Redis is down. Returns NULL for a bad configuration
 * (logged). Stop it with hm_consumer_stop().
 */
hm_consumer_t *hm_consumer_start(const hm_consumer_config_t *cfg);

/*
 * Stops the consumer: the batch in hand is finished (committed and acknowledged, or left
 * pending for a retry), the thread exits within about block_ms plus that batch, and everything
 * is freed. NULL is a no-op. Call once.
 */
void hm_consumer_stop(hm_consumer_t *consumer);

/* Snapshot of the counters; callable from any thread while the consumer runs. */
void hm_consumer_stats(const hm_consumer_t *consumer, hm_consumer_stats_t *out);

/* The consumer's name in its group (owned by the consumer). */
const char *hm_consumer_name(const hm_consumer_t *consumer);

/* ---- operations (hmctl events, tests) ---- */

/* A consumer group of a stream, as XINFO GROUPS reports it. */
typedef struct hm_bus_group {
    const char *name;
    long long consumers;
    long long pending;   /* delivered, not acknowledged */
    long long lag;       /* not yet delivered; -1 when Redis cannot tell (after SETID) */
    const char *last_id; /* last delivered entry id */
} hm_bus_group_t;

/* A stream and its groups. */
typedef struct hm_bus_stream {
    const char *name;
    long long length;
    const char *first_id, *last_id; /* "" when empty */
    hm_bus_group_t *groups;
    size_t ngroups;
} hm_bus_stream_t;

/*
 * Every stream whose name starts with `prefix` ("hm:" for events and dead letters), sorted by
 * name, with its groups; everything in the arena. 0, or HM_EUNAVAIL when Redis failed.
 */
int hm_bus_list_streams(hm_cache_t *cache, hm_arena_t *arena, const char *prefix,
                        hm_bus_stream_t **out, size_t *n);

/* An entry of a dead-letter stream. */
typedef struct hm_bus_dead_letter {
    const char *dlq_id;   /* entry id in hm:dlq:<daemon> */
    const char *stream;   /* stream the event came from */
    const char *entry_id; /* its id there */
    const char *event_id;
    const char *type;
    const char *error; /* why it was dead-lettered */
    long long attempts;
    const uint8_t *env; /* envelope bytes */
    size_t env_len;
} hm_bus_dead_letter_t;

/*
 * Up to `max` entries of hm:dlq:<daemon>, oldest first, from the entry after `after` (NULL or
 * "" = from the start); everything in the arena. 0, HM_EINVAL for a malformed `after`, or
 * HM_EUNAVAIL.
 */
int hm_bus_dlq_list(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *after,
                    size_t max, hm_bus_dead_letter_t **out, size_t *n);

/*
 * Requeues dead letter `dlq_id` of `daemon`: XADD of its envelope to the stream it came from
 * (fields id, type, env as the relay writes them; MAXLEN ~ maxlen, <= 0: 1000000), then XDEL
 * from the dead-letter stream. Every group on that stream sees the event again; those that
 * had applied it skip it as a duplicate. 0, HM_ENOTFOUND, HM_EINVAL for a malformed entry, or
 * HM_EUNAVAIL.
 */
int hm_bus_dlq_requeue(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *dlq_id,
                       long long maxlen);

/*
 * Moves group `daemon`'s position on `stream` (XGROUP SETID) so that entries after `from` are
 * delivered again: "0" (or "start") replays everything the stream still holds, "$" (or "end")
 * skips to the end, an entry id ("1700000000000-0") replays what follows it, and a UTC time
 * "2024-05-01T12:00:00Z" (or milliseconds since the epoch, "@1714564800000") replays entries
 * added at or after it. Safe: the group's consumers skip what they already applied. 0,
 * HM_EINVAL for a malformed `from`, HM_ENOTFOUND when the stream or group does not exist, or
 * HM_EUNAVAIL.
 */
int hm_bus_replay(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, const char *stream,
                  const char *from);

#endif
