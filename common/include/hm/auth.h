/*
 * hm/auth.h - who is calling, and whether they may: bearer JWTs and hashed API keys become a
 * principal, and a method's hm_policy_t decides whether that principal may make the call.
 *
 * Credentials, in request metadata:
 *   authorization: Bearer <JWT>   HS256 (a development secret), RS256 or ES256 (public keys
 *                                 from PEM files, chosen by the token's `kid` for rotation);
 *   x-api-key: <key>              a service's key, configured only as its SHA-256.
 * libjwt 1.10 checks signatures and nothing else, so this module chooses the key (from the
 * token's alg and kid, never letting the token pick the kind of key) and checks exp, nbf, iss
 * and aud itself, with HM_JWT_LEEWAY of clock skew. Claims: `sub` (the subject), `roles` (an
 * array of guest|staff|admin|service; other strings are ignored), `venues` (an array of venue
 * ids, for staff), `exp` (required).
 *
 * Verified tokens are cached, keyed by the token's SHA-256, until they expire, so a signature
 * is checked once per token rather than once per call. Tokens and keys never appear in
 * messages or logs; every failure is logged at warn as a security event
 * ("event":"auth_failure" or "authz_failure", with a "cause").
 *
 * HM_AUTH=off turns all of this off: every call runs as the anonymous principal "dev" with
 * every role. That is for development only; production must keep HM_AUTH on.
 *
 * An hm_auth_t is immutable after hm_auth_create() except for its internally locked cache, so
 * all worker threads share one and call authenticate/authorize concurrently.
 */
#ifndef HM_AUTH_H
#define HM_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "hm/arena.h"
#include "hm/config.h"
#include "hm/err.h"
#include "hm/server.h"

/* Request metadata keys (lower case, as gRPC delivers them). The end user's subject travels
 * in HM_AUTH_MD_END_USER on service-to-service calls, for audit only, never as authority. */
#define HM_AUTH_MD_AUTHORIZATION "authorization"
#define HM_AUTH_MD_API_KEY       "x-api-key"
#define HM_AUTH_MD_END_USER      "x-hm-end-user"

/* Longest bearer token accepted, in bytes; longer ones are malformed. */
#define HM_AUTH_TOKEN_MAX 8192

/* Smallest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the hash size). */
#define HM_AUTH_HS256_SECRET_MIN 32

typedef struct hm_auth hm_auth_t;

/* Configuration, filled from hm_auth_config_vars by hm_config_load(). Strings point into the
 * environment; NULL and "" both mean unset. */
typedef struct hm_auth_config {
    bool enabled;              /* HM_AUTH: off = everyone is the "dev" principal */
    const char *hs256_secret;  /* HM_JWT_HS256_SECRET: at least 32 bytes; development */
    const char *public_keys;   /* HM_JWT_PUBLIC_KEYS: "kid=path.pem[,kid=path.pem]" */
    const char *issuer;        /* HM_JWT_ISSUER: required `iss`; unset = not checked */
    const char *audience;      /* HM_JWT_AUDIENCE: required member of `aud`; unset = not checked */
    int64_t leeway_ms;         /* HM_JWT_LEEWAY: clock skew allowed for exp and nbf */
    const char *api_keys;      /* HM_API_KEYS: "name:sha256hex:role[+role][:venue|venue]", ... */
    const char *service_token; /* HM_SERVICE_TOKEN: this daemon's credential for its peers */
    long long cache_size;      /* HM_AUTH_CACHE_SIZE: verified tokens kept; 0 = no cache */
} hm_auth_config_t;

extern const hm_cfg_var_t hm_auth_config_vars[];
extern const size_t hm_auth_config_nvars;

/*
 * The authenticated caller. Strings and the venue array live as long as the memory the
 * principal was returned in (the call's arena), or are static.
 */
typedef struct hm_principal {
    const char *subject;       /* `sub` of the token, the API key's name, or "dev"; never "" */
    unsigned roles;            /* HM_ROLE_* bit set; 0 is possible (then nothing is allowed) */
    const char *const *venues; /* venue ids a staff member works for (NULL when nvenues is 0) */
    size_t nvenues;            /* entries in venues */
    const char *via;           /* static: "jwt" | "api-key" | "dev" */
    int64_t expires_ms;        /* token `exp` in ms since the epoch; INT64_MAX for keys, dev */
} hm_principal_t;

