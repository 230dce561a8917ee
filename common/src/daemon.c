/*
 * daemon.c - hm_daemon_main(): the life of a daemon process.
 *
 * Order of start-up: arguments, configuration (all variables validated before anything
 * starts), logging, signal mask (before grpc_init so the core's threads inherit it: pitfall
 * 5), keyring, database migrations (retried while Postgres comes up), the daemon's init hook,
 * the admin port, the gRPC server. The main thread then waits for SIGTERM/SIGINT, probing
 * Postgres once a second to drive readiness. Shutdown: readiness NOT_SERVING, optional delay
 * (load balancers notice), stop accepting, drain within HM_SHUTDOWN_GRACE, cancel the rest,
 * the daemon's fini hook, exit 0.
 */
#include <curl/curl.h>
#include <grpc/grpc.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hm/auth.h"
#include "hm/bus.h"
#include "hm/cache.h"
#include "hm/client.h"
#include "hm/consul.h"
#include "hm/crypto.h"
#include "hm/db.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "hm/events.h"
#include "hm/outbox.h"
#include "hm/suppress.h"
#include "internal.h"

#define MIGRATE_WAIT_MS 30000 /* how long start-up waits for Postgres */
#define TRACE_FLUSH_MS  3000  /* how long shutdown waits for queued spans to be exported */

static hm_common_config_t cfg;
static hm_auth_config_t auth_cfg;
static hm_auth_t *auth; /* verifier of the calls that need credentials */
static hm_trace_config_t trace_cfg;
static hm_tracer_t *tracer; /* created after the signal mask, destroyed after the admin port */
static hm_relay_t *relay;   /* outbox relay; NULL with HM_CONSUMERS=off or no Redis */
static hm_db_t *probe_db;   /* main thread's own connection: migrations and readiness */
static const char *daemon_name;
static hm_client_t *client;        /* peer calls (hm/peer.h) */
static hm_consumer_t *consumer;    /* the daemon's event consumer, if it declares one */
static hm_cache_t *suppress_cache; /* the consumer thread's connection for the suppression list */
static hm__tasks_t *tasks;         /* periodic jobs */
static const hm_daemon_consumer_t *consumer_decl;
static void *consumer_app;

const hm_common_config_t *hm_config(void)
{
    return &cfg;
}

hm_relay_t *hm_relay(void)
{
    return relay;
}

hm_tracer_t *hm_tracer(void)
{
    return tracer;
}

const char *hm_daemon_name(void)
{
    return daemon_name;
}

hm_client_t *hm__client(void)
{
    return client;
}

hm_auth_t *hm__auth(void)
{
    return auth;
}

/* The consumer's hooks: the daemon's handler with its app, and the suppression list. */
static int consume(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                   const ProtobufCMessage *payload, void *user)
{
    (void)user;
    return consumer_decl->handle(db, arena, env, payload, consumer_app);
}

static bool suppressed(const char *subject, void *user)
{
    (void)user;
    return hm_subject_suppressed(suppress_cache, subject);
}

static void start_background(const hm_daemon_t *d, void *app)
{
    hm_relay_config_t rc = {.name = d->name,
                            .database_url = cfg.database_url,
                            .redis_addr = cfg.redis_addr,
                            .redis_timeout_ms = cfg.redis_timeout_ms,
                            .statement_timeout_ms = cfg.statement_timeout_ms};
    relay = hm_relay_start(&rc);
    if (d->consumer) {
        consumer_decl = d->consumer;
        consumer_app = app;
        suppress_cache = hm_cache_create(cfg.redis_addr, cfg.redis_timeout_ms);
        hm_consumer_config_t cc = {.daemon = d->name,
                                   .database_url = cfg.database_url,
                                   .redis_addr = cfg.redis_addr,
                                   .redis_timeout_ms = cfg.redis_timeout_ms,
                                   .statement_timeout_ms = cfg.statement_timeout_ms,
                                   .streams = d->consumer->streams,
                                   .nstreams = d->consumer->nstreams,
                                   .types = d->consumer->types,
                                   .ntypes = d->consumer->ntypes,
                                   .handle = consume,
                                   .suppressed = suppressed,
                                   .from_start = d->consumer->from_start};
        consumer = hm_consumer_start(&cc);
    }
    tasks = hm__tasks_start(d->tasks, d->ntasks, &cfg, app);
}

