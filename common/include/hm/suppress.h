/*
 * hm/suppress.h - the erasure suppression list (DESIGN.md §6-§7, issue "privacyd").
 *
 * After a guest is erased, late or replayed events about them must not re-create their data.
 * privacyd keeps the list durably in its own database and mirrors it into the Redis set
 * HM_SUPPRESS_KEY, which every daemon's consumer checks before a handler runs (hm_daemon_main
 * wires hm_subject_suppressed in as the consumer's suppression hook). Members are the SHA-256
 * (lower-case hex) of the guest id, never the id itself, so the set reveals nothing.
 */
#ifndef HM_SUPPRESS_H
#define HM_SUPPRESS_H

#include <stdbool.h>

#include "hm/cache.h"

#define HM_SUPPRESS_KEY "hm:privacy:suppressed"

/* SHA-256 of `subject` in lower-case hex (64 characters and a NUL). */
void hm_subject_hash(const char *subject, char out[65]);

/*
 * True when `subject` is on the list. NULL/"" subjects never are. When Redis does not answer
 * the answer is false and the error is counted (the consumer reading from that same Redis is
 * stalled anyway; privacyd re-adds the list at start and on a schedule).
 */
bool hm_subject_suppressed(hm_cache_t *cache, const char *subject);

/* Adds the hash of `subject` to the list. 0 or HM_EUNAVAIL. */
int hm_suppress_subject(hm_cache_t *cache, const char *subject);

/* Adds an already-hashed member (privacyd's rebuild from its table). 0 or HM_EUNAVAIL. */
int hm_suppress_hash(hm_cache_t *cache, const char *hash_hex);

#endif
