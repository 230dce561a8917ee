/*
 * hm/consul.h - service discovery through Consul's HTTP API (libcurl, jansson): register this
 * instance with the local agent, deregister it at shutdown, and resolve peers to healthy
 * instances. Without Consul (HM_CONSUL_ADDR empty) peers come from HM_<PEER>_ADDR.
 *
 * Registration: PUT /v1/agent/service/register with ID "<name>-<host>-<port>-<8 hex>" (unique
 * per instance), Name, Address, Port, Tags, Meta {"version"} and a GRPC check of the
 * "readiness" health name ("<host>:<port>/readiness") every HM_CONSUL_CHECK_INTERVAL, with
 * DeregisterCriticalServiceAfter HM_CONSUL_DEREGISTER_AFTER so a crashed instance disappears
 * even without its deregistration. Deregistration: PUT /v1/agent/service/deregister/<ID>.
 * X-Consul-Token is sent on every request when HM_CONSUL_TOKEN is set.
 *
 * Resolution: GET /v1/health/service/<name>?passing=true, each instance at Service.Address
 * (Node.Address when empty) and Service.Port. The list is cached per service name and
 * refreshed when older than HM_CONSUL_REFRESH, by hm_consul_tick() or lazily by the resolving
 * thread (one thread fetches, the others keep using the old list meanwhile). Successive
 * resolutions go round-robin over the instances. When Consul cannot be reached or answers with
 * an error, the last list fetched is kept (logged once per outage); a list Consul returned is
 * authoritative, even an empty one.
 *
 * An hm_consul_t is shared by all threads: resolution is locked internally. Create, register,
 * deregister, tick and destroy belong to one thread (the main thread).
 */
#ifndef HM_CONSUL_H
#define HM_CONSUL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/config.h"

/* Longest service name (letters, digits, '-', '_', '.') and longest "host:port" returned. */
#define HM_CONSUL_NAME_MAX 128
#define HM_CONSUL_ADDR_MAX 300

/* The health name the registered GRPC check asks for (grpc.health.v1). */
#define HM_CONSUL_CHECK_HEALTH_NAME "readiness"

typedef struct hm_consul hm_consul_t;

/* Configuration, filled from hm_consul_config_vars by hm_config_load(). Strings point into the
 * environment; NULL and "" both mean unset. */
typedef struct hm_consul_config {
    const char *addr;            /* HM_CONSUL_ADDR: "http://host:port"; unset = no Consul */
    const char *token;           /* HM_CONSUL_TOKEN: ACL token (secret) */
    const char *service_address; /* HM_SERVICE_ADDRESS: address advertised to peers */
    const char *pod_ip;          /* HM_POD_IP: advertised when listening on all interfaces */
    const char *tags;            /* HM_CONSUL_TAGS: comma-separated extra tags */
    int64_t check_interval_ms;   /* HM_CONSUL_CHECK_INTERVAL */
    int64_t deregister_after_ms; /* HM_CONSUL_DEREGISTER_AFTER */
    int64_t refresh_ms;          /* HM_CONSUL_REFRESH: peer lists older than this are refetched */
    int64_t timeout_ms;          /* HM_CONSUL_TIMEOUT: bound on one HTTP request */
} hm_consul_config_t;

extern const hm_cfg_var_t hm_consul_config_vars[];
extern const size_t hm_consul_config_nvars;

/* One service found by hm_consul_resolve_tagged(). */
typedef struct hm_consul_peer {
    char service[HM_CONSUL_NAME_MAX + 1]; /* Consul service name ("guestd") */
    char addr[HM_CONSUL_ADDR_MAX + 1];    /* a healthy instance ("10.0.0.7:50051"), or "" */
} hm_consul_peer_t;

/* Counters for metrics; monotonic except `registered`. */
typedef struct hm_consul_stats {
    uint64_t requests;   /* HTTP requests made to Consul */
    uint64_t failures;   /* of which failed: transport error or a status other than 200 */
    uint64_t registered; /* 1 while this instance is registered, else 0 */
} hm_consul_stats_t;

/*
 * Builds the client for `service_name` (also the Consul service Name) at `version`, serving
 * gRPC on `grpc_addr` ("host:port" as in HM_GRPC_ADDR). Nothing is sent yet. The address
 * advertised is HM_SERVICE_ADDRESS, else the listen host, else (listening on 0.0.0.0 or ::)
 * HM_POD_IP. Tags are HM_CONSUL_TAGS plus those given to hm_consul_add_tag().
 *
 * With HM_CONSUL_ADDR unset, returns a disabled client: register and deregister do nothing,
 * resolution fails and hm_peer_addr() reads the environment. Returns NULL with a message
 * naming the variable in err when HM_CONSUL_ADDR is not an http(s) URL without a path, a tag
 * is empty or has spaces, or no address can be advertised (all interfaces, no HM_POD_IP and
 * no HM_SERVICE_ADDRESS). Calls curl_global_init(). The caller destroys the result.
 */
