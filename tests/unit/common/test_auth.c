/*
 * test_auth.c - unit tests of common/src/auth.c: HS256, RS256 and ES256 tokens (keys made by
 * the test with OpenSSL, signed with libjwt), key selection by kid, exp/nbf with leeway,
 * issuer and audience, algorithm confusion and "none", malformed tokens, API keys, the
 * verified-token cache (hits, eviction, expiry, altered signatures), the authorization matrix
 * against a hand-built protobuf-c descriptor, security event logs that quote no secrets,
 * configuration parsing, and concurrent use by four threads.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "hm/arena.h"
#include "hm/auth.h"
#include "hm/err.h"
#include "hm/log.h"

#define SECRET  "0123456789abcdef0123456789abcdef-dev-secret"
#define SECRET2 "fedcba9876543210fedcba9876543210-other-one"
#define ISSUER  "https://issuer.test"
#define AUD     "hospitality-mesh"

/* The test's keys: private PEM text (for signing) and a public PEM file (for the verifier). */
typedef struct test_key {
    char *priv;     /* malloc'd PEM */
    char *pub;      /* malloc'd PEM */
    char path[256]; /* public key file */
} test_key_t;

static char tmpdir[] = "/tmp/hm_test_auth_XXXXXX";
static test_key_t rsa1, rsa2, ec1, rsa_small;
static hm_arena_t arena;

/* ---- keys ---- */

static char *bio_string(BIO *b)
{
    char *data, *s;
    long n = BIO_get_mem_data(b, &data);

    assert_true(n > 0);
    s = malloc((size_t)n + 1);
    assert_non_null(s);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    return s;
}

static void make_key(test_key_t *k, const char *type, int bits, const char *file)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pk = NULL;
    BIO *b;
    FILE *f;

    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_keygen_init(ctx), 1);
    if (strcmp(type, "RSA") == 0)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, bits), 1);
    else
        assert_int_equal(EVP_PKEY_CTX_set_group_name(ctx, "P-256"), 1);
    assert_int_equal(EVP_PKEY_keygen(ctx, &pk), 1);
    EVP_PKEY_CTX_free(ctx);

    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL), 1);
    k->priv = bio_string(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, pk), 1);
    k->pub = bio_string(b);
    BIO_free(b);
    EVP_PKEY_free(pk);

    snprintf(k->path, sizeof k->path, "%s/%s", tmpdir, file);
    f = fopen(k->path, "w");
    assert_non_null(f);
    fputs(k->pub, f);
    fclose(f);
}

static void free_key(test_key_t *k)
{
    free(k->priv);
    free(k->pub);
    unlink(k->path);
}

