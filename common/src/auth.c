/*
 * auth.c - authentication and authorization (hm/auth.h): bearer JWTs verified with libjwt
 * plus our own key selection and claim checks, API keys kept as SHA-256 hashes, a sharded
 * cache of verified tokens, and the per-method policy check.
 *
 * A token not in the cache goes through:
 *   1. shape: 1..HM_AUTH_TOKEN_MAX bytes, three base64url segments;
 *   2. header (parsed here with jansson): alg, typ, crit, kid select the one key the token
 *      may be checked with. The token never picks the kind of key: HS256 uses only
 *      HM_JWT_HS256_SECRET, RS256 and ES256 only a public key of that type (by kid, or the
 *      only key), and every other alg ("none", HS384, PS256, ...) is refused;
 *   3. the claims (parsed here too) must be a JSON object;
 *   4. the signature, twice: first here (HS256: a constant-time comparison of the MAC, since
 *      libjwt 1.10 compares with strcmp(); RS256/ES256: with the key parsed once at start, since
 *      libjwt parses the PEM again on every call, about 1 ms with OpenSSL 3.0, which would let
 *      forged tokens cost far more than they should), then jwt_decode() with the same key,
 *      whose verified alg must be the one we selected;
 *   5. exp (required), nbf, iss, aud with HM_JWT_LEEWAY; then sub, roles, venues;
 *   6. the principal is copied into the cache until exp + leeway, when the token would be
 *      refused anyway.
 * A hit costs one SHA-256, one locked look-up in a set of CACHE_WAYS slots and one memcpy of
 * the principal into the caller's arena: the copy is made under the lock, so an entry evicted
 * right after cannot pull the principal from under the call.
 *
 * Cache layout: nsets sets of CACHE_WAYS slots, a set chosen by the first 8 bytes of the
 * token's SHA-256, set s guarded by shards[s % CACHE_SHARDS].lock. A principal in the cache
 * is one heap block (struct, venue array, strings), so copying it out is one memcpy plus
 * re-pointing. Insertion takes an empty or expired slot, else evicts the oldest insertion of
 * the set. Blocks replaced under the lock are freed after it is released.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "hm/auth.h"
#include "hm/id.h"
#include "hm/log.h"

#define SHA256_LEN    32
#define KID_MAX       64   /* key ids: 1..64 of [A-Za-z0-9._-] */
#define KEYNAME_MAX   64   /* API key names: same alphabet */
#define HEADER_B64MAX 1024 /* largest encoded JOSE header */
#define API_KEY_MAX   1024 /* longest x-api-key value considered */
#define HS256_B64LEN  43   /* base64url of 32 bytes, unpadded */
#define LOG_SUBJ_MAX  128  /* bytes of a subject quoted in a log line */
#define CACHE_WAYS    4    /* slots per set */
#define CACHE_SHARDS  32   /* locks; a power of two */
#define RSA_MIN_BITS  2048
#define RSA_MAX_BITS  8192
#define SIG_MAX       (RSA_MAX_BITS / 8) /* largest signature, in bytes */

#define SEC 1000LL
#define MIN (60LL * SEC)

/* ---- configuration table ---- */

#define AUTH(field, nm, ty, df, lo, hi, ch, fl, hp)                                                \
    HM_CFG_VAR(hm_auth_config_t, field, nm, ty, df, lo, hi, ch, fl, hp)

const hm_cfg_var_t hm_auth_config_vars[] = {
    AUTH(enabled, "HM_AUTH", HM_CFG_BOOL, "on", 1, 0, NULL, 0,
         "authenticate and authorize calls; off = everyone is admin (development only)"),
    AUTH(hs256_secret, "HM_JWT_HS256_SECRET", HM_CFG_STR, NULL, 1, 0, NULL, HM_CFG_SECRET,
         "HS256 secret of development tokens, at least 32 bytes"),
    AUTH(public_keys, "HM_JWT_PUBLIC_KEYS", HM_CFG_STR, NULL, 1, 0, NULL, 0,
         "RS256/ES256 public keys \"kid=path.pem[,kid=path.pem]\""),
    AUTH(issuer, "HM_JWT_ISSUER", HM_CFG_STR, NULL, 1, 0, NULL, 0,
         "required token issuer (iss); unset = not checked"),
    AUTH(audience, "HM_JWT_AUDIENCE", HM_CFG_STR, NULL, 1, 0, NULL, 0,
         "required token audience (aud); unset = not checked"),
    AUTH(leeway_ms, "HM_JWT_LEEWAY", HM_CFG_DURATION, "30s", 0, 5 * MIN, NULL, 0,
         "clock skew allowed when checking exp and nbf"),
    AUTH(api_keys, "HM_API_KEYS", HM_CFG_STR, NULL, 1, 0, NULL, 0,
         "API keys \"name:sha256hex:role[+role][:venue|venue]\", comma-separated"),
    AUTH(service_token, "HM_SERVICE_TOKEN", HM_CFG_STR, NULL, 1, 0, NULL, HM_CFG_SECRET,
         "this daemon's JWT or API key for calls to its peers"),
    AUTH(cache_size, "HM_AUTH_CACHE_SIZE", HM_CFG_INT, "4096", 0, 1000000, NULL, 0,
         "verified tokens cached until they expire; 0 = verify every call"),
};

const size_t hm_auth_config_nvars = sizeof hm_auth_config_vars / sizeof hm_auth_config_vars[0];

/* ---- failures ---- */

/* X(symbol, cause logged, message returned). */
#define AUTH_FAILURES(X)                                                                           \
    X(F_MISSING, "missing_credentials", "missing credentials")                                     \
    X(F_CONFLICT, "conflicting_credentials", "conflicting credentials")                            \
    X(F_SCHEME, "bad_scheme", "unsupported authorization scheme")                                  \
    X(F_MALFORMED, "malformed_token", "malformed token")                                           \
    X(F_ALG, "bad_algorithm", "unsupported token algorithm")                                       \
    X(F_NO_KID, "missing_kid", "token key id required")                                            \
    X(F_UNKNOWN_KID, "unknown_kid", "unknown token key id")                                        \
    X(F_SIGNATURE, "bad_signature", "invalid token signature")                                     \
    X(F_CLAIMS, "bad_claims", "invalid token claims")                                              \
    X(F_NO_EXP, "missing_exp", "token has no expiry")                                              \
    X(F_EXPIRED, "token_expired", "token expired")                                                 \
    X(F_NOT_YET, "token_not_yet_valid", "token not yet valid")                                     \
    X(F_ISSUER, "wrong_issuer", "wrong token issuer")                                              \
    X(F_AUDIENCE, "wrong_audience", "wrong token audience")                                        \
    X(F_API_KEY, "unknown_api_key", "unknown api key")

