/*
 * rules.h - identity rules of guestd, pure functions (table-driven unit tests in
 * tests/unit/test_guest_rules.c): which identifier values are blocked, how values are
 * normalized, how many identifiers of a type one guest may hold, their priority when limits
 * conflict, whether two profiles may merge, and the rule id a merge is recorded under.
 */
#ifndef GUESTD_RULES_H
#define GUESTD_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include "hm/arena.h"

/* Identifier types (hospitality.guest.v1.IdentifierType values). */
enum {
    GD_ID_EMAIL = 1,
    GD_ID_PHONE = 2,
    GD_ID_DEVICE = 3,
    GD_ID_SESSION = 4,
    GD_ID_APP_USER = 5,
    GD_ID_NTYPES = 6,
};

/* True for placeholder values that must never identify anyone ("", "null", "anonymous",
 * "undefined", "0000", "00000000-0000-0000-0000-000000000000", "test@test.com", ...). */
bool gd_id_blocked(const char *value);

/*
 * Checks and normalizes one identifier: emails lower-cased, phones to E.164, ids trimmed.
 * Returns 0 with *out (arena) or -1 with *why (static text) naming what is wrong.
 */
int gd_id_normalize(hm_arena_t *a, int type, int app, const char *value, char **out,
                    const char **why);

/* How many identifiers of `type` one guest may hold (APP_USER_ID: per app). */
int gd_id_limit(int type);

/* Priority when limits conflict and when choosing which profile survives a resolution:
 * higher wins. Verified identifiers outrank unverified ones of the same type. */
int gd_id_priority(int type, bool verified);

/* Identifier counts of a would-be merged profile, per type and app. */
typedef struct gd_id_count {
    int type, app, n;
} gd_id_count_t;

/* -1 when a profile with these combined counts respects every limit, else the index of the
 * first count that breaks its limit. */
int gd_merge_conflict(const gd_id_count_t *counts, size_t n);

/* The rule id a merge is recorded under: "anonymous_login" when the merged profile was
 * anonymous, else "<type>_match" for the identifier that proved it ("email_match"). */
const char *gd_merge_rule(int evidence_type, bool source_anonymous);

/* Identifier type name for messages ("email"). */
const char *gd_id_type_name(int type);

#endif