static int group_setup(void **state)
{
    (void)state;
    hm_log_init("test_auth", HM_LOG_ERROR); /* tests that read logs lower it */
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    make_key(&rsa1, "RSA", 2048, "rsa1.pem");
    make_key(&rsa2, "RSA", 2048, "rsa2.pem");
    make_key(&ec1, "EC", 0, "ec1.pem");
    make_key(&rsa_small, "RSA", 1024, "rsa_small.pem");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free_key(&rsa1);
    free_key(&rsa2);
    free_key(&ec1);
    free_key(&rsa_small);
    rmdir(tmpdir);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    hm_arena_init(&arena, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    hm_arena_deinit(&arena);
    return 0;
}

/* ---- tokens ---- */

static long now_s(void)
{
    return (long)time(NULL);
}

/* A token signed by libjwt with alg and key (secret or private PEM), header kid (or none)
 * and the claims given as printf-formatted JSON. The caller frees it. */
static char *mint(jwt_alg_t alg, const char *key, const char *kid, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static char *mint(jwt_alg_t alg, const char *key, const char *kid, const char *fmt, ...)
{
    char claims[2048];
    va_list ap;
    jwt_t *jwt = NULL;
    char *tok;

    va_start(ap, fmt);
    vsnprintf(claims, sizeof claims, fmt, ap);
    va_end(ap);
    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_set_alg(jwt, alg, (const unsigned char *)key, (int)strlen(key)), 0);
    if (kid != NULL)
        assert_int_equal(jwt_add_header(jwt, "kid", kid), 0);
    assert_int_equal(jwt_add_grants_json(jwt, claims), 0);
    tok = jwt_encode_str(jwt);
    assert_non_null(tok);
    jwt_free(jwt);
    return tok;
}

static void b64url(const char *in, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = strlen(in), o = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | (unsigned char)in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = tab[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = tab[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

/* header.payload.sig from raw JSON texts, for tokens libjwt would not make. */
static char *raw_token(const char *header, const char *payload, const char *sig)
{
    char h[1024], p[2048];
    char *tok = malloc(4096);

    assert_non_null(tok);
    b64url(header, h);
    b64url(payload, p);
    snprintf(tok, 4096, "%s.%s.%s", h, p, sig);
    return tok;
}

static char *bearer(const char *token)
{
    return hm_arena_printf(&arena, "Bearer %s", token);
}

/* ---- verifiers ---- */

static hm_auth_config_t base_config(void)
{
    return (hm_auth_config_t){
        .enabled = true,
        .hs256_secret = SECRET,
        .leeway_ms = 30000,
        .cache_size = 4096,
    };
}

static hm_auth_t *make(const hm_auth_config_t *cfg)
{
    char err[256];
    hm_auth_t *a = hm_auth_create(cfg, err, sizeof err);

    if (a == NULL)
        fail_msg("hm_auth_create: %s", err);
    return a;
}

/* Authenticates a bearer token; asserts the code and, for failures, the message. */
static const hm_principal_t *expect(hm_auth_t *a, const char *token, hm_code_t code,
                                    const char *message)
{
    const hm_principal_t *p = (const void *)1;
    hm_status_t st = hm_auth_authenticate(a, &arena, bearer(token), NULL, &p);

    if (st.code != code)
        fail_msg("want %s, got %s (%s)", hm_code_name(code), hm_code_name(st.code),
                 st.message != NULL ? st.message : "");
    if (code != HM_CODE_OK) {
        assert_null(p);
        assert_string_equal(st.reason, "UNAUTHENTICATED");
        if (message != NULL)
            assert_string_equal(st.message, message);
        return NULL;
    }
    assert_non_null(p);
    return p;
}

#define EXPECT_OK(a, t)        expect((a), (t), HM_CODE_OK, NULL)
#define EXPECT_FAIL(a, t, msg) expect((a), (t), HM_CODE_UNAUTHENTICATED, (msg))

/* ---- HS256 and claims ---- */

static void test_hs256_valid(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    long exp = now_s() + 3600;
    char *t = mint(JWT_ALG_HS256, SECRET, NULL,
                   "{\"sub\":\"guest-1\",\"roles\":[\"guest\",\"emperor\"],\"exp\":%ld}", exp);
    const hm_principal_t *p;

    (void)state;
    p = EXPECT_OK(a, t);
    assert_string_equal(p->subject, "guest-1");
    assert_int_equal(p->roles, HM_ROLE_GUEST); /* "emperor" is ignored */
    assert_int_equal(p->nvenues, 0);
    assert_null(p->venues);
    assert_string_equal(p->via, "jwt");
    assert_int_equal(p->expires_ms, (int64_t)exp * 1000);
    free(t);

    /* staff with venues; scheme is case-insensitive; several spaces */
    t = mint(JWT_ALG_HS256, SECRET, NULL,
             "{\"sub\":\"s-9\",\"roles\":[\"staff\"],\"venues\":[\"v1\",\"v2\"],\"exp\":%ld}", exp);
    {
        const hm_principal_t *q = NULL;
        char *hdr = hm_arena_printf(&arena, "bearer   %s", t);
        hm_status_t st = hm_auth_authenticate(a, &arena, hdr, NULL, &q);

        assert_int_equal(st.code, HM_CODE_OK);
        assert_string_equal(q->subject, "s-9");
        assert_int_equal(q->roles, HM_ROLE_STAFF);
        assert_int_equal(q->nvenues, 2);
        assert_string_equal(q->venues[0], "v1");
        assert_string_equal(q->venues[1], "v2");
    }
    free(t);

    /* a valid token without roles authenticates with none */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"nobody\",\"exp\":%ld}", exp);
    p = EXPECT_OK(a, t);
    assert_int_equal(p->roles, 0);
    free(t);
    hm_auth_destroy(a);
}

static void test_hs256_wrong_secret(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    char *t = mint(JWT_ALG_HS256, SECRET2, NULL, "{\"sub\":\"g\",\"exp\":%ld}", now_s() + 600);

    (void)state;
    EXPECT_FAIL(a, t, "invalid token signature");
    free(t);
    hm_auth_destroy(a);
}

static void test_expiry_and_leeway(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg), *strict;
    char *t;

    (void)state;
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", now_s() - 120);
    EXPECT_FAIL(a, t, "token expired");
    free(t);

    /* 10 s past exp: inside the 30 s leeway, outside a zero leeway */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", now_s() - 10);
    EXPECT_OK(a, t);
    cfg.leeway_ms = 0;
    strict = make(&cfg);
    EXPECT_FAIL(strict, t, "token expired");
    free(t);

    /* exp is required and must be a number */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\"}");
    EXPECT_FAIL(a, t, "token has no expiry");
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":\"tomorrow\"}");
    EXPECT_FAIL(a, t, "invalid token claims");
    free(t);
    /* a fractional NumericDate is allowed */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld.5}", now_s() + 600);
    EXPECT_OK(a, t);
    free(t);
    hm_auth_destroy(strict);
    hm_auth_destroy(a);
}

static void test_not_before(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    long now = now_s();
    char *t;

    (void)state;
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"nbf\":%ld,\"exp\":%ld}", now + 300,
             now + 900);
    EXPECT_FAIL(a, t, "token not yet valid");
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"nbf\":%ld,\"exp\":%ld}", now + 10,
             now + 900);
    EXPECT_OK(a, t); /* within leeway */
    free(t);
    hm_auth_destroy(a);
}

static void test_issuer(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a;
    long exp = now_s() + 600;
    char *t;

    (void)state;
    cfg.issuer = ISSUER;
    a = make(&cfg);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"iss\":\"%s\",\"exp\":%ld}", ISSUER,
             exp);
    EXPECT_OK(a, t);
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL,
             "{\"sub\":\"g\",\"iss\":\"https://evil.test\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "wrong token issuer");
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "wrong token issuer");
    free(t);
    hm_auth_destroy(a);
}

static void test_audience(void **state)
{
    static const struct {
        const char *aud; /* JSON value, or NULL for none */
        bool ok;
    } cases[] = {
        {"\"" AUD "\"", true},
        {"\"other\"", false},
        {"[\"other\",\"" AUD "\"]", true},
        {"[\"other\",\"third\"]", false},
        {"[]", false},
        {"42", false},
        {"[42,\"x\"]", false},
        {NULL, false},
    };
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a;
    long exp = now_s() + 600;

    (void)state;
    cfg.audience = AUD;
    a = make(&cfg);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = cases[i].aud != NULL
                      ? mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"aud\":%s,\"exp\":%ld}",
                             cases[i].aud, exp)
                      : mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", exp);

        if (cases[i].ok)
            EXPECT_OK(a, t);
        else
            EXPECT_FAIL(a, t, "wrong token audience");
        free(t);
    }
    hm_auth_destroy(a);
}

/* ---- public keys ---- */