typedef enum auth_failure {
#define F_ENUM(sym, cause, msg) sym,
    AUTH_FAILURES(F_ENUM)
#undef F_ENUM
} auth_failure_t;

static const struct {
    const char *cause;
    const char *message;
} failures[] = {
#define F_ROW(sym, cause, msg) {cause, msg},
    AUTH_FAILURES(F_ROW)
#undef F_ROW
};

/* ---- state ---- */

typedef struct pubkey {
    char kid[KID_MAX + 1]; /* NUL-terminated, unique among the keys */
    jwt_alg_t alg;         /* JWT_ALG_RS256 or JWT_ALG_ES256, from the key's type */
    EVP_PKEY *pkey;        /* owned, parsed once: our own verification uses it */
    char *pem;             /* owned: SubjectPublicKeyInfo PEM of pkey, for libjwt */
    int pem_len;           /* bytes of pem, without its NUL */
} pubkey_t;

typedef struct api_key {
    unsigned char hash[SHA256_LEN]; /* SHA-256 of the key; the key itself is never held */
    hm_principal_t *principal;      /* owned flat block (principal_flatten), via "api-key" */
    size_t size;                    /* bytes of the block */
} api_key_t;

typedef struct cache_slot {
    unsigned char key[SHA256_LEN]; /* SHA-256 of the token; meaningful when p != NULL */
    int64_t until_ms;              /* wall clock ms from which the entry is dead */
    uint64_t stamp;                /* insertion order within the shard, for eviction */
    hm_principal_t *p;             /* owned flat block, NULL = empty slot */
    size_t size;                   /* bytes of the block */
} cache_slot_t;

/* One lock and its counters, alone on a cache line. */
typedef struct cache_shard {
    _Alignas(64) pthread_mutex_t lock; /* guards the slots of sets s with s % CACHE_SHARDS
                                          == this shard's index, and the counters below */
    uint64_t seq;                      /* next insertion stamp */
    uint64_t hits, misses, evictions;  /* statistics */
} cache_shard_t;

struct hm_auth {
    bool enabled;                  /* HM_AUTH; when false nothing else is set up */
    unsigned char *hs_key;         /* owned HS256 secret, NULL when unset; wiped on destroy */
    size_t hs_len;                 /* bytes of hs_key (>= HM_AUTH_HS256_SECRET_MIN) */
    pubkey_t *keys;                /* owned array of nkeys public keys */
    size_t nkeys;                  /* entries in keys */
    char *issuer;                  /* owned, NULL = not checked */
    char *audience;                /* owned, NULL = not checked */
    int64_t leeway_ms;             /* >= 0 */
    api_key_t *api_keys;           /* owned array of napi_keys */
    size_t napi_keys;              /* entries in api_keys */
    char *service_token;           /* owned, NULL when unset; wiped on destroy */
    char *service_md_value;        /* owned "Bearer <token>" or the API key; wiped on destroy */
    const char *service_md_key;    /* static: "authorization" or "x-api-key" */
    EVP_MD *sha256;                /* fetched once; OpenSSL objects are shareable */
    cache_slot_t *slots;           /* nsets * CACHE_WAYS slots, NULL when the cache is off */
    size_t nsets;                  /* sets of CACHE_WAYS slots; > 0 with the cache on */
    cache_shard_t *shards;         /* CACHE_SHARDS locks, NULL when the cache is off */
    atomic_uint_fast64_t failures; /* UNAUTHENTICATED returned */
};

/* Denials are counted per process: authorize has no hm_auth_t. */
static atomic_uint_fast64_t auth_denials;

static const hm_principal_t dev_principal = {
    .subject = "dev",
    .roles = HM_ROLES_ANY,
    .venues = NULL,
    .nvenues = 0,
    .via = "dev",
    .expires_ms = INT64_MAX,
};

static const char *const role_names[] = {"guest", "staff", "admin", "service"};

unsigned hm_auth_role_parse(const char *name)
{
    if (name == NULL)
        return 0;
    for (unsigned i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
        if (strcmp(name, role_names[i]) == 0)
            return 1u << i;
    }
    return 0;
}

const char *hm_auth_role_name(unsigned role)
{
    for (unsigned i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
        if (role == 1u << i)
            return role_names[i];
    }
    return NULL;
}

/* The role named by s[0..n), or 0. */
static unsigned role_parse_n(const char *s, size_t n)
{
    for (unsigned i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
        if (strlen(role_names[i]) == n && memcmp(s, role_names[i], n) == 0)
            return 1u << i;
    }
    return 0;
}

/* ---- small helpers ---- */

static bool empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = hm_xmalloc(n + 1);

    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

static bool sha256(const hm_auth_t *auth, const void *data, size_t n, unsigned char out[SHA256_LEN])
{
    unsigned int len = 0;

    return EVP_Digest(data, n, out, &len, auth->sha256, NULL) == 1 && len == SHA256_LEN;
}

/* base64url alphabet value of ch, or -1. */
static int b64url_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url s[0..n) into out (room for n * 3 / 4 bytes); the decoded length,
 * or -1 for a length or trailing bits no canonical encoding has. Characters were checked by
 * the caller. */
static long b64url_decode(const char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 6 | (uint32_t)b64url_val((unsigned char)s[i])) & 0xffffu;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if ((acc & ((1u << bits) - 1)) != 0)
        return -1; /* not the canonical encoding: left-over bits must be zero */
    return (long)o;
}

