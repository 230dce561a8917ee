/*
 * crypto.c - personal data at rest (hm/crypto.h): AES-256-GCM under a keyring with key ids,
 * and an HMAC-SHA256 blind index, with OpenSSL 3.
 *
 * Blob: version (1) | kid length (1..32) | kid | nonce (12, random) | ciphertext | tag (16).
 * The header (version, kid length, kid) is authenticated along with the caller's AAD, which
 * follows it in the GCM additional data; the header is self-delimiting, so the concatenation
 * is unambiguous. The keyring is immutable after creation, so threads share it without locks;
 * each call allocates its own cipher context.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/err.h"
#include "hm/log.h"

#define KEY_LEN    32
#define HEADER_MAX (2 + HM_CRYPTO_KID_MAX)

typedef struct crypto_key {
    char kid[HM_CRYPTO_KID_MAX + 1]; /* NUL-terminated, unique within the keyring */
    unsigned char key[KEY_LEN];      /* wiped by hm_crypto_destroy */
} crypto_key_t;

struct hm_crypto {
    crypto_key_t *keys; /* owned; keys[0] encrypts; never empty */
    size_t nkeys;
    unsigned char index_key[KEY_LEN]; /* HMAC key of the blind index; wiped on destroy */
    EVP_CIPHER *aes;                  /* fetched once; OpenSSL objects are shareable */
};

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Exactly 64 hex digits in s[0..n) into out[32]; 0 or HM_EINVAL. */
static int parse_key(const char *s, size_t n, unsigned char out[KEY_LEN])
{
    if (n != 2 * KEY_LEN)
        return HM_EINVAL;
    for (size_t i = 0; i < KEY_LEN; i++) {
        int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(out, KEY_LEN);
            return HM_EINVAL;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

void hm_crypto_destroy(hm_crypto_t *c)
{
    if (c == NULL)
        return;
    if (c->keys != NULL) {
        OPENSSL_cleanse(c->keys, c->nkeys * sizeof *c->keys);
        free(c->keys);
    }
    EVP_CIPHER_free(c->aes);
    OPENSSL_cleanse(c, sizeof *c);
    free(c);
}

hm_crypto_t *hm_crypto_create(const char *keys, const char *index_key, char *err, size_t errlen)
{
    hm_crypto_t *c;
    size_t cap = 1, entry = 0;
    const char *p;

    if (errlen > 0)
        err[0] = '\0';
    if (keys == NULL || keys[0] == '\0') {
        snprintf(err, errlen, "HM_PII_KEYS: not set");
        return NULL;
    }
    if (index_key == NULL || index_key[0] == '\0') {
        snprintf(err, errlen, "HM_PII_INDEX_KEY: not set");
        return NULL;
    }
    for (p = keys; *p != '\0'; p++)
        cap += *p == ',';

    c = hm_xcalloc(1, sizeof *c);
    c->keys = hm_xcalloc(cap, sizeof *c->keys);
    for (p = keys;; entry++) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        const char *kid = p, *hex;
        size_t klen, hlen;
        crypto_key_t *k = &c->keys[c->nkeys];

        hm_str_trim(&kid, &n);
        if (colon == NULL) {
            snprintf(err, errlen, "HM_PII_KEYS: entry %zu: want kid:<64 hex digits>", entry + 1);
            goto fail;
        }
        klen = (size_t)(colon - kid);
        hex = colon + 1;
        hlen = n - klen - 1;
        hm_str_trim(&kid, &klen);
        hm_str_trim(&hex, &hlen);
        if (!hm_str_is_token(kid, klen, HM_CRYPTO_KID_MAX)) {
            snprintf(err, errlen,
                     "HM_PII_KEYS: entry %zu: key id must be 1 to %d of A-Z a-z 0-9 . _ -",
                     entry + 1, HM_CRYPTO_KID_MAX);
            goto fail;
        }
        memcpy(k->kid, kid, klen);
        k->kid[klen] = '\0';
        for (size_t i = 0; i < c->nkeys; i++) {
            if (strcmp(c->keys[i].kid, k->kid) == 0) {
                snprintf(err, errlen, "HM_PII_KEYS: entry %zu: duplicate key id \"%s\"", entry + 1,
                         k->kid);
                goto fail;
            }
        }
        if (parse_key(hex, hlen, k->key) != 0) {
            snprintf(err, errlen, "HM_PII_KEYS: entry %zu (%s): key must be 64 hex digits",
                     entry + 1, k->kid);
            goto fail;
        }
        c->nkeys++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }

    {
        size_t n = strlen(index_key);
        const char *s = index_key;

        hm_str_trim(&s, &n);
        if (parse_key(s, n, c->index_key) != 0) {
            snprintf(err, errlen, "HM_PII_INDEX_KEY: must be 64 hex digits");
            goto fail;
        }
    }
    for (size_t i = 0; i < c->nkeys; i++) {
        if (CRYPTO_memcmp(c->keys[i].key, c->index_key, KEY_LEN) == 0) {
            snprintf(err, errlen, "HM_PII_INDEX_KEY: must differ from the encryption keys");
            goto fail;
        }
    }

    c->aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (c->aes == NULL) {
        snprintf(err, errlen, "openssl: AES-256-GCM is not available");
        goto fail;
    }
    return c;

fail:
    hm_crypto_destroy(c);
    return NULL;
}

const char *hm_crypto_active_kid(const hm_crypto_t *c)
{
    return c->keys[0].kid;
}

static const crypto_key_t *find_key(const hm_crypto_t *c, const unsigned char *kid, size_t klen)
{
    for (size_t i = 0; i < c->nkeys; i++) {
        if (strlen(c->keys[i].kid) == klen && memcmp(c->keys[i].kid, kid, klen) == 0)
            return &c->keys[i];
    }
    return NULL;
}

/* Feeds header and caller AAD as GCM additional data. */
static bool put_aad(EVP_CIPHER_CTX *ctx, const unsigned char *hdr, size_t hlen, const char *aad,
                    int enc)
{
    int l;
    size_t alen = aad != NULL ? strlen(aad) : 0;

    if (alen > INT_MAX)
        return false;
    if ((enc ? EVP_EncryptUpdate(ctx, NULL, &l, hdr, (int)hlen)
             : EVP_DecryptUpdate(ctx, NULL, &l, hdr, (int)hlen)) != 1)
        return false;
    if (alen == 0)
        return true;
    return (enc ? EVP_EncryptUpdate(ctx, NULL, &l, (const unsigned char *)aad, (int)alen)
                : EVP_DecryptUpdate(ctx, NULL, &l, (const unsigned char *)aad, (int)alen)) == 1;
}

int hm_crypto_encrypt(hm_crypto_t *c, hm_arena_t *arena, const void *plain, size_t n,
                      const char *aad, unsigned char **out, size_t *outlen)
{
    const crypto_key_t *k = &c->keys[0];
    size_t klen = strlen(k->kid), hlen = 2 + klen;
    unsigned char *buf, *nonce, *ct;
    EVP_CIPHER_CTX *ctx;
    int l = 0, l2 = 0, ok;

    *out = NULL;
    *outlen = 0;
    if (n > INT_MAX - 64)
        return HM_EINVAL;
    buf = hm_arena_alloc(arena, hlen + HM_CRYPTO_NONCE_LEN + n + HM_CRYPTO_TAG_LEN);
    buf[0] = HM_CRYPTO_VERSION;
    buf[1] = (unsigned char)klen;
    memcpy(buf + 2, k->kid, klen);
    nonce = buf + hlen;
    ct = nonce + HM_CRYPTO_NONCE_LEN;
    if (RAND_bytes(nonce, HM_CRYPTO_NONCE_LEN) != 1)
        return HM_ECRYPTO;

    ctx = EVP_CIPHER_CTX_new();
    ok = ctx != NULL && EVP_EncryptInit_ex2(ctx, c->aes, k->key, nonce, NULL) == 1 &&
         put_aad(ctx, buf, hlen, aad, 1) &&
         (n == 0 || EVP_EncryptUpdate(ctx, ct, &l, plain, (int)n) == 1) &&
         EVP_EncryptFinal_ex(ctx, ct + l, &l2) == 1 && (size_t)(l + l2) == n &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, HM_CRYPTO_TAG_LEN, ct + n) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        HM_ERROR("crypto: encryption failed");
        return HM_ECRYPTO;
    }
    *out = buf;
    *outlen = hlen + HM_CRYPTO_NONCE_LEN + n + HM_CRYPTO_TAG_LEN;
    return 0;
}