static void test_rs256_es256_kid(void **state)
{
    hm_auth_config_t cfg = base_config();
    char keys[1024];
    hm_auth_t *a, *single;
    long exp = now_s() + 600;
    const hm_principal_t *p;
    char *t;

    (void)state;
    snprintf(keys, sizeof keys, "rk1=%s, rk2=%s ,ek1=%s", rsa1.path, rsa2.path, ec1.path);
    cfg.hs256_secret = NULL;
    cfg.public_keys = keys;
    a = make(&cfg);

    t = mint(JWT_ALG_RS256, rsa1.priv, "rk1", "{\"sub\":\"r1\",\"roles\":[\"admin\"],\"exp\":%ld}",
             exp);
    p = EXPECT_OK(a, t);
    assert_string_equal(p->subject, "r1");
    assert_int_equal(p->roles, HM_ROLE_ADMIN);
    free(t);
    t = mint(JWT_ALG_RS256, rsa2.priv, "rk2", "{\"sub\":\"r2\",\"exp\":%ld}", exp);
    EXPECT_OK(a, t);
    free(t);
    /* signed by rk1 but naming rk2: verified with rk2, fails */
    t = mint(JWT_ALG_RS256, rsa1.priv, "rk2", "{\"sub\":\"r1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "invalid token signature");
    free(t);
    t = mint(JWT_ALG_RS256, rsa1.priv, "nope", "{\"sub\":\"r1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "unknown token key id");
    free(t);
    t = mint(JWT_ALG_RS256, rsa1.priv, NULL, "{\"sub\":\"r1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "token key id required"); /* three keys: kid is required */
    free(t);

    t = mint(JWT_ALG_ES256, ec1.priv, "ek1", "{\"sub\":\"e1\",\"roles\":[\"service\"],\"exp\":%ld}",
             exp);
    p = EXPECT_OK(a, t);
    assert_string_equal(p->subject, "e1");
    assert_int_equal(p->roles, HM_ROLE_SERVICE);
    free(t);
    /* ES256 naming an RSA key, RS256 naming the EC key: the key type decides */
    t = mint(JWT_ALG_ES256, ec1.priv, "rk1", "{\"sub\":\"e1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    t = mint(JWT_ALG_RS256, rsa1.priv, "ek1", "{\"sub\":\"r1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    /* HS256 is not configured here */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);

    /* a signature spelled non-canonically (non-zero left-over bits in its last character)
     * decodes to the same bytes; refused, so one signature has one spelling */
    t = mint(JWT_ALG_RS256, rsa1.priv, "rk1", "{\"sub\":\"r1\",\"exp\":%ld}", exp);
    {
        static const char tab[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        size_t len = strlen(t);
        const char *c = strchr(tab, t[len - 1]);

        assert_non_null(c);
        assert_int_equal((c - tab) & 15, 0); /* 256 bytes: the last character has 4 spare bits */
        t[len - 1] = tab[(c - tab) | 1];
        EXPECT_FAIL(a, t, "invalid token signature");
    }
    free(t);

    /* with a single key, kid may be omitted */
    snprintf(keys, sizeof keys, "only=%s", ec1.path);
    single = make(&cfg);
    t = mint(JWT_ALG_ES256, ec1.priv, NULL, "{\"sub\":\"e1\",\"exp\":%ld}", exp);
    EXPECT_OK(single, t);
    free(t);
    t = mint(JWT_ALG_ES256, ec1.priv, "ek1", "{\"sub\":\"e1\",\"exp\":%ld}", exp);
    EXPECT_FAIL(single, t, "unknown token key id");
    free(t);
    hm_auth_destroy(single);
    hm_auth_destroy(a);
}

static void test_alg_confusion(void **state)
{
    hm_auth_config_t cfg = base_config();
    char keys[512];
    hm_auth_t *both, *rsonly;
    long exp = now_s() + 600;
    /* HS256 "signed" with the RS256 public key text as the HMAC secret */
    char *t = mint(JWT_ALG_HS256, rsa1.pub, "rk1",
                   "{\"sub\":\"x\",\"roles\":[\"admin\"],\"exp\":%ld}", exp);

    (void)state;
    snprintf(keys, sizeof keys, "rk1=%s", rsa1.path);
    cfg.public_keys = keys;
    both = make(&cfg);
    EXPECT_FAIL(both, t, "invalid token signature");
    cfg.hs256_secret = NULL;
    rsonly = make(&cfg);
    EXPECT_FAIL(rsonly, t, "unsupported token algorithm");
    free(t);
    hm_auth_destroy(rsonly);
    hm_auth_destroy(both);
}

static void test_alg_none_and_others(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    char payload[256];
    char *t;

    (void)state;
    snprintf(payload, sizeof payload, "{\"sub\":\"x\",\"roles\":[\"admin\"],\"exp\":%ld}",
             now_s() + 600);
    t = raw_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, "");
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    t = raw_token("{\"alg\":\"none\"}", payload, "c2ln");
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    t = raw_token("{\"typ\":\"JWT\"}", payload, "c2ln");
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    /* HS384 with the right secret: still refused, only HS256 is accepted */
    t = mint(JWT_ALG_HS384, SECRET, NULL, "%s", payload);
    EXPECT_FAIL(a, t, "unsupported token algorithm");
    free(t);
    hm_auth_destroy(a);
}

static void test_malformed(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    long exp = now_s() + 600;
    const hm_principal_t *p = NULL;
    hm_status_t st;
    char *t, *big;

    (void)state;
    EXPECT_FAIL(a, "abc", "malformed token");
    EXPECT_FAIL(a, "a.b", "malformed token");
    EXPECT_FAIL(a, "a.b.c.d", "malformed token");
    EXPECT_FAIL(a, ".b.c", "malformed token");
    EXPECT_FAIL(a, "e30.e30.c2ln!", "malformed token");
    EXPECT_FAIL(a, "bm90IGpzb24.e30.c2ln", "malformed token"); /* header "not json" */
    EXPECT_FAIL(a, "", "malformed token");
    big = malloc(HM_AUTH_TOKEN_MAX + 2);
    memset(big, 'a', HM_AUTH_TOKEN_MAX + 1);
    big[HM_AUTH_TOKEN_MAX + 1] = '\0';
    EXPECT_FAIL(a, big, "malformed token");
    free(big);

    /* header checks: crit, typ */
    t = raw_token("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{}", "c2ln");
    EXPECT_FAIL(a, t, "malformed token");
    free(t);
    t = raw_token("{\"alg\":\"HS256\",\"typ\":\"JOSE+JSON\"}", "{}", "c2ln");
    EXPECT_FAIL(a, t, "malformed token");
    free(t);
    /* duplicate members are refused rather than resolved */
    t = raw_token("{\"alg\":\"none\",\"alg\":\"HS256\"}", "{}", "c2ln");
    EXPECT_FAIL(a, t, "malformed token");
    free(t);
    /* claims that are not an object */
    t = raw_token("{\"alg\":\"HS256\"}", "[1,2]", "c2ln");
    EXPECT_FAIL(a, t, "malformed token");
    free(t);

    /* well signed but bad claims */
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "invalid token claims"); /* no sub */
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "invalid token claims");
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"roles\":\"admin\",\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "invalid token claims");
    free(t);
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"venues\":[\"\"],\"exp\":%ld}", exp);
    EXPECT_FAIL(a, t, "invalid token claims");
    free(t);
    /* an embedded NUL would cut the subject short: refused by the JSON parser */
    t = raw_token("{\"alg\":\"HS256\"}", "{\"sub\":\"a\\u0000b\",\"exp\":9999999999}", "c2ln");
    EXPECT_FAIL(a, t, "malformed token");
    free(t);

    /* credentials themselves */
    st = hm_auth_authenticate(a, &arena, NULL, NULL, &p);
    assert_int_equal(st.code, HM_CODE_UNAUTHENTICATED);
    assert_string_equal(st.message, "missing credentials");
    st = hm_auth_authenticate(a, &arena, "", "", &p);
    assert_string_equal(st.message, "missing credentials");
    st = hm_auth_authenticate(a, &arena, "Basic dXNlcjpwdw==", NULL, &p);
    assert_int_equal(st.code, HM_CODE_UNAUTHENTICATED);
    assert_string_equal(st.message, "unsupported authorization scheme");
    st = hm_auth_authenticate(a, &arena, "Bearer", NULL, &p);
    assert_string_equal(st.message, "unsupported authorization scheme");
    st = hm_auth_authenticate(a, &arena, "Bearer x.y.z", "some-key", &p);
    assert_string_equal(st.message, "conflicting credentials");
    assert_null(p);
    hm_auth_destroy(a);
}

/* ---- API keys ---- */

static void sha256_hex(const char *s, char out[65])
{
    unsigned char md[32];
    unsigned int n;

    assert_int_equal(EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void test_api_keys(void **state)
{
    hm_auth_config_t cfg = base_config();
    char h1[65], h2[65], spec[512], err[256];
    const hm_principal_t *p = NULL;
    hm_auth_t *a;
    hm_status_t st;

    (void)state;
    sha256_hex("k1-3b0c5e9a7d1f4e2a8c6b", h1);
    sha256_hex("k2-9f8e7d6c5b4a39281706", h2);
    snprintf(spec, sizeof spec, "billing:%s:service, frontdesk : %s : staff+guest : v1|v2", h1, h2);
    cfg.hs256_secret = NULL;
    cfg.api_keys = spec;
    a = make(&cfg);

    st = hm_auth_authenticate(a, &arena, NULL, "k1-3b0c5e9a7d1f4e2a8c6b", &p);
    assert_int_equal(st.code, HM_CODE_OK);
    assert_string_equal(p->subject, "billing");
    assert_int_equal(p->roles, HM_ROLE_SERVICE);
    assert_string_equal(p->via, "api-key");
    assert_int_equal(p->expires_ms, INT64_MAX);
    st = hm_auth_authenticate(a, &arena, "", "k2-9f8e7d6c5b4a39281706", &p);
    assert_int_equal(st.code, HM_CODE_OK);
    assert_string_equal(p->subject, "frontdesk");
    assert_int_equal(p->roles, HM_ROLE_STAFF | HM_ROLE_GUEST);
    assert_int_equal(p->nvenues, 2);
    assert_string_equal(p->venues[0], "v1");
    assert_string_equal(p->venues[1], "v2");

    st = hm_auth_authenticate(a, &arena, NULL, "k1-3b0c5e9a7d1f4e2a8c6c", &p);
    assert_int_equal(st.code, HM_CODE_UNAUTHENTICATED);
    assert_string_equal(st.message, "unknown api key");
    assert_null(p);
    st = hm_auth_authenticate(a, &arena, NULL, h1, &p); /* the hash is not the key */
    assert_string_equal(st.message, "unknown api key");
    /* only API keys configured: a bearer token has no key to be checked with */
    st = hm_auth_authenticate(a, &arena, "Bearer e30.e30.c2ln", NULL, &p);
    assert_string_equal(st.message, "unsupported token algorithm");
    hm_auth_destroy(a);

    /* malformed specifications: the message names the entry, never the hash */
    static const char *const bad[][2] = {
        {"billing:", ""},           {"billing:", ":emperor"},
        {"bad name:", ":admin"},    {"billing:", ":admin:v1||v2"},
        {"billing:", ":admin:a:b"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char s[256];

        snprintf(s, sizeof s, "%s%s%s", bad[i][0], h1, bad[i][1]);
        cfg.api_keys = s;
        assert_null(hm_auth_create(&cfg, err, sizeof err));
        assert_non_null(strstr(err, "HM_API_KEYS: entry 1"));
        assert_null(strstr(err, h1));
    }
    cfg.api_keys = "billing:0123:admin";
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    snprintf(spec, sizeof spec, "a:%s:admin,b:%s:admin", h1, h1);
    cfg.api_keys = spec;
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "entry 2"));
}

/* ---- the cache ---- */

static void test_cache(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a = make(&cfg);
    hm_auth_stats_t s;
    long exp = now_s() + 600;
    char *t =
        mint(JWT_ALG_HS256, SECRET, NULL,
             "{\"sub\":\"s\",\"roles\":[\"staff\"],\"venues\":[\"v1\",\"v2\"],\"exp\":%ld}", exp);
    const hm_principal_t *p1, *p2;
    char *forged;
    size_t len = strlen(t);

    (void)state;
    p1 = EXPECT_OK(a, t);
    p2 = EXPECT_OK(a, t);
    hm_auth_stats(a, &s);
    assert_int_equal(s.cache_misses, 1);
    assert_int_equal(s.cache_hits, 1);
    assert_ptr_not_equal(p1, p2); /* each call gets its own copy */
    assert_string_equal(p2->subject, "s");
    assert_int_equal(p2->roles, HM_ROLE_STAFF);
    assert_int_equal(p2->nvenues, 2);
    assert_string_equal(p2->venues[1], "v2");
    assert_int_equal(p2->expires_ms, (int64_t)exp * 1000);
    assert_true((const char *)p2->subject > (const char *)p2 &&
                (const char *)p2->subject < (const char *)p2 + 256); /* in p2's own block */

    /* the same header and claims with an altered signature: not served from the cache */
    forged = strdup(t);
    forged[len - 10] = forged[len - 10] == 'A' ? 'B' : 'A';
    EXPECT_FAIL(a, forged, "invalid token signature");
    hm_auth_stats(a, &s);
    assert_int_equal(s.cache_hits, 1);
    assert_int_equal(s.cache_misses, 2);
    assert_int_equal(s.failures, 1);
    free(forged);
    free(t);
    hm_auth_destroy(a);

    /* RS256: the second call does not verify again (a hit) */
    {
        char keys[512];
        hm_auth_t *r;

        snprintf(keys, sizeof keys, "rk1=%s", rsa1.path);
        cfg.public_keys = keys;
        r = make(&cfg);
        t = mint(JWT_ALG_RS256, rsa1.priv, "rk1", "{\"sub\":\"r\",\"exp\":%ld}", exp);
        EXPECT_OK(r, t);
        EXPECT_OK(r, t);
        hm_auth_stats(r, &s);
        assert_int_equal(s.cache_hits, 1);
        len = strlen(t);
        t[len - 20] = t[len - 20] == 'A' ? 'B' : 'A';
        EXPECT_FAIL(r, t, "invalid token signature");
        free(t);
        hm_auth_destroy(r);
    }
}

static void test_cache_eviction_and_off(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a;
    hm_auth_stats_t s;
    char *toks[40];
    long exp = now_s() + 600;

    (void)state;
    cfg.cache_size = 4;
    a = make(&cfg);
    for (int i = 0; i < 40; i++)
        toks[i] = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g%d\",\"exp\":%ld}", i, exp);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 40; i++) {
            const hm_principal_t *p = EXPECT_OK(a, toks[i]);
            char want[16];

            snprintf(want, sizeof want, "g%d", i);
            assert_string_equal(p->subject, want);
        }
    }
    hm_auth_stats(a, &s);
    assert_true(s.cache_evictions > 0);
    assert_int_equal(s.cache_hits + s.cache_misses, 80);
    hm_auth_destroy(a);

    cfg.cache_size = 0;
    a = make(&cfg);
    EXPECT_OK(a, toks[0]);
    EXPECT_OK(a, toks[0]);
    hm_auth_stats(a, &s);
    assert_int_equal(s.cache_hits, 0);
    hm_auth_destroy(a);
    for (int i = 0; i < 40; i++)
        free(toks[i]);
}

