/*
 * hm/server.h - the gRPC server runtime every daemon lives in.
 *
 * A daemon declares its services as method tables (full method name, protobuf-c request and
 * response descriptors, handler, auth policy) and calls hm_daemon_main(). The runtime does the
 * rest: configuration, logs, migrations, N worker threads each with its own completion queue,
 * Postgres and Redis connection, decoding, deadlines, request ids, the rich error model,
 * access logs, metrics, the grpc.health.v1 service and graceful shutdown.
 *
 * Handlers are plain sequential C: they run on one worker thread, allocate from the call's
 * arena (never free()), and return an hm_status_t.
 */
#ifndef HM_SERVER_H
#define HM_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

#include "hm/arena.h"
#include "hm/config.h"
#include "hm/err.h"
#include "hm/events.h"
#include "hm/trace.h"

typedef struct hm_db hm_db_t;
typedef struct hm_cache hm_cache_t;
typedef struct hm_crypto hm_crypto_t;
typedef struct hm_migration hm_migration_t;
typedef struct hm_worker hm_worker_t;
typedef struct hm_call hm_call_t;
typedef struct hm_principal hm_principal_t;

/* Roles a principal may hold (bit set), for method policies. */
enum {
    HM_ROLE_GUEST = 1u << 0,
    HM_ROLE_STAFF = 1u << 1,
    HM_ROLE_ADMIN = 1u << 2,
    HM_ROLE_SERVICE = 1u << 3,
    HM_ROLES_ANY = 0xfu,
};

/*
 * Who may call a method. `open` methods need no credentials (health). Otherwise the caller's
 * roles must intersect `roles`; with `self_field` set, a guest caller may only name itself in
 * that request field (e.g. "guest_id"); with `venue_field` set, a staff caller may only name
 * one of its venues there. Field names are top-level request fields (string type).
 *
 * `rate_group` names the token bucket (hm/ratelimit.h, HM_RATE_LIMITS) the method draws from,
 * one per caller: methods sharing a group share a caller's budget. NULL means the service's
 * full name ("hospitality.guest.v1.GuestService"); a group without a rule of its own draws
 * from the "default" rule. Callers are keyed by principal subject (open methods: by client
 * address); service callers draw from the "service" rule only when one is declared.
 */
typedef struct hm_policy {
    bool open;               /* no credentials needed */
    unsigned roles;          /* HM_ROLE_* allowed; admin and service are always allowed */
    const char *self_field;  /* request field a guest caller must fill with its own subject */
    const char *venue_field; /* request field a staff caller must fill with one of its venues */
    const char *rate_group;  /* rate limit group; NULL = the service name */
} hm_policy_t;

/* The handler of one RPC: decode and encode are done by the runtime. `req` is the decoded
 * request (arena memory); the handler sets *resp to a response message it built in the arena
 * (or leaves it NULL for an empty response) and returns the status. */
typedef hm_status_t (*hm_handler_fn)(hm_call_t *call, const ProtobufCMessage *req,
                                     ProtobufCMessage **resp);

typedef struct hm_method {
    const char *name;                          /* "/hospitality.guest.v1.GuestService/GetProfile" */
    const ProtobufCMessageDescriptor *request; /* request type */
    const ProtobufCMessageDescriptor *response; /* response type */
    hm_handler_fn handler;
    hm_policy_t policy;
} hm_method_t;

typedef struct hm_service {
    const char *name; /* "hospitality.guest.v1.GuestService": also its health service name */
    const hm_method_t *methods;
    size_t nmethods;
} hm_service_t;

/*
 * One call, as a handler sees it. Everything here lives until the call ends. Fields are
 * read-only for handlers except the arena (allocate from it freely).
 */
struct hm_call {
    hm_arena_t arena;                /* freed when the call ends; use for all call memory */
    const hm_method_t *method;       /* the method being served */
    hm_db_t *db;                     /* this worker's Postgres connection (NULL: no database) */
    hm_cache_t *cache;               /* this worker's Redis connection (may be disabled) */
    hm_crypto_t *crypto;             /* process keyring for PII (NULL when not configured) */
    void *app;                       /* the daemon's state (hm_daemon_t.app) */
    const char *request_id;          /* from x-request-id or generated; sent back in metadata */
    const char *traceparent;         /* incoming W3C traceparent, or NULL */
    const hm_span_t *span;           /* the call's server span (log ids, parent of client spans) */
    const hm_principal_t *principal; /* the authenticated caller (hm/auth.h); NULL on open
                                        methods */
    const char *end_user;            /* x-hm-end-user from a service caller: for audit only, never
                                        authority; NULL otherwise */
    int64_t deadline_ms;             /* CLOCK_MONOTONIC ms; INT64_MAX when the client set none */
    int64_t start_ns;                /* CLOCK_MONOTONIC ns when the call started */
    bool published;                  /* set by hm_call_publish: the runtime wakes the outbox
                                        relay when the handler returns */
    hm_worker_t *worker;             /* owning worker (runtime-internal) */
};

/* Milliseconds left before the call's deadline (INT64_MAX without one; <= 0 when expired). */
int64_t hm_call_remaining_ms(const hm_call_t *call);

/* The client's address ("ipv4:127.0.0.1:5555"), copied into the arena. */
const char *hm_call_peer(hm_call_t *call);

/* The first value of request metadata `key` (lower case), copied into the arena; NULL when
 * absent. Binary ("-bin") values are returned raw with their length in *len (may be NULL). */
const char *hm_call_metadata(hm_call_t *call, const char *key, size_t *len);