/* Encodes n bytes as unpadded base64url into out (room for 4 * ceil(n / 3) + 1). */
static size_t b64url_encode(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = tab[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = tab[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return o;
}

/* ---- principals as flat blocks ---- */

/* Bytes of a flat copy of p: the struct, then the venue pointers, then the strings. */
static size_t principal_size(const hm_principal_t *p)
{
    size_t n = sizeof *p + p->nvenues * sizeof(char *) + strlen(p->subject) + 1;

    for (size_t i = 0; i < p->nvenues; i++)
        n += strlen(p->venues[i]) + 1;
    return n;
}

/* Lays p out in buf (principal_size(p) bytes, suitably aligned) and returns the copy. */
static hm_principal_t *principal_flatten(const hm_principal_t *p, void *buf)
{
    hm_principal_t *d = buf;
    const char **venues = (const char **)(d + 1);
    char *s = (char *)(venues + p->nvenues);
    size_t n;

    *d = *p;
    n = strlen(p->subject) + 1;
    memcpy(s, p->subject, n);
    d->subject = s;
    s += n;
    for (size_t i = 0; i < p->nvenues; i++) {
        n = strlen(p->venues[i]) + 1;
        memcpy(s, p->venues[i], n);
        venues[i] = s;
        s += n;
    }
    d->venues = p->nvenues > 0 ? venues : NULL;
    return d;
}

/* Copies a flat block of `size` bytes into the arena with one memcpy and re-points it. */
static const hm_principal_t *principal_copy_flat(hm_arena_t *arena, const hm_principal_t *flat,
                                                 size_t size)
{
    const char *base = (const char *)flat;
    char *nbase = hm_arena_alloc(arena, size);
    hm_principal_t *d = (hm_principal_t *)nbase;

    memcpy(nbase, flat, size);
    d->subject = nbase + (flat->subject - base);
    if (flat->nvenues > 0) {
        const char **venues = (const char **)(d + 1);

        for (size_t i = 0; i < flat->nvenues; i++)
            venues[i] = nbase + (flat->venues[i] - base);
        d->venues = venues;
    }
    return d;
}

static hm_principal_t *principal_heap_copy(const hm_principal_t *p, size_t *size)
{
    *size = principal_size(p);
    return principal_flatten(p, hm_xmalloc(*size));
}

/* ---- security event logs ---- */

/* Logs an auth failure at warn: event, cause, via and, when known and trustworthy (the token's
 * signature verified), the subject. Never a token, key or claim of an unverified token. */
static void log_event(const char *event, const char *cause, const char *via, const char *subject,
                      const char *msg)
{
    char fields[384], subj[LOG_SUBJ_MAX + 1];
    unsigned len;

    if (HM_LOG_WARN < hm__log_level)
        return;
    len = (unsigned)snprintf(fields, sizeof fields,
                             "\"event\":\"%s\",\"cause\":\"%s\",\"via\":\"%s\"", event, cause, via);
    if (subject != NULL && len + 16 < sizeof fields) {
        snprintf(subj, sizeof subj, "%s", subject);
        len = (unsigned)(len +
                         (unsigned)snprintf(fields + len, sizeof fields - len, ",\"subject\":\""));
        len = hm_json_escape(fields, (unsigned)sizeof fields - 1, len, subj);
        fields[len++] = '"';
        fields[len] = '\0';
    }
    hm_log_write(HM_LOG_WARN, fields, "%s", msg);
}

static hm_status_t auth_fail(hm_auth_t *auth, auth_failure_t f, const char *via,
                             const char *subject)
{
    atomic_fetch_add_explicit(&auth->failures, 1, memory_order_relaxed);
    log_event("auth_failure", failures[f].cause, via, subject, failures[f].message);
    return (hm_status_t){HM_CODE_UNAUTHENTICATED, "UNAUTHENTICATED", failures[f].message, NULL};
}

/* ---- the cache ---- */

static size_t cache_set_of(const hm_auth_t *auth, const unsigned char key[SHA256_LEN])
{
    uint64_t h;

    memcpy(&h, key, sizeof h);
    return (size_t)(h % auth->nsets);
}

/* A live entry for key, copied into the arena; NULL on a miss. */
static const hm_principal_t *cache_get(hm_auth_t *auth, hm_arena_t *arena,
                                       const unsigned char key[SHA256_LEN], int64_t now)
{
    size_t set = cache_set_of(auth, key);
    cache_shard_t *sh = &auth->shards[set % CACHE_SHARDS];
    cache_slot_t *slot = &auth->slots[set * CACHE_WAYS];
    const hm_principal_t *p = NULL;

    pthread_mutex_lock(&sh->lock);
    for (size_t w = 0; w < CACHE_WAYS; w++) {
        if (slot[w].p != NULL && memcmp(slot[w].key, key, SHA256_LEN) == 0) {
            if (now < slot[w].until_ms)
                p = principal_copy_flat(arena, slot[w].p, slot[w].size);
            break;
        }
    }
    if (p != NULL)
        sh->hits++;
    else
        sh->misses++;
    pthread_mutex_unlock(&sh->lock);
    return p;
}

/* Stores a heap copy of p under key until until_ms. */
static void cache_put(hm_auth_t *auth, const unsigned char key[SHA256_LEN], const hm_principal_t *p,
                      int64_t until_ms, int64_t now)
{
    size_t set = cache_set_of(auth, key), size;
    cache_shard_t *sh = &auth->shards[set % CACHE_SHARDS];
    cache_slot_t *slot = &auth->slots[set * CACHE_WAYS], *victim = NULL;
    hm_principal_t *blk = principal_heap_copy(p, &size), *old;

    pthread_mutex_lock(&sh->lock);
    for (size_t w = 0; w < CACHE_WAYS && victim == NULL; w++) {
        if (slot[w].p != NULL && memcmp(slot[w].key, key, SHA256_LEN) == 0)
            victim = &slot[w]; /* another thread verified the same token */
    }
    for (size_t w = 0; w < CACHE_WAYS && victim == NULL; w++) {
        if (slot[w].p == NULL || slot[w].until_ms <= now)
            victim = &slot[w];
    }
    if (victim == NULL) {
        victim = &slot[0];
        for (size_t w = 1; w < CACHE_WAYS; w++) {
            if (slot[w].stamp < victim->stamp)
                victim = &slot[w];
        }
        sh->evictions++;
    }
    old = victim->p;
    memcpy(victim->key, key, SHA256_LEN);
    victim->until_ms = until_ms;
    victim->stamp = sh->seq++;
    victim->p = blk;
    victim->size = size;
    pthread_mutex_unlock(&sh->lock);
    free(old);
}

/* ---- JWT verification ---- */

/* The key a token must be verified with, chosen from the configuration, never from the token
 * beyond its alg and kid. */
typedef struct jwt_key {
    jwt_alg_t alg;            /* JWT_ALG_HS256, JWT_ALG_RS256 or JWT_ALG_ES256 */
    const unsigned char *key; /* what libjwt gets: the secret, or the public key's PEM */
    int len;                  /* bytes of key */
    const pubkey_t *pub;      /* RS256/ES256: the public key; NULL for HS256 */
} jwt_key_t;

/* -1 with *out set, or the failure: an alg other than HS256/RS256/ES256 or without a key of
 * its type configured, an unknown kid, or no kid when several public keys could apply. */
static int select_key(const hm_auth_t *auth, const char *alg, const char *kid, jwt_key_t *out)
{
    const pubkey_t *k = NULL;
    jwt_alg_t a;

    if (alg == NULL)
        return F_ALG;
    if (strcmp(alg, "HS256") == 0)
        a = JWT_ALG_HS256;
    else if (strcmp(alg, "RS256") == 0)
        a = JWT_ALG_RS256;
    else if (strcmp(alg, "ES256") == 0)
        a = JWT_ALG_ES256;
    else
        return F_ALG; /* "none", HS384, PS256, ... */

    if (a == JWT_ALG_HS256) {
        if (auth->hs_key == NULL)
            return F_ALG;
        *out = (jwt_key_t){a, auth->hs_key, (int)auth->hs_len, NULL};
        return -1;
    }
    if (auth->nkeys == 0)
        return F_ALG;
    if (kid != NULL) {
        for (size_t i = 0; i < auth->nkeys && k == NULL; i++) {
            if (strcmp(auth->keys[i].kid, kid) == 0)
                k = &auth->keys[i];
        }
        if (k == NULL)
            return F_UNKNOWN_KID;
    } else if (auth->nkeys == 1) {
        k = &auth->keys[0];
    } else {
        return F_NO_KID;
    }
    if (k->alg != a)
        return F_ALG; /* an RSA key for an ES256 token, or the reverse */
    *out = (jwt_key_t){a, (const unsigned char *)k->pem, k->pem_len, k};
    return -1;
}

/* HMAC-SHA256 of token[0..signed_len) under the secret, compared in constant time with the
 * signature segment `sig` (sig_len characters) as libjwt would compare it. */
static bool hs256_ok(const hm_auth_t *auth, const char *token, size_t signed_len, const char *sig,
                     size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char enc[HS256_B64LEN + 4];

    if (HMAC(EVP_sha256(), auth->hs_key, (int)auth->hs_len, (const unsigned char *)token,
             signed_len, mac, &mac_len) == NULL ||
        mac_len != SHA256_LEN)
        return false;
    b64url_encode(mac, SHA256_LEN, enc);
    OPENSSL_cleanse(mac, sizeof mac);
    if (sig_len != HS256_B64LEN)
        return false;
    return CRYPTO_memcmp(enc, sig, HS256_B64LEN) == 0;
}

/* An RS256 or ES256 signature (base64url sig[0..sig_len)) over token[0..signed_len) checked
 * with the key parsed at start. ES256 signatures are the raw r || s of RFC 7518 3.4, which
 * OpenSSL wants as DER. */
static bool pubkey_sig_ok(const pubkey_t *k, const char *token, size_t signed_len, const char *sig,
                          size_t sig_len)
{
    unsigned char raw[SIG_MAX], der[128];
    const unsigned char *s = raw;
    size_t slen;
    long n;
    EVP_MD_CTX *ctx;
    bool ok;

    if (sig_len == 0 || sig_len > (sizeof raw * 4 + 2) / 3)
        return false;
    n = b64url_decode(sig, sig_len, raw);
    if (n <= 0)
        return false;
    slen = (size_t)n;
    if (k->alg == JWT_ALG_ES256) {
        ECDSA_SIG *es;
        BIGNUM *r, *ss;
        unsigned char *p = der;
        int dlen;

        if (slen != 64)
            return false;
        es = ECDSA_SIG_new();
        r = BN_bin2bn(raw, 32, NULL);
        ss = BN_bin2bn(raw + 32, 32, NULL);
        if (es == NULL || r == NULL || ss == NULL || ECDSA_SIG_set0(es, r, ss) != 1) {
            BN_free(r);
            BN_free(ss);
            ECDSA_SIG_free(es);
            return false;
        }
        dlen = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof der ? i2d_ECDSA_SIG(es, &p) : -1;
        ECDSA_SIG_free(es);
        if (dlen <= 0)
            return false;
        s = der;
        slen = (size_t)dlen;
    } else if (slen != (size_t)EVP_PKEY_get_size(k->pkey)) {
        return false;
    }
    ctx = EVP_MD_CTX_new();
    ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
         EVP_DigestVerify(ctx, s, slen, (const unsigned char *)token, signed_len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* Decodes base64url s[0..n) as a JSON object; NULL when it is not one. */
static json_t *decode_json(const char *s, size_t n)
{
    unsigned char stackbuf[HEADER_B64MAX], *buf = stackbuf;
    json_t *j;
    long len;

    if (n > sizeof stackbuf)
        buf = hm_xmalloc(n);
    len = b64url_decode(s, n, buf);
    j = len <= 0 ? NULL : json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (buf != stackbuf)
        free(buf);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* A string member without embedded NULs, or NULL. */
static const char *json_cstr(const json_t *v)
{
    const char *s = json_string_value(v);

    if (s == NULL || strlen(s) != json_string_length(v))
        return NULL;
    return s;
}

/* A NumericDate claim in ms: 1 and *ms when present and valid, 0 when absent, -1 when not a
 * number of seconds between 0 and 10^13. */
static int claim_time(const json_t *claims, const char *name, int64_t *ms)
{
    const json_t *v = json_object_get(claims, name);
    double d;

    if (v == NULL)
        return 0;
    if (!json_is_number(v))
        return -1;
    d = json_number_value(v);
    if (!isfinite(d) || d < 0 || d > 1e13)
        return -1;
    *ms = json_is_integer(v) ? (int64_t)json_integer_value(v) * 1000 : (int64_t)(d * 1000.0);
    return 1;
}

static bool audience_ok(const json_t *aud, const char *want)
{
    const char *s;

    if (json_is_string(aud))
        return (s = json_cstr(aud)) != NULL && strcmp(s, want) == 0;
    if (json_is_array(aud)) {
        size_t i;
        const json_t *v;

        json_array_foreach(aud, i, v)
        {
            if ((s = json_cstr(v)) != NULL && strcmp(s, want) == 0)
                return true;
        }
    }
    return false;
}

/*
 * Checks the claims of a token whose signature verified and builds its principal in the
 * arena. Returns -1 on success, else the failure; *subject is set to `sub` once known (for
 * the log), *until_ms to when the token stops being acceptable.
 */
static int check_claims(const hm_auth_t *auth, hm_arena_t *arena, const json_t *claims, int64_t now,
                        const hm_principal_t **out, const char **subject, int64_t *until_ms)
{
    int64_t exp_ms = 0, nbf_ms = 0;
    const json_t *roles, *venues, *v;
    const char *sub;
    hm_principal_t p = {.via = "jwt"};
    size_t i;
    int rc;

    sub = json_cstr(json_object_get(claims, "sub"));
    if (sub != NULL && sub[0] != '\0')
        *subject = sub;
    rc = claim_time(claims, "exp", &exp_ms);
    if (rc < 0)
        return F_CLAIMS;
    if (rc == 0)
        return F_NO_EXP;
    if (now >= exp_ms + auth->leeway_ms)
        return F_EXPIRED;
    rc = claim_time(claims, "nbf", &nbf_ms);
    if (rc < 0)
        return F_CLAIMS;
    if (rc > 0 && nbf_ms > now + auth->leeway_ms)
        return F_NOT_YET;
    if (auth->issuer != NULL) {
        const char *iss = json_cstr(json_object_get(claims, "iss"));

        if (iss == NULL || strcmp(iss, auth->issuer) != 0)
            return F_ISSUER;
    }
    if (auth->audience != NULL && !audience_ok(json_object_get(claims, "aud"), auth->audience))
        return F_AUDIENCE;
    if (sub == NULL || sub[0] == '\0')
        return F_CLAIMS;

    p.subject = sub;
    p.expires_ms = exp_ms;
    roles = json_object_get(claims, "roles");
    if (roles != NULL) {
        if (!json_is_array(roles))
            return F_CLAIMS;
        json_array_foreach(roles, i, v)
        {
            const char *name = json_cstr(v);

            if (name == NULL)
                return F_CLAIMS;
            p.roles |= hm_auth_role_parse(name); /* unknown role names are ignored */
        }
    }
    venues = json_object_get(claims, "venues");
    if (venues != NULL) {
        const char **list;

        if (!json_is_array(venues))
            return F_CLAIMS;
        list = hm_arena_alloc(arena, (json_array_size(venues) + 1) * sizeof *list);
        json_array_foreach(venues, i, v)
        {
            const char *id = json_cstr(v);

            if (id == NULL || id[0] == '\0')
                return F_CLAIMS;
            list[p.nvenues++] = id;
        }
        p.venues = list;
    }
    *out = principal_flatten(&p, hm_arena_alloc(arena, principal_size(&p)));
    *until_ms = exp_ms + auth->leeway_ms;
    return -1;
}

/* Verifies a token that missed the cache; -1 and *out on success, else the failure. */
static int verify_jwt(hm_auth_t *auth, hm_arena_t *arena, const char *token, size_t len,
                      int64_t now, const hm_principal_t **out, const char **subject,
                      int64_t *until_ms)
{
    const char *dot1, *dot2, *sig;
    json_t *header = NULL, *claims = NULL;
    const char *typ;
    jwt_key_t key;
    jwt_t *jwt = NULL;
    int rc;

    /* 1. shape */
    dot1 = memchr(token, '.', len);
    dot2 = dot1 != NULL ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot1 == NULL || dot2 == NULL || dot1 == token || dot2 == dot1 + 1 ||
        dot1 - token > HEADER_B64MAX)
        return F_MALFORMED;
    sig = dot2 + 1;
    for (size_t i = 0; i < len; i++) {
        if (token + i != dot1 && token + i != dot2 && b64url_val((unsigned char)token[i]) < 0)
            return F_MALFORMED;
    }

    /* 2. header -> key */
    header = decode_json(token, (size_t)(dot1 - token));
    if (header == NULL)
        return F_MALFORMED;
    typ = json_string_value(json_object_get(header, "typ"));
    if ((json_object_get(header, "typ") != NULL && (typ == NULL || strcasecmp(typ, "JWT") != 0)) ||
        json_object_get(header, "crit") != NULL ||
        (json_object_get(header, "kid") != NULL &&
         json_cstr(json_object_get(header, "kid")) == NULL)) {
        rc = F_MALFORMED;
        goto out;
    }
    rc = select_key(auth, json_cstr(json_object_get(header, "alg")),
                    json_cstr(json_object_get(header, "kid")), &key);
    if (rc >= 0)
        goto out;

    /* 3. claims must parse before the signature is worth checking */
    claims = decode_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (claims == NULL) {
        rc = F_MALFORMED;
        goto out;
    }

    /* 4. signature: ours first, so a forged token costs microseconds (libjwt re-parses the
     * PEM key on every call, about a millisecond with OpenSSL 3.0), then libjwt's */
    if (key.pub == NULL
            ? !hs256_ok(auth, token, (size_t)(dot2 - token), sig, len - (size_t)(sig - token))
            : !pubkey_sig_ok(key.pub, token, (size_t)(dot2 - token), sig,
                             len - (size_t)(sig - token))) {
        rc = F_SIGNATURE;
        goto out;
    }
    if (jwt_decode(&jwt, token, key.key, key.len) != 0 || jwt == NULL ||
        jwt_get_alg(jwt) != key.alg) {
        rc = F_SIGNATURE;
        goto out;
    }

    /* 5. claims */
    rc = check_claims(auth, arena, claims, now, out, subject, until_ms);
out:
    if (rc >= 0 && *subject != NULL)
        *subject = hm_arena_strdup(arena, *subject); /* for the log; the JSON dies here */
    jwt_free(jwt);
    json_decref(claims);
    json_decref(header);
    return rc;
}

static hm_status_t authenticate_jwt(hm_auth_t *auth, hm_arena_t *arena, const char *token,
                                    const hm_principal_t **out)
{
    unsigned char key[SHA256_LEN];
    const char *subject = NULL;
    int64_t now = hm_now_ms(), until_ms = 0;
    size_t len = strnlen(token, HM_AUTH_TOKEN_MAX + 1);
    int rc;

    if (len == 0 || len > HM_AUTH_TOKEN_MAX)
        return auth_fail(auth, F_MALFORMED, "jwt", NULL);
    if (auth->slots != NULL) {
        if (!sha256(auth, token, len, key))
            return auth_fail(auth, F_MALFORMED, "jwt", NULL);
        *out = cache_get(auth, arena, key, now);
        if (*out != NULL)
            return HM_STATUS_OK;
    }
    rc = verify_jwt(auth, arena, token, len, now, out, &subject, &until_ms);
    if (rc >= 0) {
        *out = NULL;
        return auth_fail(auth, (auth_failure_t)rc, "jwt", subject);
    }
    if (auth->slots != NULL)
        cache_put(auth, key, *out, until_ms, now);
    return HM_STATUS_OK;
}

/* ---- API keys ---- */

static hm_status_t authenticate_api_key(hm_auth_t *auth, hm_arena_t *arena, const char *api_key,
                                        const hm_principal_t **out)
{
    unsigned char h[SHA256_LEN];
    size_t len = strnlen(api_key, API_KEY_MAX + 1), idx = 0;
    unsigned found = 0;

    if (len > API_KEY_MAX || !sha256(auth, api_key, len, h))
        return auth_fail(auth, F_API_KEY, "api-key", NULL);
    /* Every entry is compared, in constant time, and the match is selected without a branch:
     * the time taken says nothing about which key, if any, matched. */
    for (size_t i = 0; i < auth->napi_keys; i++) {
        unsigned eq = (unsigned)(CRYPTO_memcmp(h, auth->api_keys[i].hash, SHA256_LEN) == 0);
        size_t mask = (size_t)0 - (size_t)eq;

        idx = (idx & ~mask) | (i & mask);
        found |= eq;
    }
    OPENSSL_cleanse(h, sizeof h);
    if (!found)
        return auth_fail(auth, F_API_KEY, "api-key", NULL);
    *out = principal_copy_flat(arena, auth->api_keys[idx].principal, auth->api_keys[idx].size);
    return HM_STATUS_OK;
}

/* ---- authenticate ---- */

/* The token of "Bearer <token>" (scheme case-insensitive, one or more spaces), or NULL. */
static const char *bearer_token(const char *authorization)
{
    const char *p;

    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    for (p = authorization + 7; *p == ' '; p++)
        ;
    return p;
}

hm_status_t hm_auth_authenticate(hm_auth_t *auth, hm_arena_t *arena, const char *authorization,
                                 const char *api_key, const hm_principal_t **out)
{
    const char *token;

    *out = NULL;
    if (!auth->enabled) {
        *out = &dev_principal;
        return HM_STATUS_OK;
    }
    if (empty(authorization) && empty(api_key))
        return auth_fail(auth, F_MISSING, "none", NULL);
    if (!empty(authorization) && !empty(api_key))
        return auth_fail(auth, F_CONFLICT, "none", NULL);
    if (!empty(api_key))
        return authenticate_api_key(auth, arena, api_key, out);
    token = bearer_token(authorization);
    if (token == NULL)
        return auth_fail(auth, F_SCHEME, "jwt", NULL);
    return authenticate_jwt(auth, arena, token, out);
}

/* ---- authorize ---- */

/* The value of the top-level string field `name` of req: 0 with *val (NULL when unset or in
 * another oneof member), or HM_EINVAL when req has no such string field. */
static int string_field(const ProtobufCMessage *req, const char *name, const char **val)
{
    const ProtobufCFieldDescriptor *f;

    *val = NULL;
    if (req == NULL)
        return 0;
    f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor, name);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
        return HM_EINVAL;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t which;

        memcpy(&which, (const char *)req + f->quantifier_offset, sizeof which);
        if (which != f->id)
            return 0; /* the storage holds another member */
    }
    memcpy(val, (const char *)req + f->offset, sizeof *val);
    return 0;
}

static hm_status_t deny(const hm_principal_t *p, const char *cause, const char *field,
                        const char *msg)
{
    atomic_fetch_add_explicit(&auth_denials, 1, memory_order_relaxed);
    log_event("authz_failure", cause, p->via, p->subject, msg);
    return (hm_status_t){HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED", msg, field};
}

static hm_status_t bad_policy(const char *field)
{
    HM_ERROR("method policy names %s, which is not a string field of the request", field);
    return (hm_status_t){HM_CODE_INTERNAL, "INTERNAL", "internal error", NULL};
}

hm_status_t hm_auth_authorize(const hm_principal_t *p, const hm_policy_t *policy,
                              const ProtobufCMessage *req, hm_arena_t *arena)
{
    static const hm_policy_t closed = {.open = false, .roles = 0};
    bool guest_failed = false, staff_failed = false;
    unsigned allowed;
    const char *val;

    if (policy == NULL)
        policy = &closed; /* admin and service only */
    if (policy->open)
        return HM_STATUS_OK;
    if (p == NULL)
        return (hm_status_t){HM_CODE_UNAUTHENTICATED, "UNAUTHENTICATED",
                             failures[F_MISSING].message, NULL};
    if (p->roles & (HM_ROLE_ADMIN | HM_ROLE_SERVICE))
        return HM_STATUS_OK;
    allowed = p->roles & policy->roles & (HM_ROLE_GUEST | HM_ROLE_STAFF);
    if (allowed == 0)
        return deny(p, "role", NULL, "caller's role may not call this method");
    if (allowed & HM_ROLE_GUEST) {
        if (policy->self_field == NULL)
            return HM_STATUS_OK;
        if (string_field(req, policy->self_field, &val) != 0)
            return bad_policy(policy->self_field);
        if (!empty(val) && strcmp(val, p->subject) == 0)
            return HM_STATUS_OK;
        guest_failed = true;
    }
    if (allowed & HM_ROLE_STAFF) {
        if (policy->venue_field == NULL)
            return HM_STATUS_OK;
        if (string_field(req, policy->venue_field, &val) != 0)
            return bad_policy(policy->venue_field);
        for (size_t i = 0; !empty(val) && i < p->nvenues; i++) {
            if (strcmp(val, p->venues[i]) == 0)
                return HM_STATUS_OK;
        }
        staff_failed = true;
    }
    if (guest_failed && staff_failed)
        return deny(p, "self_or_venue", NULL,
                    hm_arena_printf(arena, "%s must be the caller's own id or %s one of its venues",
                                    policy->self_field, policy->venue_field));
    if (guest_failed)
        return deny(p, "not_self", policy->self_field,
                    hm_arena_printf(arena, "%s must be the caller's own id", policy->self_field));
    return deny(
        p, "venue", policy->venue_field,
        hm_arena_printf(arena, "%s must be one of the caller's venues", policy->venue_field));
}

/* ---- create / destroy ---- */

/* Reads one PEM public key file into k (kid already set); 0, or HM_EINVAL with err set. */
static int load_pubkey(pubkey_t *k, const char *path, char *err, size_t errlen)
{
    BIO *in = BIO_new_file(path, "r"), *out = NULL;
    EVP_PKEY *pk = NULL;
    char *data;
    long n;
    int rc = HM_EINVAL;

    if (in == NULL) {
        snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": cannot read %s", k->kid, path);
        return HM_EINVAL;
    }
    pk = PEM_read_bio_PUBKEY(in, NULL, NULL, NULL);
    if (pk == NULL) {
        snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": %s holds no PEM public key", k->kid,
                 path);
        goto done;
    }
    if (EVP_PKEY_is_a(pk, "RSA")) {
        if (EVP_PKEY_get_bits(pk) < RSA_MIN_BITS || EVP_PKEY_get_bits(pk) > RSA_MAX_BITS) {
            snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": RSA keys need %d to %d bits",
                     k->kid, RSA_MIN_BITS, RSA_MAX_BITS);
            goto done;
        }
        k->alg = JWT_ALG_RS256;
    } else if (EVP_PKEY_is_a(pk, "EC")) {
        char group[64] = "";
        size_t glen = 0;

        if (EVP_PKEY_get_utf8_string_param(pk, "group", group, sizeof group, &glen) != 1 ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
            snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": EC keys must be on P-256",
                     k->kid);
            goto done;
        }
        k->alg = JWT_ALG_ES256;
    } else {
        snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": want an RSA or EC P-256 key",
                 k->kid);
        goto done;
    }
    /* Hand libjwt exactly the key checked above, re-encoded, not whatever else the file has. */
    out = BIO_new(BIO_s_mem());
    if (out == NULL || PEM_write_bio_PUBKEY(out, pk) != 1 ||
        (n = BIO_get_mem_data(out, &data)) <= 0) {
        snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": cannot encode it", k->kid);
        goto done;
    }
    k->pem = xstrndup(data, (size_t)n);
    k->pem_len = (int)n;
    k->pkey = pk;
    pk = NULL;
    rc = 0;