static void test_cache_expiry(void **state)
{
    hm_auth_config_t cfg = base_config();
    hm_auth_t *a;
    struct timespec ts;
    long exp;
    char *t;

    (void)state;
    cfg.leeway_ms = 0;
    a = make(&cfg);
    clock_gettime(CLOCK_REALTIME, &ts);
    exp = (long)ts.tv_sec + 1;
    t = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g\",\"exp\":%ld}", exp);
    EXPECT_OK(a, t);
    EXPECT_OK(a, t); /* cached */
    do {
        usleep(50 * 1000);
        clock_gettime(CLOCK_REALTIME, &ts);
    } while ((long)ts.tv_sec < exp);
    EXPECT_FAIL(a, t, "token expired"); /* the entry died with the token */
    free(t);
    hm_auth_destroy(a);
}

/* ---- authorization ---- */

/* A request type built by hand: guest_id, venue_id (strings), count (int32), a oneof
 * {note string, other int32}, and tags (repeated string). */
typedef struct test_req {
    ProtobufCMessage base;
    int32_t count;
    char *guest_id;
    uint32_t pick_case;
    union {
        char *note;
        int32_t other;
    };
    size_t n_tags;
    char **tags;
    char *venue_id;
} test_req_t;

static const ProtobufCFieldDescriptor req_fields[] = {
    {"count", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, 0, offsetof(test_req_t, count), NULL,
     NULL, 0, 0, NULL, NULL},
    {"guest_id", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0,
     offsetof(test_req_t, guest_id), NULL, NULL, 0, 0, NULL, NULL},
    {"note", 3, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, offsetof(test_req_t, pick_case),
     offsetof(test_req_t, note), NULL, NULL, PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL},
    {"other", 4, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, offsetof(test_req_t, pick_case),
     offsetof(test_req_t, other), NULL, NULL, PROTOBUF_C_FIELD_FLAG_ONEOF, 0, NULL, NULL},
    {"tags", 5, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_STRING, offsetof(test_req_t, n_tags),
     offsetof(test_req_t, tags), NULL, NULL, 0, 0, NULL, NULL},
    {"venue_id", 6, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0,
     offsetof(test_req_t, venue_id), NULL, NULL, 0, 0, NULL, NULL},
};
static const unsigned req_by_name[] = {0, 1, 2, 3, 4, 5};
static const ProtobufCIntRange req_ranges[] = {{1, 0}, {0, 6}};
static const ProtobufCMessageDescriptor req_desc = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    "test.Req",
    "Req",
    "TestReq",
    "test",
    sizeof(test_req_t),
    6,
    req_fields,
    req_by_name,
    1,
    req_ranges,
    NULL,
    NULL,
    NULL,
    NULL,
};

