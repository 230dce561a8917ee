/*
 * test_crypto.c - unit tests of common/src/crypto.c: AES-256-GCM round trips, tamper and AAD
 * detection, key rotation by key id, keyring parsing errors (never quoting key material), the
 * blind index (stable, key-dependent, a known HMAC vector), normalizers, and shared use by
 * several threads.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "hm/arena.h"
#include "hm/crypto.h"
#include "hm/err.h"

#define HEX_A   "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define HEX_B   "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
#define HEX_C   "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
#define HEX_IDX HEX_A /* the index key of most tests */

static hm_arena_t arena;

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

static hm_crypto_t *make(const char *keys, const char *idx)
{
    char err[256];
    hm_crypto_t *c = hm_crypto_create(keys, idx, err, sizeof err);

    if (c == NULL)
        fail_msg("hm_crypto_create: %s", err);
    return c;
}

static void test_round_trip(void **state)
{
    static const size_t sizes[] = {0, 1, 15, 16, 17, 255, 4096};
    hm_crypto_t *c = make("k1:" HEX_B, HEX_IDX);
    unsigned char plain[4096], *blob, *out;
    size_t blen, olen;

    (void)state;
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (unsigned char)(i * 7 + 3);
    assert_string_equal(hm_crypto_active_kid(c), "k1");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];

        assert_int_equal(hm_crypto_encrypt(c, &arena, plain, n, "guest:email:42", &blob, &blen), 0);
        assert_int_equal(blen, 1 + 1 + 2 + HM_CRYPTO_NONCE_LEN + n + HM_CRYPTO_TAG_LEN);
        assert_int_equal(blob[0], HM_CRYPTO_VERSION);
        assert_int_equal(blob[1], 2);
        assert_memory_equal(blob + 2, "k1", 2);
        if (n >= 16) /* the plaintext does not appear in the blob */
            assert_null(memmem(blob, blen, plain, 16));
        assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, "guest:email:42", &out, &olen),
                         0);
        assert_int_equal(olen, n);
        assert_memory_equal(out, plain, n);
        assert_int_equal(out[n], '\0');
        assert_true(hm_crypto_is_current(c, blob, blen));
    }
    hm_crypto_destroy(c);
}

static void test_nonce_is_random(void **state)
{
    hm_crypto_t *c = make("k1:" HEX_B, HEX_IDX);
    unsigned char *a, *b;
    size_t alen, blen;

    (void)state;
    assert_int_equal(hm_crypto_encrypt(c, &arena, "same", 4, "x", &a, &alen), 0);
    assert_int_equal(hm_crypto_encrypt(c, &arena, "same", 4, "x", &b, &blen), 0);
    assert_int_equal(alen, blen);
    assert_memory_not_equal(a + 4, b + 4, HM_CRYPTO_NONCE_LEN);
    assert_memory_not_equal(a, b, alen);
    hm_crypto_destroy(c);
}

static void test_tamper(void **state)
{
    hm_crypto_t *c = make("k1:" HEX_B ",k2:" HEX_C, HEX_IDX);
    unsigned char *blob, *copy, *out;
    size_t blen, olen;
    const char *msg = "jane@example.com";

    (void)state;
    assert_int_equal(hm_crypto_encrypt(c, &arena, msg, strlen(msg), "guest:email:7", &blob, &blen),
                     0);
    copy = hm_arena_alloc(&arena, blen + 1);
    /* Every single-bit change anywhere is detected: header, nonce, ciphertext, tag. */
    for (size_t i = 0; i < blen; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(copy, blob, blen);
            copy[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(hm_crypto_decrypt(c, &arena, copy, blen, "guest:email:7", &out, &olen),
                             HM_ECRYPTO);
            assert_null(out);
        }
    }
    /* Swapping the kid to another key of the ring fails too (the header is authenticated). */
    memcpy(copy, blob, blen);
    copy[3] = '2';
    assert_int_equal(hm_crypto_decrypt(c, &arena, copy, blen, "guest:email:7", &out, &olen),
                     HM_ECRYPTO);
    /* Truncated or extended blobs. */
    for (size_t n = 0; n < blen; n++)
        assert_int_equal(hm_crypto_decrypt(c, &arena, blob, n, "guest:email:7", &out, &olen),
                         HM_ECRYPTO);
    memcpy(copy, blob, blen);
    copy[blen] = 0;
    assert_int_equal(hm_crypto_decrypt(c, &arena, copy, blen + 1, "guest:email:7", &out, &olen),
                     HM_ECRYPTO);
    assert_int_equal(hm_crypto_decrypt(c, &arena, NULL, 0, "guest:email:7", &out, &olen),
                     HM_ECRYPTO);
    /* The untouched blob still decrypts. */
    assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, "guest:email:7", &out, &olen), 0);
    assert_string_equal((char *)out, msg);
    hm_crypto_destroy(c);
}