done:
    EVP_PKEY_free(pk);
    BIO_free(out);
    BIO_free(in);
    return rc;
}

static int parse_public_keys(hm_auth_t *auth, const char *spec, char *err, size_t errlen)
{
    size_t cap = 1, entry = 0;

    for (const char *p = spec; *p != '\0'; p++)
        cap += *p == ',';
    auth->keys = hm_xcalloc(cap, sizeof *auth->keys);
    for (const char *p = spec; p != NULL; entry++) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', n), *kid = p, *path;
        size_t klen, plen;
        pubkey_t *k = &auth->keys[auth->nkeys];
        char *pathz;
        int rc;

        p = comma != NULL ? comma + 1 : NULL;
        if (eq == NULL) {
            snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: entry %zu: want kid=path", entry + 1);
            return HM_EINVAL;
        }
        klen = (size_t)(eq - kid);
        path = eq + 1;
        plen = n - klen - 1;
        hm_str_trim(&kid, &klen);
        hm_str_trim(&path, &plen);
        if (!hm_str_is_token(kid, klen, KID_MAX)) {
            snprintf(err, errlen,
                     "HM_JWT_PUBLIC_KEYS: entry %zu: key id must be 1 to %d of A-Z a-z 0-9 . _ -",
                     entry + 1, KID_MAX);
            return HM_EINVAL;
        }
        memcpy(k->kid, kid, klen);
        k->kid[klen] = '\0';
        for (size_t i = 0; i < auth->nkeys; i++) {
            if (strcmp(auth->keys[i].kid, k->kid) == 0) {
                snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key id \"%s\" appears twice", k->kid);
                return HM_EINVAL;
            }
        }
        if (plen == 0) {
            snprintf(err, errlen, "HM_JWT_PUBLIC_KEYS: key \"%s\": no file", k->kid);
            return HM_EINVAL;
        }
        pathz = xstrndup(path, plen);
        rc = load_pubkey(k, pathz, err, errlen);
        free(pathz);
        if (rc != 0)
            return rc;
        auth->nkeys++;
    }
    return 0;
}

