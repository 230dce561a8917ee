/*
 * hm/id.h - identifiers and input checks every daemon needs: UUIDs (v4 random, v7
 * time-ordered for events and outbox rows), UUID syntax, UTF-8 validity (protobuf-c does not
 * check proto3 strings, and Postgres refuses invalid UTF-8 with an error we should have
 * caught), and google.protobuf.Timestamp conversion.
 */
#ifndef HM_ID_H
#define HM_ID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HM_UUID_LEN 36 /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" without the NUL */

/* Writes a new random (v4) or time-ordered (v7, ms timestamp + random) UUID, lower case. */
void hm_uuid_v4(char out[HM_UUID_LEN + 1]);
void hm_uuid_v7(char out[HM_UUID_LEN + 1]);

/* True for the canonical 8-4-4-4-12 hex form (either case). */
bool hm_uuid_valid(const char *s);

/* True when s is valid UTF-8 without NUL bytes (overlongs and surrogates refused). */
bool hm_utf8_valid(const char *s);

/* Number of code points of a valid UTF-8 string. */
size_t hm_utf8_len(const char *s);

/* Narrows s[0..*n) to exclude leading and trailing white space (no copy). */
void hm_str_trim(const char **s, size_t *n);

/* True when s[0..n) is 1..max characters of [A-Za-z0-9._-]: names, key ids, service names. */
bool hm_str_is_token(const char *s, size_t n, size_t max);

typedef struct Google__Protobuf__Timestamp Google__Protobuf__Timestamp;
typedef struct hm_arena hm_arena_t;

/* A Timestamp for microseconds since the epoch, allocated in the arena. */
Google__Protobuf__Timestamp *hm_timestamp_from_us(hm_arena_t *arena, int64_t us);

/* Microseconds since the epoch of a Timestamp (0 for NULL). */
int64_t hm_timestamp_to_us(const Google__Protobuf__Timestamp *ts);

#endif