static void test_aad_binding(void **state)
{
    hm_crypto_t *c = make("k1:" HEX_B, HEX_IDX);
    unsigned char *blob, *out;
    size_t blen, olen;

    (void)state;
    assert_int_equal(hm_crypto_encrypt(c, &arena, "v", 1, "guest:email:1", &blob, &blen), 0);
    /* Moved to another row or another field: refused. */
    assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, "guest:email:2", &out, &olen),
                     HM_ECRYPTO);
    assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, "guest:phone:1", &out, &olen),
                     HM_ECRYPTO);
    assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, NULL, &out, &olen), HM_ECRYPTO);
    /* NULL and "" are the same AAD. */
    assert_int_equal(hm_crypto_encrypt(c, &arena, "v", 1, NULL, &blob, &blen), 0);
    assert_int_equal(hm_crypto_decrypt(c, &arena, blob, blen, "", &out, &olen), 0);
    hm_crypto_destroy(c);
}

static void test_rotation(void **state)
{
    hm_crypto_t *old = make("2023:" HEX_B, HEX_IDX);
    hm_crypto_t *ring = make("2024:" HEX_C ",2023:" HEX_B, HEX_IDX);
    hm_crypto_t *only_new = make("2024:" HEX_C, HEX_IDX);
    hm_crypto_t *same_kid_other_key = make("2023:" HEX_C, HEX_IDX);
    unsigned char *blob, *blob2, *out;
    size_t blen, blen2, olen;

    (void)state;
    assert_int_equal(hm_crypto_encrypt(old, &arena, "+15550100", 9, "g:phone:9", &blob, &blen), 0);
    /* A row written under the old key decrypts with the rotated keyring [new, old]... */
    assert_int_equal(hm_crypto_decrypt(ring, &arena, blob, blen, "g:phone:9", &out, &olen), 0);
    assert_string_equal((char *)out, "+15550100");
    /* ...and is flagged for re-encryption, which then uses the new key. */
    assert_false(hm_crypto_is_current(ring, blob, blen));
    assert_int_equal(hm_crypto_encrypt(ring, &arena, out, olen, "g:phone:9", &blob2, &blen2), 0);
    assert_true(hm_crypto_is_current(ring, blob2, blen2));
    assert_memory_equal(blob2 + 2, "2024", 4);
    /* The old binary's keyring cannot read the new key's blobs: unknown kid. */
    assert_int_equal(hm_crypto_decrypt(old, &arena, blob2, blen2, "g:phone:9", &out, &olen),
                     HM_ECRYPTO);
    /* Once the old key is removed, old blobs fail cleanly. */
    assert_int_equal(hm_crypto_decrypt(only_new, &arena, blob, blen, "g:phone:9", &out, &olen),
                     HM_ECRYPTO);
    /* A kid reused for a different key does not decrypt either. */
    assert_int_equal(
        hm_crypto_decrypt(same_kid_other_key, &arena, blob, blen, "g:phone:9", &out, &olen),
        HM_ECRYPTO);
    assert_false(hm_crypto_is_current(ring, NULL, 0));
    hm_crypto_destroy(old);
    hm_crypto_destroy(ring);
    hm_crypto_destroy(only_new);
    hm_crypto_destroy(same_kid_other_key);
}