/* Error statuses with a message formatted into the call's arena. */
hm_status_t hm_call_error(hm_call_t *call, hm_code_t code, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* INVALID_ARGUMENT naming `field` (reason VALIDATION_FAILED). */
hm_status_t hm_call_invalid(hm_call_t *call, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The status for an HM_E* error from a library call, with `what` prefixed to the message
 * ("load profile: dependency unavailable"). */
hm_status_t hm_call_fail(hm_call_t *call, int err, const char *what);

/* Milliseconds since the epoch (CLOCK_REALTIME) and CLOCK_MONOTONIC ms/ns. */
int64_t hm_now_ms(void);
int64_t hm_mono_ms(void);
int64_t hm_mono_ns(void);

/* Fills `out` with `n` random bytes from the process CSPRNG (getrandom); aborts on failure. */
void hm_random_bytes(void *out, size_t n);

/*
 * The daemon's event consumer (hm/bus.h), started by hm_daemon_main after `init` unless
 * HM_CONSUMERS=off or HM_REDIS_ADDR is empty, stopped after the server drained and before
 * `fini`. The handler receives the daemon's `app` as `user`. Events whose subject is on the
 * erasure suppression list (hm/suppress.h) are acknowledged without reaching the handler.
 */
typedef struct hm_daemon_consumer {
    const char *const *streams; /* "hm:events:booking", ... */
    size_t nstreams;
    const char *const *types; /* registered types the handler takes; NULL = all */
    size_t ntypes;
    int (*handle)(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                  const ProtobufCMessage *payload, void *app);
    bool from_start; /* a group created now starts at the beginning of the streams */
} hm_daemon_consumer_t;

/*
 * A periodic job (sweeper, saga recovery, retention purge, cache rebuild). The daemon's tasks
 * share one background thread with its own Postgres and Redis connections; they run unless
 * HM_CONSUMERS=off, first right after start-up, then every interval_ms. Several replicas run
 * them concurrently: a task must be safe under that (FOR UPDATE SKIP LOCKED, advisory locks).
 * `run` returns 0 or an HM_E* code (logged; the task runs again at its next interval).
 */
typedef struct hm_task {
    const char *name;
    int64_t interval_ms;
    int (*run)(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
} hm_task_t;

/* Per-process information a daemon passes to hm_daemon_main. */
typedef struct hm_daemon {
    const char *name;               /* "guestd": log name, Redis key prefix, consumer group */
    const char *description;        /* one line for --help */
    const char *default_grpc_addr;  /* default for HM_GRPC_ADDR ("0.0.0.0:50051") */
    const char *default_admin_addr; /* default for HM_ADMIN_ADDR */
    const hm_service_t *const *services;
    size_t nservices;
    const hm_cfg_var_t *config_vars; /* the daemon's own variables (may be NULL) */
    size_t nconfig_vars;
    void *config; /* target struct of config_vars */
    const hm_migration_t *migrations;
    size_t nmigrations;
    bool needs_crypto; /* refuse to start without HM_PII_KEYS */
    /* Called once after configuration, migrations and logging are up, before serving;
     * returns 0 or an HM_E* code (start-up fails). May set `app`. */
    int (*init)(const hm_common_config_t *common, void **app);
    /* Called after the server stopped and workers exited. */
    void (*fini)(void *app);
    const hm_daemon_consumer_t *consumer; /* NULL: the daemon consumes no events */
    const hm_task_t *tasks;               /* periodic jobs (may be NULL) */
    size_t ntasks;
    /* Implements hospitality.privacy.v1.DataSubjectService: registered in Consul with the
     * "data-subject" tag, so privacyd finds it (hm_peer_data_subjects in hm/peer.h). */
    bool data_subject;
} hm_daemon_t;

/*
 * Runs a daemon: parses --help/--version, loads and validates configuration (exit 2 with a
 * message naming the variable), applies migrations, starts workers and the admin port, serves
 * until SIGTERM/SIGINT, drains and returns the process exit status (0 after a clean drain).
 */
int hm_daemon_main(int argc, char **argv, const hm_daemon_t *daemon);

/* The process's common configuration (valid inside hm_daemon_main). */
const hm_common_config_t *hm_config(void);

/* The process's tracer (NULL outside hm_daemon_main). */
hm_tracer_t *hm_tracer(void);

/* The daemon's name ("guestd"; NULL outside hm_daemon_main). */
const char *hm_daemon_name(void);

/*
 * Adds event `type` about `subject` (a guest id, or NULL) with `payload` to the outbox, in the
 * transaction open on `db` (hm_outbox_add), with this daemon as source and the call's trace
 * context. Marks the call so the relay is woken when the handler returns. 0, or the error of
 * hm_event_build / hm_outbox_add (HM_EINVAL for an event the registry refuses: a bug).
 */
int hm_call_publish(hm_call_t *call, hm_db_t *db, const char *type, const char *subject,
                    const ProtobufCMessage *payload);

/* The same outside a call (consumers, tasks): `traceparent` may be NULL. */
int hm_publish(hm_db_t *db, hm_arena_t *arena, const char *type, const char *subject,
               const char *traceparent, const ProtobufCMessage *payload);

/*
 * Adds the daemon's own metric families to /metrics: fn(out, arg) runs on the admin thread at
 * every scrape, after the runtime's families, and writes Prometheus text format (HELP and TYPE
 * lines included). Call it from init; one hook per process (a later call replaces it).
 */
void hm_metrics_hook(void (*fn)(FILE *out, void *arg), void *arg);

#endif