/* Counters for metrics; monotonic. */
typedef struct hm_auth_stats {
    uint64_t cache_hits;      /* tokens served from the cache */
    uint64_t cache_misses;    /* tokens looked up and not found (or expired there) */
    uint64_t cache_evictions; /* live entries pushed out to make room */
    uint64_t failures;        /* authentication failures (UNAUTHENTICATED) */
    uint64_t denials;         /* authorization failures (PERMISSION_DENIED) */
} hm_auth_stats_t;

/*
 * Builds the verifier from its configuration: reads and checks the public key files (RSA of
 * at least 2048 bits for RS256, EC P-256 for ES256), parses the API keys. Returns NULL with a
 * message in err naming the variable and the entry, never quoting key material, when anything
 * is malformed, when HM_JWT_HS256_SECRET is shorter than HM_AUTH_HS256_SECRET_MIN, or when
 * HM_AUTH is on and no credential of any kind is configured. With HM_AUTH off, logs a warning
 * and ignores the rest. The caller destroys the result.
 */
hm_auth_t *hm_auth_create(const hm_auth_config_t *cfg, char *err, size_t errlen);

/* Wipes secrets and frees everything. No call may be using it. NULL is a no-op. */
void hm_auth_destroy(hm_auth_t *auth);

/* False when HM_AUTH is off. */
bool hm_auth_enabled(const hm_auth_t *auth);

/* HM_SERVICE_TOKEN as configured (owned by auth), or NULL when unset. */
const char *hm_auth_service_token(const hm_auth_t *auth);

/*
 * The metadata this daemon sends on its calls to peers, built once from HM_SERVICE_TOKEN: a
 * JWT (three dot-separated parts) goes as *key = "authorization", *value = "Bearer <token>";
 * anything else is an API key, *key = "x-api-key". Returns false (and NULLs) when unset.
 * Strings are owned by auth.
 */
bool hm_auth_service_metadata(const hm_auth_t *auth, const char **key, const char **value);

/*
 * Authenticates one call from its `authorization` and `x-api-key` metadata values (NULL or ""
 * when absent). Exactly one must be given. On success sets *out to the principal, allocated
 * in `arena` (or static), and returns HM_STATUS_OK. Otherwise *out is NULL and the status is
 * UNAUTHENTICATED, reason "UNAUTHENTICATED", with a static message saying why: "missing
 * credentials", "conflicting credentials", "unsupported authorization scheme", "malformed
 * token", "unsupported token algorithm", "token key id required", "unknown token key id",
 * "invalid token signature", "invalid token claims", "token has no expiry", "token expired",
 * "token not yet valid", "wrong token issuer", "wrong token audience", "unknown api key".
 * Thread-safe. On a cache hit: one SHA-256, one locked look-up, one copy into the arena.
 */
hm_status_t hm_auth_authenticate(hm_auth_t *auth, hm_arena_t *arena, const char *authorization,
                                 const char *api_key, const hm_principal_t **out);

/*
 * Decides whether principal p may make a call under `policy` with the decoded request `req`:
 * an open policy allows everyone (p may be NULL); admin and service roles are always allowed;
 * otherwise p's roles must intersect policy->roles, and then a guest passes when
 * policy->self_field is unset or the request's field equals p->subject, a staff member when
 * policy->venue_field is unset or the field names one of p->venues (a missing or empty field
 * passes neither). Returns HM_STATUS_OK, PERMISSION_DENIED (reason "PERMISSION_DENIED", the
 * message saying which rule failed, field naming the request field), UNAUTHENTICATED for a
 * NULL principal on a closed policy, or INTERNAL when the policy names a field that is not a
 * top-level string field of the request (a bug in the method table). Messages are static or
 * in `arena`. Thread-safe.
 */
hm_status_t hm_auth_authorize(const hm_principal_t *p, const hm_policy_t *policy,
                              const ProtobufCMessage *req, hm_arena_t *arena);

/* "guest" -> HM_ROLE_GUEST, ... ; 0 for any other name. */
unsigned hm_auth_role_parse(const char *name);

/* The name of a single HM_ROLE_* bit, or NULL. */
const char *hm_auth_role_name(unsigned role);

/* Snapshot of the counters; callable from any thread. */
void hm_auth_stats(hm_auth_t *auth, hm_auth_stats_t *out);

#endif
