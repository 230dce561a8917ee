/*
 * rules.c - guestd's identity rules (see rules.h). Blocked values and limits follow what
 * customer-data platforms do: placeholders never join profiles, one user id per app, a
 * bounded number of emails and phones, and the strongest identifier wins a conflict.
 */
#include "rules.h"

#include <ctype.h>
#include <string.h>

#include "hm/crypto.h"
#include "hm/id.h"

static const char *const blocked[] = {
    "null",
    "nil",
    "none",
    "undefined",
    "anonymous",
    "unknown",
    "n/a",
    "na",
    "-",
    "[]",
    "{}",
    "test",
    "test@test.com",
    "user@example.com",
    "noemail",
    "no-email",
    "invalid",
    "(null)",
    "nan",
    "0",
};

bool gd_id_blocked(const char *value)
{
    const char *s = value ? value : "";
    size_t n = strlen(s);
    hm_str_trim(&s, &n);
    if (n == 0)
        return true;
    char low[64];
    if (n < sizeof low) {
        for (size_t i = 0; i < n; i++)
            low[i] = (char)tolower((unsigned char)s[i]);
        low[n] = '\0';
        for (size_t i = 0; i < sizeof blocked / sizeof *blocked; i++)
            if (strcmp(low, blocked[i]) == 0)
                return true;
    }
    /* Only zeros and separators ("0000", "00000000-0000-...", "+000 000"): placeholders. */
    bool zeros = true;
    for (size_t i = 0; i < n && zeros; i++)
        zeros = s[i] == '0' || s[i] == '-' || s[i] == ' ' || s[i] == '+' || s[i] == ':';
    if (zeros)
        return true;
    /* One character repeated ("aaaaaa", "xxxxxxxx"). */
    bool same = n >= 4;
    for (size_t i = 1; i < n && same; i++)
        same = s[i] == s[0];
    return same;
}

int gd_id_normalize(hm_arena_t *a, int type, int app, const char *value, char **out,
                    const char **why)
{
    const char *s = value ? value : "";
    size_t n = strlen(s);
    hm_str_trim(&s, &n);
    char *v = hm_arena_alloc(a, n + 1);
    memcpy(v, s, n);
    v[n] = '\0';
    if (type <= 0 || type >= GD_ID_NTYPES) {
        *why = "unknown identifier type";
        return -1;
    }
    if (gd_id_blocked(v)) {
        *why = "a placeholder value that cannot identify anyone";
        return -1;
    }
    if (type == GD_ID_APP_USER && app == 0) {
        *why = "an app user id needs its app";
        return -1;
    }
    if (type != GD_ID_APP_USER && app != 0 && type != GD_ID_DEVICE && type != GD_ID_SESSION) {
        *why = "only app user ids, devices and sessions belong to an app";
        return -1;
    }
    switch (type) {
    case GD_ID_EMAIL:
        if (n > 320 || hm_crypto_normalize_email(a, v, out) != 0) {
            *why = "not a valid email address";
            return -1;
        }
        break;
    case GD_ID_PHONE:
        if (hm_crypto_normalize_phone(a, v, out) != 0 || (*out)[0] != '+') {
            *why = "not a phone number in international form (+<country><number>)";
            return -1;
        }
        break;
    default:
        if (!hm_str_is_token(v, n, 128)) {
            *why = "must be 1 to 128 letters, digits or ._-";
            return -1;
        }
        *out = v;
        break;
    }
    if (gd_id_blocked(*out)) {
        *why = "a placeholder value that cannot identify anyone";
        return -1;
    }
    return 0;
}

int gd_id_limit(int type)
{
    switch (type) {
    case GD_ID_EMAIL:
        return 5;
    case GD_ID_PHONE:
        return 3;
    case GD_ID_DEVICE:
        return 10;
    case GD_ID_SESSION:
        return 100;
    case GD_ID_APP_USER:
        return 1;
    default:
        return 0;
    }
}

int gd_id_priority(int type, bool verified)
{
    switch (type) {
    case GD_ID_APP_USER:
        return 100;
    case GD_ID_EMAIL:
        return verified ? 90 : 70;
    case GD_ID_PHONE:
        return verified ? 85 : 65;
    case GD_ID_DEVICE:
        return 40;
    case GD_ID_SESSION:
        return 10;
    default:
        return 0;
    }
}

int gd_merge_conflict(const gd_id_count_t *counts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (counts[i].n > gd_id_limit(counts[i].type))
            return (int)i;
    return -1;
}

const char *gd_id_type_name(int type)
{
    static const char *const names[] = {"unspecified",       "email",      "phone", "device_id",
                                        "anonymous_session", "app_user_id"};
    return type > 0 && type < GD_ID_NTYPES ? names[type] : "unspecified";
}

const char *gd_merge_rule(int evidence_type, bool source_anonymous)
{
    static const char *const rules[] = {"manual",       "email_match",   "phone_match",
                                        "device_match", "session_match", "app_user_id_match"};
    if (source_anonymous)
        return "anonymous_login";
    return evidence_type > 0 && evidence_type < GD_ID_NTYPES ? rules[evidence_type] : "manual";
}