/* One "name:sha256hex:role[+role][:venue|venue]" entry into k; 0 or HM_EINVAL. */
static int parse_api_key(hm_auth_t *auth, api_key_t *k, const char *s, size_t n, size_t entry,
                         char *err, size_t errlen)
{
    const char *parts[4];
    size_t lens[4], np = 0;
    const char *p = s, *end = s + n;
    hm_principal_t pr = {.via = "api-key", .expires_ms = INT64_MAX};
    const char *venues[256];
    char *name;
    int rc = HM_EINVAL;

    for (;;) {
        const char *colon = memchr(p, ':', (size_t)(end - p));

        if (np == 4) {
            np = 0; /* a fifth part */
            break;
        }
        parts[np] = p;
        lens[np] = colon != NULL ? (size_t)(colon - p) : (size_t)(end - p);
        hm_str_trim(&parts[np], &lens[np]);
        np++;
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    if (np < 3) {
        snprintf(err, errlen, "HM_API_KEYS: entry %zu: want name:sha256hex:roles[:venues]", entry);
        return HM_EINVAL;
    }
    if (!hm_str_is_token(parts[0], lens[0], KEYNAME_MAX)) {
        snprintf(err, errlen, "HM_API_KEYS: entry %zu: name must be 1 to %d of A-Z a-z 0-9 . _ -",
                 entry, KEYNAME_MAX);
        return HM_EINVAL;
    }
    if (lens[1] != 2 * SHA256_LEN) {
        snprintf(err, errlen, "HM_API_KEYS: entry %zu: want the key's SHA-256 as 64 hex digits",
                 entry);
        return HM_EINVAL;
    }
    for (size_t i = 0; i < SHA256_LEN; i++) {
        int hi = hexval((unsigned char)parts[1][2 * i]),
            lo = hexval((unsigned char)parts[1][2 * i + 1]);

        if (hi < 0 || lo < 0) {
            snprintf(err, errlen, "HM_API_KEYS: entry %zu: want the key's SHA-256 as 64 hex digits",
                     entry);
            return HM_EINVAL;
        }
        k->hash[i] = (unsigned char)(hi << 4 | lo);
    }
    for (const char *r = parts[2], *rend = parts[2] + lens[2]; r <= rend;) {
        const char *plus = memchr(r, '+', (size_t)(rend - r));
        size_t rl = plus != NULL ? (size_t)(plus - r) : (size_t)(rend - r);
        unsigned bit = role_parse_n(r, rl);

        if (bit == 0) {
            snprintf(err, errlen,
                     "HM_API_KEYS: entry %zu: roles must be guest, staff, admin or service "
                     "joined by +",
                     entry);
            return HM_EINVAL;
        }
        pr.roles |= bit;
        if (plus == NULL)
            break;
        r = plus + 1;
    }
    if (np == 4) {
        for (const char *v = parts[3], *vend = parts[3] + lens[3]; v <= vend;) {
            const char *bar = memchr(v, '|', (size_t)(vend - v));
            size_t vl = bar != NULL ? (size_t)(bar - v) : (size_t)(vend - v);
            const char *id = v;

            hm_str_trim(&id, &vl);
            if (vl == 0 || pr.nvenues == sizeof venues / sizeof venues[0]) {
                snprintf(err, errlen,
                         "HM_API_KEYS: entry %zu: venues must be 1 to 256 non-empty ids joined "
                         "by |",
                         entry);
                goto done;
            }
            venues[pr.nvenues++] = xstrndup(id, vl);
            if (bar == NULL)
                break;
            v = bar + 1;
        }
    }
    name = xstrndup(parts[0], lens[0]);
    for (size_t i = 0; i < auth->napi_keys; i++) {
        if (strcmp(auth->api_keys[i].principal->subject, name) == 0 ||
            CRYPTO_memcmp(auth->api_keys[i].hash, k->hash, SHA256_LEN) == 0) {
            snprintf(err, errlen, "HM_API_KEYS: entry %zu: name or key given twice", entry);
            free(name);
            goto done;
        }
    }
    pr.subject = name;
    pr.venues = pr.nvenues > 0 ? venues : NULL;
    k->principal = principal_heap_copy(&pr, &k->size);
    free(name);
    rc = 0;
done:
    for (size_t i = 0; i < pr.nvenues; i++)
        free((void *)venues[i]);
    return rc;
}

static int parse_api_keys(hm_auth_t *auth, const char *spec, char *err, size_t errlen)
{
    size_t cap = 1, entry = 0;

    for (const char *p = spec; *p != '\0'; p++)
        cap += *p == ',';
    auth->api_keys = hm_xcalloc(cap, sizeof *auth->api_keys);
    for (const char *p = spec; p != NULL;) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        int rc = parse_api_key(auth, &auth->api_keys[auth->napi_keys], p, n, ++entry, err, errlen);

        if (rc != 0)
            return rc;
        auth->napi_keys++;
        p = comma != NULL ? comma + 1 : NULL;
    }
    return 0;
}