hm_consul_t *hm_consul_create(const hm_consul_config_t *cfg, const char *service_name,
                              const char *version, const char *grpc_addr, char *err, size_t errlen);

/* Frees the client (it does not deregister) and calls curl_global_cleanup(). No thread may be
 * resolving. NULL is a no-op. */
void hm_consul_destroy(hm_consul_t *c);

/* True when HM_CONSUL_ADDR is set. False for NULL. */
bool hm_consul_enabled(const hm_consul_t *c);

/* Adds a tag ("data-subject" for daemons implementing DataSubjectService) before
 * hm_consul_register(); duplicates are ignored. 0, or HM_EINVAL for an empty tag, one with
 * spaces or control characters, or one longer than 128 bytes. */
int hm_consul_add_tag(hm_consul_t *c, const char *tag);

/* Makes the check ask with TLS (GRPCUseTLS) once the server serves TLS. */
void hm_consul_set_check_tls(hm_consul_t *c, bool use_tls);

/* The instance ID ("bookingd-10.0.0.5-50051-3fa9c2d1"; owned by c), NULL when disabled. */
const char *hm_consul_service_id(const hm_consul_t *c);

/*
 * Registers this instance; call once the server accepts calls. Idempotent (same ID). Returns 0
 * (also when disabled), HM_EUNAVAIL when Consul cannot be reached or fails (5xx), HM_EPERM
 * when it refuses the token (401, 403), HM_EINVAL when it rejects the body (400),
 * HM_EINTERNAL when the body cannot be encoded (a version that is not UTF-8). After a failure
 * hm_consul_tick() keeps trying, with backoff, until deregistration.
 */
int hm_consul_register(hm_consul_t *c);

/*
 * Deregisters this instance; call before draining so peers stop choosing it. Returns 0 (also
 * when disabled or never registered; 404 counts as done), or HM_EUNAVAIL, in which case the
 * check turns critical when the server stops and Consul removes the instance after
 * HM_CONSUL_DEREGISTER_AFTER. Stops hm_consul_tick()'s registration retries either way.
 */
int hm_consul_deregister(hm_consul_t *c);

/*
 * Housekeeping for the main thread's loop (about once a second): retries a failed
 * registration when its backoff (1 s doubling to 30 s) has passed, and refreshes cached peer
 * lists that are due, so that workers seldom fetch one themselves. No-op when disabled.
 */
void hm_consul_tick(hm_consul_t *c);

/*
 * A healthy instance of `service` as "host:port" ("[v6]:port") in out (n bytes), the next in
 * round-robin order. Returns 0; HM_EUNAVAIL when disabled, when Consul lists no passing
 * instance, or when it could not be reached and no list was ever fetched (then it is asked
 * again after at most 1 s); HM_EINVAL for a malformed service name or when out is too small.
 * Thread-safe; blocks for at most HM_CONSUL_TIMEOUT when the list must be fetched.
 */
int hm_consul_resolve(hm_consul_t *c, const char *service, char *out, size_t n);

/*
 * Every service carrying `tag` in the catalog (GET /v1/catalog/services, cached and refreshed
 * like peer lists), sorted by name, each with a healthy instance resolved as above, or ""
 * when it has none right now: a participant that is down is reported, not hidden. Fills up to
 * `cap` entries of out and returns how many services carry the tag (may exceed cap), or
 * HM_EUNAVAIL (disabled, or Consul never reached), HM_EINVAL (malformed tag). Thread-safe.
 */
int hm_consul_resolve_tagged(hm_consul_t *c, const char *tag, hm_consul_peer_t *out, size_t cap);

/*
 * The address of peer `service` for a client: through Consul when c is enabled, otherwise, or
 * when Consul has no instance for it, from the environment variable HM_<SERVICE>_ADDR (upper
 * case, '-' and '.' as '_': "bookingd" -> HM_BOOKINGD_ADDR). c may be NULL. Returns 0;
 * HM_ENOTFOUND when neither knows the peer (HM_EUNAVAIL when Consul was asked); HM_EINVAL as
 * hm_consul_resolve().
 */
int hm_peer_addr(hm_consul_t *c, const char *service, char *out, size_t n);

/* Snapshot of the counters; callable from any thread. Zeros for NULL. */
void hm_consul_stats(const hm_consul_t *c, hm_consul_stats_t *out);

/* Appends hm_consul_registered and hm_consul_requests_total{result="ok|error"} to a
 * Prometheus text exposition. Nothing when disabled. */
void hm_consul_metrics(const hm_consul_t *c, FILE *out);

#endif