/* Creation must fail with exactly this message, which never holds key material. */
static void expect_create_error(const char *keys, const char *idx, const char *msg)
{
    char err[256];
    hm_crypto_t *c = hm_crypto_create(keys, idx, err, sizeof err);

    assert_null(c);
    assert_string_equal(err, msg);
    assert_null(strstr(err, "0011"));
    assert_null(strstr(err, "ffee"));
}

static void test_keyring_errors(void **state)
{
    (void)state;
    expect_create_error(NULL, HEX_IDX, "HM_PII_KEYS: not set");
    expect_create_error("", HEX_IDX, "HM_PII_KEYS: not set");
    expect_create_error("k1:" HEX_B, NULL, "HM_PII_INDEX_KEY: not set");
    expect_create_error("k1:" HEX_B, "", "HM_PII_INDEX_KEY: not set");
    expect_create_error(HEX_B, HEX_IDX, "HM_PII_KEYS: entry 1: want kid:<64 hex digits>");
    expect_create_error("k1:" HEX_B ",", HEX_IDX, "HM_PII_KEYS: entry 2: want kid:<64 hex digits>");
    expect_create_error("k1:" HEX_B "00", HEX_IDX,
                        "HM_PII_KEYS: entry 1 (k1): key must be 64 hex digits");
    expect_create_error("k1:ffeeddccbbaa99887766554433221100ffeeddccbbaa9988776655443322110g",
                        HEX_IDX, "HM_PII_KEYS: entry 1 (k1): key must be 64 hex digits");
    expect_create_error(":" HEX_B, HEX_IDX,
                        "HM_PII_KEYS: entry 1: key id must be 1 to 32 of A-Z a-z 0-9 . _ -");
    expect_create_error("k/1:" HEX_B, HEX_IDX,
                        "HM_PII_KEYS: entry 1: key id must be 1 to 32 of A-Z a-z 0-9 . _ -");
    expect_create_error("k1:" HEX_B ",k1:" HEX_C, HEX_IDX,
                        "HM_PII_KEYS: entry 2: duplicate key id \"k1\"");
    expect_create_error("k1:" HEX_B, "abc", "HM_PII_INDEX_KEY: must be 64 hex digits");
    expect_create_error("k1:" HEX_B, HEX_B,
                        "HM_PII_INDEX_KEY: must differ from the encryption keys");
}

static void test_keyring_forms(void **state)
{
    /* Spaces around entries and upper-case hex are accepted. */
    hm_crypto_t *a = make(" k1 : " HEX_B " , k.2_x-Y : " HEX_C " ",
                          "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF");
    hm_crypto_t *b = make("k1:" HEX_B, HEX_IDX);
    unsigned char *blob, *out;
    size_t blen, olen;
    char ia[65], ib[65];

    (void)state;
    assert_string_equal(hm_crypto_active_kid(a), "k1");
    assert_int_equal(hm_crypto_encrypt(a, &arena, "x", 1, "", &blob, &blen), 0);
    assert_int_equal(hm_crypto_decrypt(b, &arena, blob, blen, "", &out, &olen), 0);
    assert_int_equal(hm_crypto_blind_index(a, "v", ia), 0);
    assert_int_equal(hm_crypto_blind_index(b, "v", ib), 0);
    assert_string_equal(ia, ib);
    hm_crypto_destroy(a);
    hm_crypto_destroy(b);
    hm_crypto_destroy(NULL);
}

static void test_blind_index(void **state)
{
    hm_crypto_t *c = make("k1:" HEX_B, HEX_IDX);
    hm_crypto_t *same = make("k9:" HEX_C, HEX_IDX);
    hm_crypto_t *other = make("k1:" HEX_B, HEX_C);
    char a[65], b[65], d[65];

    (void)state;
    /* Known answer: HMAC-SHA256(HEX_IDX, "email:jane@example.com"). */
    assert_int_equal(hm_crypto_blind_index(c, "email:jane@example.com", a), 0);
    assert_string_equal(a, "2c054b04f1d876ae027e45f450d6eff47a5cd877c909da3595d609a885042bc2");
    /* Stable across instances with the same index key, whatever the encryption keys. */
    assert_int_equal(hm_crypto_blind_index(same, "email:jane@example.com", b), 0);
    assert_string_equal(a, b);
    /* Depends on the key and the input. */
    assert_int_equal(hm_crypto_blind_index(other, "email:jane@example.com", d), 0);
    assert_string_not_equal(a, d);
    assert_int_equal(hm_crypto_blind_index(c, "phone:jane@example.com", d), 0);
    assert_string_not_equal(a, d);
    assert_int_equal(strlen(a), 64);
    assert_int_equal(hm_crypto_blind_index(c, NULL, d), HM_EINVAL);
    hm_crypto_destroy(c);
    hm_crypto_destroy(same);
    hm_crypto_destroy(other);
}