int hm_crypto_decrypt(hm_crypto_t *c, hm_arena_t *arena, const unsigned char *blob, size_t len,
                      const char *aad, unsigned char **out, size_t *outlen)
{
    unsigned char tag[HM_CRYPTO_TAG_LEN];
    const crypto_key_t *k;
    const unsigned char *nonce, *ct;
    unsigned char *plain;
    size_t klen, hlen, n;
    EVP_CIPHER_CTX *ctx;
    int l = 0, l2 = 0, ok;

    *out = NULL;
    *outlen = 0;
    if (blob == NULL || len < 3 || blob[0] != HM_CRYPTO_VERSION)
        return HM_ECRYPTO;
    klen = blob[1];
    hlen = 2 + klen;
    if (klen == 0 || klen > HM_CRYPTO_KID_MAX ||
        len < hlen + HM_CRYPTO_NONCE_LEN + HM_CRYPTO_TAG_LEN)
        return HM_ECRYPTO;
    n = len - hlen - HM_CRYPTO_NONCE_LEN - HM_CRYPTO_TAG_LEN;
    if (n > INT_MAX - 64)
        return HM_ECRYPTO;
    k = find_key(c, blob + 2, klen);
    if (k == NULL) {
        HM_DEBUG("crypto: no key with id \"%.*s\" in the keyring", (int)klen,
                 (const char *)blob + 2);
        return HM_ECRYPTO;
    }
    nonce = blob + hlen;
    ct = nonce + HM_CRYPTO_NONCE_LEN;
    memcpy(tag, ct + n, HM_CRYPTO_TAG_LEN);
    plain = hm_arena_alloc(arena, n + 1);

    ctx = EVP_CIPHER_CTX_new();
    ok = ctx != NULL && EVP_DecryptInit_ex2(ctx, c->aes, k->key, nonce, NULL) == 1 &&
         put_aad(ctx, blob, hlen, aad, 0) &&
         (n == 0 || EVP_DecryptUpdate(ctx, plain, &l, ct, (int)n) == 1) &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, HM_CRYPTO_TAG_LEN, tag) == 1 &&
         EVP_DecryptFinal_ex(ctx, plain + l, &l2) == 1 && (size_t)(l + l2) == n;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        OPENSSL_cleanse(plain, n + 1); /* unauthenticated plaintext must not be used */
        return HM_ECRYPTO;
    }
    plain[n] = '\0';
    *out = plain;
    *outlen = n;
    return 0;
}

