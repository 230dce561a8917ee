/*
 * fuzz_jwt.c - fuzzes libhm's caller authentication (hm_auth_authenticate, common/src/auth.c):
 * the authorization scheme, the token's three parts, base64url, the header and claims JSON, the
 * HS256 signature check, the token cache and the API key path, with a verifier configured as
 * the daemons run in development (HM_AUTH on, an HS256 secret, a small cache, one API key).
 *
 * Input: the first byte picks the mode, the rest (cut at its first NUL, as gRPC metadata
 * would be) is the text:
 *   0  "authorization: Bearer <text>"          (random tokens; mostly refused early)
 *   1  "authorization: <text>"                 (schemes, spacing, case)
 *   2  "x-api-key: <text>"
 *   3  a token built from the text: "<header JSON>\n<claims JSON>", each part base64url-encoded
 *      and the token signed with the verifier's secret, so the fuzzer reaches the header and
 *      claims parsing behind the signature check (alg, kid, typ, sub, roles, venues, exp, nbf,
 *      iss, aud of every JSON shape);
 *   4  like 3, then the same token again (the cache's hit path must agree with the miss).
 * Asserts: the status is OK or UNAUTHENTICATED with a message, never anything else; on OK the
 * principal is set, its subject non-empty (at most the token's length), venues consistent with
 * nvenues, via "jwt" or "api-key", and an expiry in the future; on failure *out is NULL; the
 * cached answer of mode 4 equals the first.
 */
#include <stdbool.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fuzz.h"
#include "hm/auth.h"
#include "hm/err.h"
#include "hm/log.h"

#define SECRET "fuzz-secret-0123456789abcdef0123456789abcdef"

static hm_auth_t *auth;

static hm_auth_t *verifier(void)
{
    if (auth)
        return auth;
    hm_log_init("fuzz_jwt", HM_LOG_ERROR);
    /* one API key "fuzz-key" (its SHA-256 below) with the service role */
    hm_auth_config_t cfg = {
        .enabled = true,
        .hs256_secret = SECRET,
        .api_keys = "fuzz:231e9b2f757db8d48ecd0711b60135e1cc57a3a807be9dc12638856f17a7872c:service",
        .cache_size = 64,
    };
    char err[256];
    auth = hm_auth_create(&cfg, err, sizeof err);
    if (!auth) {
        fprintf(stderr, "fuzz_jwt: hm_auth_create: %s\n", err);
        abort();
    }
    return auth;
}

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = t[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = t[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* "Bearer " + base64url(header) "." base64url(claims) "." base64url(HMAC) in arena. */
static char *signed_token(hm_arena_t *a, const char *text, size_t n)
{
    const char *nl = memchr(text, '\n', n);
    size_t hn = nl ? (size_t)(nl - text) : n;
    const char *claims = nl ? nl + 1 : "";
    size_t cn = nl ? n - hn - 1 : 0;
    char *tok = hm_arena_alloc(a, 7 + (hn + cn + 32) * 4 / 3 + 16);
    size_t o = 7;
    memcpy(tok, "Bearer ", 7);
    o += b64url((const uint8_t *)text, hn, tok + o);
    tok[o++] = '.';
    o += b64url((const uint8_t *)claims, cn, tok + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    FUZZ_CHECK(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)tok + 7,
                    o - 7, mac, &maclen) != NULL);
    tok[o++] = '.';
    b64url(mac, maclen, tok + o);
    return tok;
}

static void check(hm_status_t st, const hm_principal_t *p, size_t textlen)
{
    if (hm_status_ok(st)) {
        FUZZ_CHECK(p != NULL);
        FUZZ_CHECK(p->subject != NULL && p->subject[0] != '\0');
        FUZZ_CHECK(strcmp(p->via, "jwt") == 0 || strcmp(p->via, "api-key") == 0);
        if (strcmp(p->via, "jwt") == 0)
            FUZZ_CHECK(strlen(p->subject) <= textlen);
        FUZZ_CHECK((p->nvenues == 0) == (p->venues == NULL));
        for (size_t i = 0; i < p->nvenues; i++)
            FUZZ_CHECK(p->venues[i] != NULL);
        FUZZ_CHECK(p->expires_ms > 0);
    } else {
        FUZZ_CHECK(st.code == HM_CODE_UNAUTHENTICATED);
        FUZZ_CHECK(st.message != NULL && st.message[0] != '\0');
        FUZZ_CHECK(p == NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    hm_auth_t *v = verifier();
    int mode = data[0] % 5;
    size_t n = strnlen((const char *)data + 1, size - 1);
    char *text = malloc(n + 1);
    memcpy(text, data + 1, n);
    text[n] = '\0';

    hm_arena_t arena;
    hm_arena_init(&arena, 0);
    const hm_principal_t *p = (const hm_principal_t *)1;
    hm_status_t st;
    switch (mode) {
    case 0: {
        char *h = hm_arena_printf(&arena, "Bearer %s", text);
        st = hm_auth_authenticate(v, &arena, h, NULL, &p);
        break;
    }
    case 1:
        st = hm_auth_authenticate(v, &arena, text, NULL, &p);
        break;
    case 2:
        st = hm_auth_authenticate(v, &arena, NULL, text, &p);
        break;
    default: {
        char *h = signed_token(&arena, text, n);
        st = hm_auth_authenticate(v, &arena, h, NULL, &p);
        check(st, p, strlen(h));
        if (mode == 4) {
            const hm_principal_t *q = (const hm_principal_t *)1;
            hm_status_t st2 = hm_auth_authenticate(v, &arena, h, NULL, &q);
            check(st2, q, strlen(h));
            FUZZ_CHECK(st2.code == st.code);
            if (hm_status_ok(st)) {
                FUZZ_CHECK(strcmp(p->subject, q->subject) == 0);
                FUZZ_CHECK(p->roles == q->roles && p->nvenues == q->nvenues);
                FUZZ_CHECK(p->expires_ms == q->expires_ms);
            }
        }
        hm_arena_deinit(&arena);
        free(text);
        return 0;
    }
    }
    check(st, p, n + 7);
    hm_arena_deinit(&arena);
    free(text);
    return 0;
}