/* True for a compact JWS: three base64url parts joined by dots. */
static bool looks_like_jwt(const char *s)
{
    int dots = 0;

    for (; *s != '\0'; s++) {
        if (*s == '.')
            dots++;
        else if (b64url_val((unsigned char)*s) < 0)
            return false;
    }
    return dots == 2;
}

static void cache_init(hm_auth_t *auth, long long size)
{
    if (size <= 0)
        return;
    auth->nsets = ((size_t)size + CACHE_WAYS - 1) / CACHE_WAYS;
    auth->slots = hm_xcalloc(auth->nsets * CACHE_WAYS, sizeof *auth->slots);
    auth->shards = aligned_alloc(_Alignof(cache_shard_t), CACHE_SHARDS * sizeof *auth->shards);
    if (auth->shards == NULL)
        abort();
    memset(auth->shards, 0, CACHE_SHARDS * sizeof *auth->shards);
    for (size_t i = 0; i < CACHE_SHARDS; i++)
        pthread_mutex_init(&auth->shards[i].lock, NULL);
}

static void cache_deinit(hm_auth_t *auth)
{
    if (auth->slots == NULL)
        return;
    for (size_t i = 0; i < auth->nsets * CACHE_WAYS; i++)
        free(auth->slots[i].p);
    free(auth->slots);
    for (size_t i = 0; i < CACHE_SHARDS; i++)
        pthread_mutex_destroy(&auth->shards[i].lock);
    free(auth->shards);
}