static void test_normalize(void **state)
{
    static const char *const bad_email[] = {"",   "   ",   "no-at",  "a@b@c", "@b",
                                            "a@", "a b@c", "a@b\tc", "a@\x01"};
    static const char *const bad_phone[] = {"",       "12",    "+1-555-CALL",          "1+2",
                                            "++1555", "555#1", "123456789012345678901"};
    char *out;

    (void)state;
    assert_int_equal(hm_crypto_normalize_email(&arena, "  John.Doe@Example.COM \n", &out), 0);
    assert_string_equal(out, "john.doe@example.com");
    assert_int_equal(hm_crypto_normalize_email(&arena, "\xc3\x89lo@b.fr", &out), 0);
    assert_string_equal(out, "\xc3\x89lo@b.fr"); /* non-ASCII left alone */
    for (size_t i = 0; i < sizeof bad_email / sizeof bad_email[0]; i++) {
        assert_int_equal(hm_crypto_normalize_email(&arena, bad_email[i], &out), HM_EINVAL);
        assert_null(out);
    }
    assert_int_equal(hm_crypto_normalize_email(&arena, NULL, &out), HM_EINVAL);

    assert_int_equal(hm_crypto_normalize_phone(&arena, "+1 (555) 010-2030", &out), 0);
    assert_string_equal(out, "+15550102030");
    assert_int_equal(hm_crypto_normalize_phone(&arena, " +44 20 7946 0958 ", &out), 0);
    assert_string_equal(out, "+442079460958");
    assert_int_equal(hm_crypto_normalize_phone(&arena, "555.010.2030", &out), 0);
    assert_string_equal(out, "5550102030");
    assert_int_equal(hm_crypto_normalize_phone(&arena, "030/1234", &out), 0);
    assert_string_equal(out, "0301234");
    for (size_t i = 0; i < sizeof bad_phone / sizeof bad_phone[0]; i++) {
        assert_int_equal(hm_crypto_normalize_phone(&arena, bad_phone[i], &out), HM_EINVAL);
        assert_null(out);
    }
    assert_int_equal(hm_crypto_normalize_phone(&arena, NULL, &out), HM_EINVAL);
}

#define THREADS 4
#define ROUNDS  500

static void *churn(void *arg)
{
    hm_crypto_t *c = arg;
    hm_arena_t a;
    intptr_t bad = 0;

    hm_arena_init(&a, 0);
    for (int i = 0; i < ROUNDS && bad == 0; i++) {
        char msg[64], aad[32];
        unsigned char *blob, *out;
        size_t blen, olen;

        snprintf(msg, sizeof msg, "value %d of %p", i, (void *)&a);
        snprintf(aad, sizeof aad, "t:%d", i);
        if (hm_crypto_encrypt(c, &a, msg, strlen(msg), aad, &blob, &blen) != 0 ||
            hm_crypto_decrypt(c, &a, blob, blen, aad, &out, &olen) != 0 ||
            strcmp((char *)out, msg) != 0)
            bad = 1;
        hm_arena_reset(&a);
    }
    hm_arena_deinit(&a);
    return (void *)bad;
}

static void test_threads(void **state)
{
    hm_crypto_t *c = make("k1:" HEX_B ",k0:" HEX_C, HEX_IDX);
    pthread_t th[THREADS];

    (void)state;
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, churn, c), 0);
    for (int i = 0; i < THREADS; i++) {
        void *ret;

        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    hm_crypto_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonce_is_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aad_binding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyring_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blind_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_normalize, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