static test_req_t req_for(const char *guest, const char *venue)
{
    test_req_t r = {.base = PROTOBUF_C_MESSAGE_INIT(&req_desc)};

    r.guest_id = (char *)(guest != NULL ? guest : "");
    r.venue_id = (char *)(venue != NULL ? venue : "");
    return r;
}

static hm_status_t authz(const hm_principal_t *p, const hm_policy_t *pol, const test_req_t *r)
{
    return hm_auth_authorize(p, pol, &r->base, &arena);
}

static void test_authorize_matrix(void **state)
{
    static const char *const venues[] = {"v1", "v2"};
    const hm_principal_t guest_a = {"guest-a", HM_ROLE_GUEST, NULL, 0, "jwt", INT64_MAX};
    const hm_principal_t staff_x = {"staff-x", HM_ROLE_STAFF, venues, 2, "jwt", INT64_MAX};
    const hm_principal_t admin = {"root", HM_ROLE_ADMIN, NULL, 0, "jwt", INT64_MAX};
    const hm_principal_t service = {"billing", HM_ROLE_SERVICE, NULL, 0, "api-key", INT64_MAX};
    const hm_principal_t none = {"nobody", 0, NULL, 0, "jwt", INT64_MAX};
    const hm_policy_t guest_self = {.roles = HM_ROLE_GUEST | HM_ROLE_STAFF,
                                    .self_field = "guest_id",
                                    .venue_field = "venue_id"};
    const hm_policy_t guest_only = {.roles = HM_ROLE_GUEST, .self_field = "guest_id"};
    const hm_policy_t staff_only = {.roles = HM_ROLE_STAFF, .venue_field = "venue_id"};
    const hm_policy_t admin_only = {.roles = HM_ROLE_ADMIN};
    const hm_policy_t open = {.open = true};
    test_req_t own = req_for("guest-a", "v9"), other = req_for("guest-b", "v9");
    test_req_t venue1 = req_for("guest-b", "v1"), venue_y = req_for("guest-b", "vY");
    test_req_t blank = req_for(NULL, NULL);
    hm_status_t st;

    (void)state;
    /* guest: own data yes, another guest's no, empty field no */
    assert_int_equal(authz(&guest_a, &guest_only, &own).code, HM_CODE_OK);
    st = authz(&guest_a, &guest_only, &other);
    assert_int_equal(st.code, HM_CODE_PERMISSION_DENIED);
    assert_string_equal(st.reason, "PERMISSION_DENIED");
    assert_string_equal(st.field, "guest_id");
    assert_string_equal(st.message, "guest_id must be the caller's own id");
    assert_int_equal(authz(&guest_a, &guest_only, &blank).code, HM_CODE_PERMISSION_DENIED);
    blank.guest_id = NULL;
    assert_int_equal(authz(&guest_a, &guest_only, &blank).code, HM_CODE_PERMISSION_DENIED);
    assert_int_equal(hm_auth_authorize(&guest_a, &guest_only, NULL, &arena).code,
                     HM_CODE_PERMISSION_DENIED);
    /* staff: own venue yes, another venue no, guest rule does not apply to staff */
    assert_int_equal(authz(&staff_x, &staff_only, &venue1).code, HM_CODE_OK);
    st = authz(&staff_x, &staff_only, &venue_y);
    assert_int_equal(st.code, HM_CODE_PERMISSION_DENIED);
    assert_string_equal(st.field, "venue_id");
    assert_string_equal(st.message, "venue_id must be one of the caller's venues");
    assert_int_equal(authz(&staff_x, &guest_self, &venue1).code, HM_CODE_OK);
    assert_int_equal(authz(&staff_x, &guest_self, &venue_y).code, HM_CODE_PERMISSION_DENIED);
    assert_int_equal(authz(&guest_a, &guest_self, &own).code, HM_CODE_OK);
    assert_int_equal(authz(&guest_a, &guest_self, &venue1).code, HM_CODE_PERMISSION_DENIED);
    /* a guest on a staff-only method, staff on a guest-only method: wrong role */
    st = authz(&guest_a, &staff_only, &own);
    assert_int_equal(st.code, HM_CODE_PERMISSION_DENIED);
    assert_string_equal(st.message, "caller's role may not call this method");
    assert_int_equal(authz(&staff_x, &guest_only, &venue1).code, HM_CODE_PERMISSION_DENIED);
    /* admin and service: everything */
    assert_int_equal(authz(&admin, &guest_only, &other).code, HM_CODE_OK);
    assert_int_equal(authz(&admin, &staff_only, &venue_y).code, HM_CODE_OK);
    assert_int_equal(authz(&service, &guest_self, &other).code, HM_CODE_OK);
    assert_int_equal(authz(&service, &admin_only, &other).code, HM_CODE_OK);
    assert_int_equal(authz(&staff_x, &admin_only, &venue1).code, HM_CODE_PERMISSION_DENIED);
    /* no roles: nothing but open methods */
    assert_int_equal(authz(&none, &guest_self, &own).code, HM_CODE_PERMISSION_DENIED);
    assert_int_equal(authz(&none, &open, &own).code, HM_CODE_OK);
    /* open: anyone, even without a principal; closed without one: unauthenticated */
    assert_int_equal(hm_auth_authorize(NULL, &open, NULL, &arena).code, HM_CODE_OK);
    assert_int_equal(hm_auth_authorize(NULL, &guest_only, &own.base, &arena).code,
                     HM_CODE_UNAUTHENTICATED);
    /* a NULL policy is closed: admin and service only */
    assert_int_equal(hm_auth_authorize(&guest_a, NULL, &own.base, &arena).code,
                     HM_CODE_PERMISSION_DENIED);
    assert_int_equal(hm_auth_authorize(&admin, NULL, &own.base, &arena).code, HM_CODE_OK);
}