static void free_str(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void hm_auth_destroy(hm_auth_t *auth)
{
    if (auth == NULL)
        return;
    if (auth->hs_key != NULL) {
        OPENSSL_cleanse(auth->hs_key, auth->hs_len);
        free(auth->hs_key);
    }
    for (size_t i = 0; i < auth->nkeys; i++) {
        free(auth->keys[i].pem);
        EVP_PKEY_free(auth->keys[i].pkey);
    }
    free(auth->keys);
    for (size_t i = 0; i < auth->napi_keys; i++)
        free(auth->api_keys[i].principal);
    free(auth->api_keys);
    free(auth->issuer);
    free(auth->audience);
    free_str(auth->service_token);
    free_str(auth->service_md_value);
    cache_deinit(auth);
    EVP_MD_free(auth->sha256);
    free(auth);
}

hm_auth_t *hm_auth_create(const hm_auth_config_t *cfg, char *err, size_t errlen)
{
    hm_auth_t *auth = hm_xcalloc(1, sizeof *auth);

    if (errlen > 0)
        err[0] = '\0';
    atomic_init(&auth->failures, 0);
    auth->enabled = cfg->enabled;
    if (!empty(cfg->service_token)) {
        auth->service_token = hm_xstrdup(cfg->service_token);
        if (looks_like_jwt(cfg->service_token)) {
            size_t n = strlen(cfg->service_token) + 8;

            auth->service_md_key = HM_AUTH_MD_AUTHORIZATION;
            auth->service_md_value = hm_xmalloc(n);
            snprintf(auth->service_md_value, n, "Bearer %s", cfg->service_token);
        } else {
            auth->service_md_key = HM_AUTH_MD_API_KEY;
            auth->service_md_value = hm_xstrdup(cfg->service_token);
        }
    }
    if (!auth->enabled) {
        hm_log_write(HM_LOG_WARN, "\"event\":\"auth_disabled\"",
                     "HM_AUTH is off: every call runs as an anonymous admin; never run like this "
                     "in production");
        return auth;
    }

    auth->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (auth->sha256 == NULL) {
        snprintf(err, errlen, "auth: SHA-256 is not available");
        goto fail;
    }
    if (!empty(cfg->hs256_secret)) {
        auth->hs_len = strlen(cfg->hs256_secret);
        if (auth->hs_len < HM_AUTH_HS256_SECRET_MIN) {
            snprintf(err, errlen, "HM_JWT_HS256_SECRET: must be at least %d bytes",
                     HM_AUTH_HS256_SECRET_MIN);
            goto fail;
        }
        auth->hs_key = hm_xmalloc(auth->hs_len);
        memcpy(auth->hs_key, cfg->hs256_secret, auth->hs_len);
    }
    if (!empty(cfg->public_keys) && parse_public_keys(auth, cfg->public_keys, err, errlen) != 0)
        goto fail;
    if (!empty(cfg->api_keys) && parse_api_keys(auth, cfg->api_keys, err, errlen) != 0)
        goto fail;
    if (auth->hs_key == NULL && auth->nkeys == 0 && auth->napi_keys == 0) {
        snprintf(err, errlen,
                 "HM_AUTH: on, but none of HM_JWT_HS256_SECRET, HM_JWT_PUBLIC_KEYS, HM_API_KEYS "
                 "is set");
        goto fail;
    }
    auth->issuer = empty(cfg->issuer) ? NULL : hm_xstrdup(cfg->issuer);
    auth->audience = empty(cfg->audience) ? NULL : hm_xstrdup(cfg->audience);
    auth->leeway_ms = cfg->leeway_ms > 0 ? cfg->leeway_ms : 0;
    cache_init(auth, cfg->cache_size);

    HM_INFO("auth on: hs256 %s, %zu public key(s), %zu api key(s), issuer %s, audience %s, "
            "cache %lld",
            auth->hs_key != NULL ? "on" : "off", auth->nkeys, auth->napi_keys,
            auth->issuer != NULL ? "checked" : "not checked",
            auth->audience != NULL ? "checked" : "not checked", cfg->cache_size);
    if (auth->hs_key != NULL && auth->nkeys > 0)
        HM_WARN("HM_JWT_HS256_SECRET is set alongside public keys: HS256 is for development");
    if ((auth->hs_key != NULL || auth->nkeys > 0) && auth->audience == NULL)
        HM_WARN("HM_JWT_AUDIENCE is not set: tokens issued for any audience are accepted");
    return auth;
fail:
    hm_auth_destroy(auth);
    return NULL;
}

bool hm_auth_enabled(const hm_auth_t *auth)
{
    return auth->enabled;
}

const char *hm_auth_service_token(const hm_auth_t *auth)
{
    return auth->service_token;
}

bool hm_auth_service_metadata(const hm_auth_t *auth, const char **key, const char **value)
{
    *key = auth->service_md_key;
    *value = auth->service_md_value;
    return auth->service_md_value != NULL;
}

void hm_auth_stats(hm_auth_t *auth, hm_auth_stats_t *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; auth->shards != NULL && i < CACHE_SHARDS; i++) {
        cache_shard_t *sh = &auth->shards[i];

        pthread_mutex_lock(&sh->lock);
        out->cache_hits += sh->hits;
        out->cache_misses += sh->misses;
        out->cache_evictions += sh->evictions;
        pthread_mutex_unlock(&sh->lock);
    }
    out->failures = atomic_load_explicit(&auth->failures, memory_order_relaxed);
    out->denials = atomic_load_explicit(&auth_denials, memory_order_relaxed);
}