bool hm_crypto_is_current(const hm_crypto_t *c, const unsigned char *blob, size_t len)
{
    size_t klen = strlen(c->keys[0].kid);

    return blob != NULL && len >= 2 + klen + HM_CRYPTO_NONCE_LEN + HM_CRYPTO_TAG_LEN &&
           blob[0] == HM_CRYPTO_VERSION && blob[1] == klen &&
           memcmp(blob + 2, c->keys[0].kid, klen) == 0;
}

int hm_crypto_blind_index(const hm_crypto_t *c, const char *normalized, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    out[0] = '\0';
    if (normalized == NULL)
        return HM_EINVAL;
    if (HMAC(EVP_sha256(), c->index_key, KEY_LEN, (const unsigned char *)normalized,
             strlen(normalized), md, &mdlen) == NULL ||
        mdlen != 32)
        return HM_ECRYPTO;
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0xF];
    }
    out[64] = '\0';
    return 0;
}

int hm_crypto_normalize_email(hm_arena_t *arena, const char *in, char **out)
{
    const char *s = in;
    size_t n = in != NULL ? strlen(in) : 0;
    const char *at;
    char *r;

    *out = NULL;
    hm_str_trim(&s, &n);
    if (n == 0)
        return HM_EINVAL;
    at = memchr(s, '@', n);
    if (at == NULL || at == s || at == s + n - 1 || memchr(at + 1, '@', n - (size_t)(at - s) - 1))
        return HM_EINVAL;
    r = hm_arena_alloc(arena, n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch <= 0x20 || ch == 0x7F)
            return HM_EINVAL;
        r[i] = (char)(ch < 0x80 ? tolower(ch) : ch);
    }
    r[n] = '\0';
    *out = r;
    return 0;
}

int hm_crypto_normalize_phone(hm_arena_t *arena, const char *in, char **out)
{
    const char *s = in;
    size_t n = in != NULL ? strlen(in) : 0, len = 0, digits = 0;
    char *r;

    *out = NULL;
    hm_str_trim(&s, &n);
    if (n == 0)
        return HM_EINVAL;
    r = hm_arena_alloc(arena, n + 1);
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];

        if (ch >= '0' && ch <= '9') {
            r[len++] = ch;
            digits++;
        } else if (ch == '+' && len == 0 && i == 0) {
            r[len++] = ch;
        } else if (ch != ' ' && ch != '-' && ch != '.' && ch != '(' && ch != ')' && ch != '/') {
            return HM_EINVAL;
        }
    }
    if (digits < 3 || digits > 20)
        return HM_EINVAL;
    r[len] = '\0';
    *out = r;
    return 0;
}