static void test_authorize_fields(void **state)
{
    const hm_principal_t guest_a = {"guest-a", HM_ROLE_GUEST, NULL, 0, "jwt", INT64_MAX};
    const hm_policy_t by_note = {.roles = HM_ROLE_GUEST, .self_field = "note"};
    const hm_policy_t by_count = {.roles = HM_ROLE_GUEST, .self_field = "count"};
    const hm_policy_t by_tags = {.roles = HM_ROLE_GUEST, .self_field = "tags"};
    const hm_policy_t by_missing = {.roles = HM_ROLE_GUEST, .self_field = "nope"};
    test_req_t r = req_for("guest-a", "v1");

    (void)state;
    /* a oneof member counts only when it is the one set */
    r.pick_case = 3;
    r.note = "guest-a";
    assert_int_equal(authz(&guest_a, &by_note, &r).code, HM_CODE_OK);
    r.pick_case = 4;
    r.other = 7;
    assert_int_equal(authz(&guest_a, &by_note, &r).code, HM_CODE_PERMISSION_DENIED);
    r.pick_case = 0;
    assert_int_equal(authz(&guest_a, &by_note, &r).code, HM_CODE_PERMISSION_DENIED);
    /* a policy naming a non-string, repeated or unknown field is a bug: INTERNAL */
    assert_int_equal(authz(&guest_a, &by_count, &r).code, HM_CODE_INTERNAL);
    assert_int_equal(authz(&guest_a, &by_tags, &r).code, HM_CODE_INTERNAL);
    assert_int_equal(authz(&guest_a, &by_missing, &r).code, HM_CODE_INTERNAL);
}

