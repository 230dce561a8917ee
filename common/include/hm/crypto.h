/*
 * hm/crypto.h - personal data at rest: AES-256-GCM encryption of fields (email, phone, name)
 * under a keyring with key ids for rotation, and a keyed HMAC-SHA256 blind index for equality
 * look-ups ("find the guest with this email") without decrypting.
 *
 * Keys come from HM_PII_KEYS ("kid:64hex[,kid:64hex...]": the first encrypts, all decrypt)
 * and HM_PII_INDEX_KEY (64 hex). Rotation: put the new key first and keep the old ones until
 * every row has been re-encrypted (hm_crypto_is_current() finds the rows left). With random
 * 96-bit nonces a key must encrypt fewer than 2^32 values; rotate well before that.
 *
 * An hm_crypto_t is read-only once created and may be shared by all threads; every call uses
 * its own OpenSSL contexts. Whether a daemon may start without keys is the caller's policy.
 */
#ifndef HM_CRYPTO_H
#define HM_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

#include "hm/arena.h"

typedef struct hm_crypto hm_crypto_t;

/* Blob layout: version | kid length | kid | nonce | ciphertext | tag. */
#define HM_CRYPTO_VERSION   1
#define HM_CRYPTO_NONCE_LEN 12
#define HM_CRYPTO_TAG_LEN   16
#define HM_CRYPTO_KID_MAX   32 /* key ids: 1..32 of [A-Za-z0-9._-] */

/*
 * Builds the keyring from the two settings. Returns NULL with a message in err (naming the
 * variable and entry, never quoting key material) when either is missing or malformed: keys
 * not 64 hex digits, a bad or duplicate key id. The caller destroys the result.
 */
hm_crypto_t *hm_crypto_create(const char *keys, const char *index_key, char *err, size_t errlen);

/* Wipes the key material and frees. NULL is a no-op. */
void hm_crypto_destroy(hm_crypto_t *c);

/* Key id that encrypts (the first of HM_PII_KEYS); owned by c. */
const char *hm_crypto_active_kid(const hm_crypto_t *c);

/*
 * Encrypts n bytes with the active key. `aad` (NULL = "") is bound to the ciphertext and must
 * be given again to decrypt: name the field and its row, "guest:email:<guest id>", so a value
 * copied to another field or row does not decrypt. *out (allocated in the arena) receives the
 * blob, *outlen its size (n + 30 + kid length). 0, or HM_ECRYPTO when OpenSSL fails.
 */
int hm_crypto_encrypt(hm_crypto_t *c, hm_arena_t *arena, const void *plain, size_t n,
                      const char *aad, unsigned char **out, size_t *outlen);

/*
 * Decrypts a blob from hm_crypto_encrypt with the key its kid names. *out (in the arena) gets
 * the plaintext followed by a NUL that *outlen does not count. 0, or HM_ECRYPTO when the blob
 * is malformed, its kid is not in the keyring, or it (or the aad) was altered.
 */
int hm_crypto_decrypt(hm_crypto_t *c, hm_arena_t *arena, const unsigned char *blob, size_t len,
                      const char *aad, unsigned char **out, size_t *outlen);

/* True when the blob is encrypted with the active key (false also for malformed blobs). */
bool hm_crypto_is_current(const hm_crypto_t *c, const unsigned char *blob, size_t len);

/*
 * HMAC-SHA256 of a normalized value under the index key, as 64 lower-case hex digits and a
 * NUL in out. Equal inputs give equal outputs; give each field its own domain by prefixing
 * ("email:" + value) so an email and a phone never share an index value. 0, or HM_EINVAL
 * for NULL, HM_ECRYPTO when OpenSSL fails.
 */
int hm_crypto_blind_index(const hm_crypto_t *c, const char *normalized, char out[65]);

/*
 * Canonical forms for blind indexes, allocated in the arena.
 * email: surrounding white space trimmed, ASCII lower-cased; HM_EINVAL when empty, without
 *        exactly one '@' with text on both sides, or with white space or control characters.
 * phone: an optional leading '+' and the digits; spaces, '-', '.', '(', ')' and '/' dropped;
 *        HM_EINVAL for any other character or fewer than 3 or more than 20 digits.
 */
int hm_crypto_normalize_email(hm_arena_t *arena, const char *in, char **out);
int hm_crypto_normalize_phone(hm_arena_t *arena, const char *in, char **out);

#endif