static void stop_background(void)
{
    hm__tasks_stop(tasks);
    tasks = NULL;
    hm_consumer_stop(consumer);
    consumer = NULL;
    hm_cache_destroy(suppress_cache);
    suppress_cache = NULL;
    hm_relay_stop(relay); /* last: events the others published get out */
    relay = NULL;
}

static void consumer_metrics(FILE *out)
{
    hm_consumer_stats_t c;
    if (!consumer)
        return;
    hm_consumer_stats(consumer, &c);
    fprintf(out,
            "# HELP hm_consumer_processed_total Events applied by this daemon's consumer.\n"
            "# TYPE hm_consumer_processed_total counter\nhm_consumer_processed_total %llu\n"
            "# HELP hm_consumer_duplicates_total Redelivered events acknowledged without effect.\n"
            "# TYPE hm_consumer_duplicates_total counter\nhm_consumer_duplicates_total %llu\n"
            "# HELP hm_consumer_suppressed_total Events about erased subjects, not applied.\n"
            "# TYPE hm_consumer_suppressed_total counter\nhm_consumer_suppressed_total %llu\n"
            "# HELP hm_consumer_failures_total Handler failures (every attempt).\n"
            "# TYPE hm_consumer_failures_total counter\nhm_consumer_failures_total %llu\n"
            "# HELP hm_consumer_dead_letters_total Events moved to the dead-letter stream.\n"
            "# TYPE hm_consumer_dead_letters_total counter\nhm_consumer_dead_letters_total %llu\n"
            "# HELP hm_consumer_lag Entries not yet delivered to the group (-1 unknown).\n"
            "# TYPE hm_consumer_lag gauge\nhm_consumer_lag %lld\n"
            "# HELP hm_consumer_pending Delivered, unacknowledged entries of the group.\n"
            "# TYPE hm_consumer_pending gauge\nhm_consumer_pending %lld\n",
            (unsigned long long)c.processed, (unsigned long long)c.duplicates,
            (unsigned long long)c.suppressed, (unsigned long long)c.failures,
            (unsigned long long)c.dead_letters, (long long)c.lag, (long long)c.pending);
}

static void (*_Atomic metrics_hook)(FILE *, void *); /* the daemon's own families */
static void *_Atomic metrics_hook_arg;

void hm_metrics_hook(void (*fn)(FILE *out, void *arg), void *arg)
{
    metrics_hook_arg = arg;
    metrics_hook = fn;
}

void hm__metrics_extra(FILE *out)
{
    if (relay) {
        hm_relay_stats_t r;
        hm_relay_stats(relay, &r);
        fprintf(
            out,
            "# HELP hm_outbox_pending Outbox rows not yet published (at the last count).\n"
            "# TYPE hm_outbox_pending gauge\nhm_outbox_pending %lld\n"
            "# HELP hm_outbox_oldest_pending_seconds Age of the oldest unpublished row.\n"
            "# TYPE hm_outbox_oldest_pending_seconds gauge\n"
            "hm_outbox_oldest_pending_seconds %.3f\n"
            "# HELP hm_outbox_redis_errors_total Publish attempts that failed for want of Redis.\n"
            "# TYPE hm_outbox_redis_errors_total counter\nhm_outbox_redis_errors_total %llu\n"
            "# HELP hm_events_published_total Events moved from the outbox to Redis Streams.\n"
            "# TYPE hm_events_published_total counter\n",
            (long long)r.pending, (double)r.oldest_ms / 1000.0, (unsigned long long)r.redis_errors);
        for (size_t i = 0; i <= hm_event_ntypes; i++)
            if (r.published_by_type[i])
                fprintf(out, "hm_events_published_total{type=\"%s\"} %llu\n",
                        i < hm_event_ntypes ? hm_event_types[i].type : "unknown",
                        (unsigned long long)r.published_by_type[i]);
    }
    if (auth) {
        hm_auth_stats_t a;
        hm_auth_stats(auth, &a);
        fprintf(out,
                "# HELP hm_auth_cache_hits_total Verified tokens served from the cache.\n"
                "# TYPE hm_auth_cache_hits_total counter\nhm_auth_cache_hits_total %llu\n"
                "# HELP hm_auth_cache_misses_total Tokens verified (not in the cache).\n"
                "# TYPE hm_auth_cache_misses_total counter\nhm_auth_cache_misses_total %llu\n"
                "# HELP hm_auth_failures_total Calls refused as UNAUTHENTICATED.\n"
                "# TYPE hm_auth_failures_total counter\nhm_auth_failures_total %llu\n"
                "# HELP hm_auth_denials_total Calls refused as PERMISSION_DENIED.\n"
                "# TYPE hm_auth_denials_total counter\nhm_auth_denials_total %llu\n",
                (unsigned long long)a.cache_hits, (unsigned long long)a.cache_misses,
                (unsigned long long)a.failures, (unsigned long long)a.denials);
    }
    consumer_metrics(out);
    hm__mesh_metrics(out);
    hm__tasks_metrics(tasks, out);
    fprintf(out,
            "# HELP hm_ready 1 while the daemon reports SERVING for readiness.\n"
            "# TYPE hm_ready gauge\nhm_ready %d\n",
            hm__health_ready() ? 1 : 0);
    hm_tracer_metrics(tracer, out);
    void (*hook)(FILE *, void *) = metrics_hook;
    if (hook)
        hook(out, metrics_hook_arg);
}