/* ---- HM_AUTH=off, logs, configuration, service credentials ---- */

static void test_disabled(void **state)
{
    hm_auth_config_t cfg = {.enabled = false};
    const hm_policy_t admin_only = {.roles = HM_ROLE_ADMIN};
    const hm_principal_t *p = NULL;
    hm_auth_t *a = make(&cfg); /* no credentials needed */
    hm_status_t st;

    (void)state;
    assert_false(hm_auth_enabled(a));
    st = hm_auth_authenticate(a, &arena, NULL, NULL, &p);
    assert_int_equal(st.code, HM_CODE_OK);
    assert_string_equal(p->subject, "dev");
    assert_string_equal(p->via, "dev");
    assert_int_equal(p->roles, HM_ROLES_ANY);
    assert_int_equal(hm_auth_authorize(p, &admin_only, NULL, &arena).code, HM_CODE_OK);
    hm_auth_destroy(a);
}

static int saved_fd2 = -1, cap_fd = -1;

static void capture_begin(void)
{
    char path[] = "/tmp/hm_test_auth_log_XXXXXX";

    cap_fd = mkstemp(path);
    assert_true(cap_fd >= 0);
    unlink(path);
    fflush(stderr);
    saved_fd2 = dup(STDERR_FILENO);
    assert_int_equal(dup2(cap_fd, STDERR_FILENO), STDERR_FILENO);
}

static char *capture_end(void)
{
    off_t size;
    char *buf;

    dup2(saved_fd2, STDERR_FILENO);
    close(saved_fd2);
    size = lseek(cap_fd, 0, SEEK_END);
    buf = calloc(1, (size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(pread(cap_fd, buf, (size_t)size, 0), size);
    close(cap_fd);
    return buf;
}

static void test_security_logs(void **state)
{
    hm_auth_config_t cfg = base_config();
    const hm_policy_t guest_only = {.roles = HM_ROLE_GUEST, .self_field = "guest_id"};
    const hm_principal_t guest_a = {"guest-a", HM_ROLE_GUEST, NULL, 0, "jwt", INT64_MAX};
    test_req_t other = req_for("guest-b", NULL);
    const hm_principal_t *p;
    hm_auth_t *a = make(&cfg);
    char *bad = mint(JWT_ALG_HS256, SECRET2, NULL, "{\"sub\":\"g\",\"exp\":%ld}", now_s() + 60);
    char *old = mint(JWT_ALG_HS256, SECRET, NULL, "{\"sub\":\"g-old\",\"exp\":%ld}", now_s() - 600);
    char *out, *sig = strrchr(bad, '.') + 1;

    (void)state;
    hm_log_init("test_auth", HM_LOG_WARN);
    capture_begin();
    hm_auth_authenticate(a, &arena, bearer(bad), NULL, &p);
    hm_auth_authenticate(a, &arena, bearer(old), NULL, &p);
    hm_auth_authenticate(a, &arena, NULL, "my-secret-api-key", &p);
    hm_auth_authorize(&guest_a, &guest_only, &other.base, &arena);
    out = capture_end();
    hm_log_init("test_auth", HM_LOG_ERROR);

    assert_non_null(strstr(out, "\"event\":\"auth_failure\",\"cause\":\"bad_signature\""));
    assert_non_null(
        strstr(out, "\"cause\":\"token_expired\",\"via\":\"jwt\",\"subject\":\"g-old\""));
    assert_non_null(strstr(out, "\"cause\":\"unknown_api_key\""));
    assert_non_null(strstr(out, "\"event\":\"authz_failure\",\"cause\":\"not_self\""));
    /* no token, signature, secret or key in any line */
    assert_null(strstr(out, bad));
    assert_null(strstr(out, sig));
    assert_null(strstr(out, old));
    assert_null(strstr(out, SECRET));
    assert_null(strstr(out, "my-secret-api-key"));
    free(out);
    free(bad);
    free(old);
    hm_auth_destroy(a);
}

static void test_config(void **state)
{
    hm_auth_config_t cfg;
    char err[256];
    hm_auth_t *a;
    const char *k, *v;

    (void)state;
    static const char *const vars[] = {
        "HM_AUTH",       "HM_JWT_HS256_SECRET", "HM_JWT_PUBLIC_KEYS",
        "HM_JWT_ISSUER", "HM_JWT_AUDIENCE",     "HM_JWT_LEEWAY",
        "HM_API_KEYS",   "HM_SERVICE_TOKEN",    "HM_AUTH_CACHE_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    memset(&cfg, 0xff, sizeof cfg);
    assert_int_equal(
        hm_config_load(hm_auth_config_vars, hm_auth_config_nvars, &cfg, err, sizeof err), 0);
    assert_true(cfg.enabled);
    assert_null(cfg.hs256_secret);
    assert_null(cfg.public_keys);
    assert_int_equal(cfg.leeway_ms, 30000);
    assert_int_equal(cfg.cache_size, 4096);
    /* on, with nothing to check credentials against: refuses to start */
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "HM_AUTH"));

    setenv("HM_JWT_HS256_SECRET", SECRET, 1);
    setenv("HM_JWT_LEEWAY", "5s", 1);
    setenv("HM_AUTH_CACHE_SIZE", "16", 1);
    setenv("HM_JWT_AUDIENCE", AUD, 1);
    setenv("HM_SERVICE_TOKEN", "e30.e30.c2ln", 1);
    assert_int_equal(
        hm_config_load(hm_auth_config_vars, hm_auth_config_nvars, &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.leeway_ms, 5000);
    assert_int_equal(cfg.cache_size, 16);
    a = make(&cfg);
    assert_true(hm_auth_enabled(a));
    assert_string_equal(hm_auth_service_token(a), "e30.e30.c2ln");
    assert_true(hm_auth_service_metadata(a, &k, &v));
    assert_string_equal(k, "authorization");
    assert_string_equal(v, "Bearer e30.e30.c2ln");
    hm_auth_destroy(a);

    setenv("HM_SERVICE_TOKEN", "hmk_live_0123456789", 1);
    hm_config_load(hm_auth_config_vars, hm_auth_config_nvars, &cfg, err, sizeof err);
    a = make(&cfg);
    assert_true(hm_auth_service_metadata(a, &k, &v));
    assert_string_equal(k, "x-api-key");
    assert_string_equal(v, "hmk_live_0123456789");
    hm_auth_destroy(a);

    setenv("HM_AUTH_CACHE_SIZE", "-1", 1);
    assert_int_not_equal(
        hm_config_load(hm_auth_config_vars, hm_auth_config_nvars, &cfg, err, sizeof err), 0);
    assert_non_null(strstr(err, "HM_AUTH_CACHE_SIZE"));
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);

    /* creation errors name the variable and never quote the secret */
    cfg = base_config();
    cfg.hs256_secret = "too-short";
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "HM_JWT_HS256_SECRET"));
    assert_null(strstr(err, "too-short"));
    cfg = base_config();
    cfg.public_keys = "k1=/nonexistent/key.pem";
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "HM_JWT_PUBLIC_KEYS"));
    cfg.public_keys = "k1";
    assert_null(hm_auth_create(&cfg, err, sizeof err));
    {
        char keys[600];

        snprintf(keys, sizeof keys, "k1=%s,k1=%s", rsa1.path, rsa2.path);
        cfg.public_keys = keys;
        assert_null(hm_auth_create(&cfg, err, sizeof err));
        assert_non_null(strstr(err, "twice"));
        snprintf(keys, sizeof keys, "small=%s", rsa_small.path);
        assert_null(hm_auth_create(&cfg, err, sizeof err));
        assert_non_null(strstr(err, "2048"));
        snprintf(keys, sizeof keys, "bad kid=%s", rsa1.path);
        assert_null(hm_auth_create(&cfg, err, sizeof err));
    }
    assert_int_equal(hm_auth_role_parse("staff"), HM_ROLE_STAFF);
    assert_int_equal(hm_auth_role_parse("Staff"), 0);
    assert_string_equal(hm_auth_role_name(HM_ROLE_SERVICE), "service");
    assert_null(hm_auth_role_name(HM_ROLE_GUEST | HM_ROLE_STAFF));
}

