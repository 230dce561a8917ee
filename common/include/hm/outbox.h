/*
 * hm/outbox.h - the transactional outbox and its relay to Redis Streams (DESIGN.md §6,
 * docs/events.md).
 *
 * A daemon writes its state change and the event that announces it in one Postgres
 * transaction: hm_outbox_add() inserts the envelope into the `outbox` table (common migration
 * 001) inside the caller's open transaction. The relay, a thread per daemon with its own
 * Postgres and Redis connections, moves unpublished rows to their streams with XADD (bounded
 * by MAXLEN ~), marks them published in the same transaction that locked them (FOR UPDATE
 * SKIP LOCKED, so replicas share the work), and prunes published rows after a retention.
 *
 * Delivery is at least once: rows stay unpublished while Redis is down and are sent when it
 * returns; an XADD that succeeded just before a crash is sent again after the restart.
 * Consumers deduplicate by event id (hm/bus.h).
 */
#ifndef HM_OUTBOX_H
#define HM_OUTBOX_H

#include <stdbool.h>
#include <stdint.h>

#include "hm/arena.h"
#include "hm/db.h"
#include "hm/events.h"

/*
 * Inserts `ev` into the outbox on `db`, inside the transaction the caller has open (the row
 * commits or rolls back with the caller's state change; outside a transaction it commits at
 * once). The envelope is validated first (hm_event_validate): a refused event writes nothing.
 * The stream is the type's (hm:events:<domain>), the row's bytes the packed envelope.
 *
 * Returns 0; HM_EINVAL for an invalid envelope (unknown type, undecodable payload, ...: see
 * hm_event_last_error()); HM_EEXIST when an event with the same id is already in the outbox
 * (nothing written, the transaction stays usable: ON CONFLICT DO NOTHING); else the hm_db
 * error of the INSERT (the caller's transaction is then aborted).
 */
int hm_outbox_add(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *ev);

typedef struct hm_relay hm_relay_t;

/* Relay settings; zero values take the defaults in brackets. Strings are copied. */
typedef struct hm_relay_config {
    const char *name;             /* daemon name, for logs ["relay"] */
    const char *database_url;     /* libpq conninfo of the daemon's database */
    const char *redis_addr;       /* "host:port" or a socket path; required */
    int64_t redis_timeout_ms;     /* connect and command timeout [1000] */
    int64_t statement_timeout_ms; /* ceiling per SQL statement [10000] */
    int batch;                    /* rows per transaction [500] */
    long long maxlen;             /* XADD MAXLEN ~ bound per stream [1000000] */
    int64_t poll_ms;              /* pause while the outbox is empty [50] */
    int64_t retention_ms;         /* published rows are pruned after this [24h] */
    int64_t prune_interval_ms;    /* time between prune passes [60000] */
    int64_t stats_interval_ms;    /* time between outbox-pending counts [5000] */
    int64_t flush_ms;             /* hm_relay_stop publishes what is left for this long [2000] */
} hm_relay_config_t;

/* Counters for metrics; monotonic except the gauges. */
typedef struct hm_relay_stats {
    uint64_t published;    /* rows published and marked */
    uint64_t batches;      /* transactions that published at least one row */
    uint64_t redis_errors; /* publish attempts that failed for want of Redis */
    uint64_t db_errors;    /* relay transactions that failed in Postgres */
    uint64_t pruned;       /* published rows deleted after the retention */
    int64_t pending;       /* gauge: unpublished rows at the last count; -1 before it */
    int64_t oldest_ms;     /* gauge: age of the oldest unpublished row then (0 when none) */
    /* Rows published per registered type, indexed by hm_event_type_t.index; the slot at
     * hm_event_ntypes counts types this binary does not know (a newer producer's). */
    uint64_t published_by_type[HM_EVENT_TYPES_MAX + 1];
} hm_relay_stats_t;

/*
 * Starts the relay thread (which connects lazily and keeps retrying, so a missing Postgres or
 * Redis at start is not an error). Returns NULL only for a bad configuration (no Redis
 * address, conninfo or address that does not parse), with a log line. The caller stops it
 * with hm_relay_stop().
 */
hm_relay_t *hm_relay_start(const hm_relay_config_t *cfg);

/*
 * Wakes the relay now instead of at its next poll (call after committing a transaction that
 * added events, to cut the latency). Callable from any thread; NULL is a no-op.
 */
void hm_relay_kick(hm_relay_t *relay);

/*
 * Stops the relay: it publishes what is left for at most flush_ms (while Redis answers), then
 * the thread exits and everything is freed. NULL is a no-op. Call once.
 */
void hm_relay_stop(hm_relay_t *relay);

/* The daemon's own relay (started by hm_daemon_main unless HM_CONSUMERS=off or Redis is not
 * configured), for handlers to kick after a commit; NULL when there is none. */
hm_relay_t *hm_relay(void);

/* Snapshot of the counters; callable from any thread while the relay runs. */
void hm_relay_stats(const hm_relay_t *relay, hm_relay_stats_t *out);

#endif