static void usage(FILE *out, const hm_daemon_t *d)
{
    fprintf(out,
            "%s %s - %s\n\nUsage: %s [--help] [--version]\n\nConfiguration is read from the "
            "environment:\n\n",
            d->name, HM_VERSION, d->description ? d->description : "", d->name);
    hm_config_help(out, hm_common_config_vars, hm_common_config_nvars);
    fprintf(out, "\nAuthentication:\n");
    hm_config_help(out, hm_auth_config_vars, hm_auth_config_nvars);
    fprintf(out, "\nTracing:\n");
    hm_config_help(out, hm_trace_config_vars, hm_trace_config_nvars);
    hm__mesh_help(out);
    fprintf(out, "\n%s listens on %s (gRPC) and %s (admin) unless told otherwise.\n", d->name,
            d->default_grpc_addr ? d->default_grpc_addr : "HM_GRPC_ADDR's default",
            d->default_admin_addr ? d->default_admin_addr : "HM_ADMIN_ADDR's default");
    if (d->nconfig_vars) {
        fprintf(out, "\n%s:\n", d->name);
        hm_config_help(out, d->config_vars, d->nconfig_vars);
    }
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int migrate(const hm_daemon_t *d)
{
    char err[512];
    int64_t until = hm_mono_ms() + MIGRATE_WAIT_MS;
    for (;;) {
        int rc = hm_migrate_up(probe_db, d->name, d->migrations, d->nmigrations, err, sizeof(err));
        if (rc == 0)
            return 0;
        if (rc != HM_EUNAVAIL || hm_mono_ms() > until) {
            HM_ERROR("migrations failed: %s", err);
            return rc;
        }
        HM_WARN("waiting for Postgres: %s", err);
        sleep_ms(1000);
    }
}

static int run(int argc, char **argv, const hm_daemon_t *d);

int hm_daemon_main(int argc, char **argv, const hm_daemon_t *d)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout, d);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("%s %s (grpc core %s)\n", d->name, HM_VERSION, grpc_version_string());
            return 0;
        }
        fprintf(stderr, "%s: unknown argument %s (see --help)\n", d->name, argv[i]);
        return 2;
    }
    /* libcurl (tracing, Consul) is initialised before any thread exists. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = run(argc, argv, d);
    hm__mesh_unload();
    curl_global_cleanup();
    return rc;
}

static int run(int argc, char **argv, const hm_daemon_t *d)
{
    if (d->default_grpc_addr)
        setenv("HM_GRPC_ADDR", d->default_grpc_addr, 0);
    if (d->default_admin_addr)
        setenv("HM_ADMIN_ADDR", d->default_admin_addr, 0);

    char err[512];
    if (hm_config_load(hm_common_config_vars, hm_common_config_nvars, &cfg, err, sizeof(err)) ||
        hm_config_load(hm_auth_config_vars, hm_auth_config_nvars, &auth_cfg, err, sizeof(err)) ||
        hm_config_load(hm_trace_config_vars, hm_trace_config_nvars, &trace_cfg, err, sizeof(err)) ||
        (d->nconfig_vars &&
         hm_config_load(d->config_vars, d->nconfig_vars, d->config, err, sizeof(err))) ||
        hm__mesh_load(d, &cfg, err, sizeof(err))) {
        fprintf(stderr, "%s: configuration error: %s\n", d->name, err);
        return 2;
    }
    hm_log_init(d->name, (hm_log_level_t)cfg.log_level);
    daemon_name = d->name;

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    hm_crypto_t *crypto = NULL;
    if (cfg.pii_keys && *cfg.pii_keys) {
        crypto = hm_crypto_create(cfg.pii_keys, cfg.pii_index_key, err, sizeof(err));
        if (!crypto) {
            fprintf(stderr, "%s: configuration error: %s\n", d->name, err);
            return 2;
        }
    } else if (d->needs_crypto) {
        fprintf(stderr,
                "%s: configuration error: HM_PII_KEYS: required (personal data is "
                "encrypted at rest)\n",
                d->name);
        return 2;
    }

    auth = hm_auth_create(&auth_cfg, err, sizeof(err));
    /* After the signal mask: the exporter thread must not take SIGTERM. */
    tracer = auth ? hm_tracer_create(&trace_cfg, d->name, err, sizeof(err)) : NULL;
    if (!auth || !tracer) {
        fprintf(stderr, "%s: configuration error: %s\n", d->name, err);
        hm_auth_destroy(auth);
        if (crypto)
            hm_crypto_destroy(crypto);
        return 2;
    }

    int status = 1;
    void *app = NULL;
    probe_db = hm_db_create(cfg.database_url, cfg.statement_timeout_ms);
    if (migrate(d) != 0)
        goto out_db;
    if (d->init && d->init(&cfg, &app) != 0) {
        HM_ERROR("initialisation failed");
        goto out_db;
    }

    grpc_init();
    client = hm_client_create(cfg.max_message_bytes);
    hm__mesh_client(client);
    if (cfg.consumers && cfg.redis_addr && *cfg.redis_addr) {
        start_background(d, app);
    } else {
        HM_INFO("no outbox relay or consumers in this replica (%s)",
                cfg.consumers ? "HM_REDIS_ADDR is empty" : "HM_CONSUMERS=off");
    }

    hm__health_init(d->services, d->nservices);
    if (hm__admin_start(cfg.admin_addr, err, sizeof(err)) != 0) {
        HM_ERROR("%s", err);
        goto out_grpc;
    }
    hm__runtime_opts_t opts = {d, &cfg, crypto, auth, app, tracer};
    if (hm__server_start(&opts, err, sizeof(err)) != 0) {
        HM_ERROR("%s", err);
        hm__admin_stop();
        hm__server_release();
        goto out_grpc;
    }

    bool db_ok = hm_db_ping(probe_db) == 0;
    hm__health_update(db_ok, false, false);
    HM_INFO("%s %s started (%s)", d->name, HM_VERSION, db_ok ? "ready" : "waiting for Postgres");
    hm__mesh_serving();
    int sig;
    for (;;) {
        struct timespec tick = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        bool ok = hm_db_ping(probe_db) == 0;
        if (ok != db_ok)
            HM_WARN("postgres %s", ok ? "reachable again: ready" : "unreachable: not ready");
        db_ok = ok;
        hm__health_update(db_ok, false, false);
        hm__mesh_tick();
    }

    HM_INFO("received %s: draining (grace %lld ms)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
            (long long)cfg.shutdown_grace_ms);
    hm__health_update(db_ok, true, false);
    hm__mesh_leaving(); /* peers stop choosing this instance before it drains */
    hm__server_drain();
    if (cfg.shutdown_delay_ms > 0)
        sleep_ms(cfg.shutdown_delay_ms);
    hm__server_stop(cfg.shutdown_grace_ms);
    hm__health_update(db_ok, true, true);
    stop_background(); /* after the drain: in-flight calls' events get published */
    if (d->fini)
        d->fini(app);
    if (hm_tracer_flush(tracer, TRACE_FLUSH_MS) != 0)
        HM_WARN("tracing: spans still queued after %d ms", TRACE_FLUSH_MS);
    hm__admin_stop();
    hm__server_release();
    HM_INFO("stopped cleanly");
    status = 0;
out_grpc:
    stop_background(); /* start-up failed after it started; no-op otherwise */
    hm__health_deinit();
    hm_client_destroy(client);
    client = NULL;
    grpc_shutdown();
out_db:
    hm_db_destroy(probe_db);
    if (crypto)
        hm_crypto_destroy(crypto);
    hm_auth_destroy(auth);
    auth = NULL;
    hm_tracer_destroy(tracer);
    tracer = NULL;
    return status;
}