/* ---- threads ---- */

#define NTHREADS  4
#define NTOKENS   48
#define ITERATION 3000

typedef struct thread_arg {
    hm_auth_t *auth;
    char **tokens; /* NTOKENS; odd indexes are forged */
    int seed;
    int errors;
} thread_arg_t;

static void *worker(void *argp)
{
    thread_arg_t *arg = argp;
    hm_arena_t a;
    unsigned x = (unsigned)arg->seed * 2654435761u + 1;

    hm_arena_init(&a, 0);
    for (int i = 0; i < ITERATION; i++) {
        const hm_principal_t *p = NULL;
        int k;
        char want[16];
        hm_status_t st;

        x = x * 1103515245u + 12345u;
        k = (int)((x >> 8) % NTOKENS);
        st = hm_auth_authenticate(arg->auth, &a, hm_arena_printf(&a, "Bearer %s", arg->tokens[k]),
                                  NULL, &p);
        snprintf(want, sizeof want, "u%d", k / 2);
        if (k % 2 == 0) {
            if (st.code != HM_CODE_OK || strcmp(p->subject, want) != 0 || p->nvenues != 1 ||
                strcmp(p->venues[0], want) != 0)
                arg->errors++;
        } else if (st.code != HM_CODE_UNAUTHENTICATED || p != NULL) {
            arg->errors++;
        }
        hm_arena_reset(&a);
    }
    hm_arena_deinit(&a);
    return NULL;
}

static void test_threads(void **state)
{
    hm_auth_config_t cfg = base_config();
    pthread_t th[NTHREADS];
    thread_arg_t args[NTHREADS];
    char *tokens[NTOKENS];
    hm_auth_stats_t s;
    hm_auth_t *a;
    long exp = now_s() + 600;

    (void)state;
    cfg.cache_size = 16; /* far fewer slots than tokens: constant eviction */
    a = make(&cfg);
    for (int i = 0; i < NTOKENS; i += 2) {
        size_t n;

        tokens[i] = mint(JWT_ALG_HS256, SECRET, NULL,
                         "{\"sub\":\"u%d\",\"roles\":[\"staff\"],\"venues\":[\"u%d\"],\"exp\":%ld}",
                         i / 2, i / 2, exp);
        tokens[i + 1] = strdup(tokens[i]);
        n = strlen(tokens[i + 1]);
        tokens[i + 1][n - 5] = tokens[i + 1][n - 5] == 'x' ? 'y' : 'x';
    }
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (thread_arg_t){a, tokens, i + 1, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].errors, 0);
    }
    hm_auth_stats(a, &s);
    assert_int_equal(s.cache_hits + s.cache_misses, NTHREADS * ITERATION);
    assert_true(s.cache_evictions > 0);
    hm_auth_destroy(a);
    for (int i = 0; i < NTOKENS; i++)
        free(tokens[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hs256_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hs256_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_and_leeway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_before, setup, teardown),
        cmocka_unit_test_setup_teardown(test_issuer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audience, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rs256_es256_kid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alg_confusion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alg_none_and_others, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_eviction_and_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorize_matrix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorize_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_security_logs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
