/*
 * internal.h - runtime-private declarations shared by server.c, health.c, admin.c and
 * daemon.c. Not installed; symbols are hm__-prefixed.
 */
#ifndef HM_INTERNAL_H
#define HM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/server.h"

/* grpc.health.v1.HealthCheckResponse.ServingStatus values. */
enum {
    HM__HEALTH_UNKNOWN = 0,
    HM__HEALTH_SERVING = 1,
    HM__HEALTH_NOT_SERVING = 2,
    HM__HEALTH_SERVICE_UNKNOWN = 3
};

/* Health names: "", "liveness", "readiness" and every service name. */
void hm__health_init(const hm_service_t *const *services, size_t n);
void hm__health_deinit(void);
/* Status of a health name; HM__HEALTH_SERVICE_UNKNOWN for names not registered. */
int hm__health_get(const char *name);
/* Recomputes every status from the inputs; bumps the generation when anything changed. */
void hm__health_update(bool db_ok, bool draining, bool stopping);
unsigned hm__health_generation(void);
bool hm__health_ready(void);

/* Server runtime (server.c). */
typedef struct hm__runtime_opts {
    const hm_daemon_t *daemon;
    const hm_common_config_t *cfg;
    hm_crypto_t *crypto;
    struct hm_auth *auth; /* verifier for the methods that are not open */
    void *app;
    hm_tracer_t *tracer; /* spans of calls; owned by daemon.c */
} hm__runtime_opts_t;

int hm__server_start(const hm__runtime_opts_t *opts, char *err, size_t errlen);
/* Begins draining: health NOT_SERVING is the caller's; ends Watch streams. */
void hm__server_drain(void);
/* Stops accepting, waits up to grace_ms for in-flight calls, cancels the rest, joins the
 * workers and frees the server. */
void hm__server_stop(int64_t grace_ms);

/* Frees what the metrics read; call after the admin port has stopped. */
void hm__server_release(void);

/* Metrics, rendered in Prometheus text format into `out` (admin.c calls this). */
void hm__server_metrics(FILE *out);
/* Calls currently being served (all workers). */
long hm__server_inflight(void);

/* Extra metrics lines (database, cache, readiness) appended to /metrics. */
void hm__metrics_extra(FILE *out);

/* Process-wide objects owned by daemon.c (NULL outside hm_daemon_main). */
struct hm_client *hm__client(void);
struct hm_auth *hm__auth(void);

/* The daemon's place in the mesh (mesh.c): TLS, Consul, rate limits, reflection. */
enum { HM__TLS_NONE, HM__TLS_OPTIONAL, HM__TLS_REQUIRE }; /* client certificates */
typedef struct hm__tls {
    bool on;         /* the gRPC port serves TLS */
    char *cert_pem;  /* owned PEM text */
    char *key_pem;   /* owned PEM text */
    char *ca_pem;    /* owned; NULL = clients are not asked for certificates */
    int client_auth; /* HM__TLS_*: meaningful with ca_pem */
} hm__tls_t;
/* Loads the mesh variables (exit 2 on error: err names the variable), reads the TLS files,
 * creates the Consul client (tagged "data-subject" for d->data_subject) and the limiter. */
int hm__mesh_load(const hm_daemon_t *d, const hm_common_config_t *common, char *err, size_t errlen);
void hm__mesh_help(FILE *out);
void hm__mesh_client(struct hm_client *client); /* TLS to peers when configured */
void hm__mesh_serving(void);                    /* Consul registration, once serving */
void hm__mesh_tick(void);                       /* main loop, about once a second */
void hm__mesh_leaving(void);                    /* Consul deregistration, before the drain */
void hm__mesh_metrics(FILE *out);
void hm__mesh_unload(void);
struct hm_consul *hm__consul(void);       /* NULL before hm__mesh_load */
struct hm_ratelimit *hm__ratelimit(void); /* NULL before hm__mesh_load */
const hm__tls_t *hm__server_tls(void);
bool hm__reflection_enabled(void);

/* Background tasks (tasks.c): one thread running the daemon's hm_task_t list. */
typedef struct hm__tasks hm__tasks_t;
hm__tasks_t *hm__tasks_start(const hm_task_t *tasks, size_t n, const hm_common_config_t *cfg,
                             void *app);
void hm__tasks_stop(hm__tasks_t *t);
void hm__tasks_metrics(const hm__tasks_t *t, FILE *out);

/* Server reflection (reflection.c): the index of the embedded descriptor set, built once at
 * start; the services of `services` (and health, reflection) are what list_services names. */
int hm__reflection_init(const hm_service_t *const *services, size_t n);
void hm__reflection_deinit(void);
/* One ServerReflectionRequest -> one ServerReflectionResponse (malloc'd into *out; the caller
 * frees it). 0, or HM_EINVAL when the request does not decode. Thread-safe after init. */
int hm__reflection_answer(const uint8_t *in, size_t inlen, uint8_t **out, size_t *outlen);

/* Admin HTTP port: /metrics, /healthz, /readyz. */
int hm__admin_start(const char *addr, char *err, size_t errlen);
void hm__admin_stop(void);

#endif
