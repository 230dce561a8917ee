/*
 * fuzz_identity.c - fuzzes guestd's identity rules (services/guestd/rules.c, the guestd_rules
 * library): gd_id_normalize and gd_id_blocked on any identifier a ResolveIdentity, LinkIdentity
 * or CreateGuest request can carry.
 *
 * Input: byte 0 the identifier type (0..7: the five types and invalid ones), byte 1 the app
 * (0..5), the rest the value (cut at its first NUL, as a string from protobuf-c would be).
 * Asserts:
 *   - the result is 0 with *out set, or -1 with a non-empty reason; an unknown type, an app on
 *     a type that has none (email, phone) and an app user id without its app are refused;
 *   - an accepted value is not blocked, and normalization is idempotent: normalizing *out
 *     again (same type and app) succeeds and gives *out back;
 *   - emails come out with one '@', text on both sides and no upper-case ASCII; phones as '+'
 *     and 3..20 digits; device, session and app user ids as 1..128 of [A-Za-z0-9._-], equal to
 *     the trimmed input;
 *   - gd_id_blocked is a pure function of the text (same answer twice), and a blocked input is
 *     never accepted as it is.
 */
#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "rules.h"

static bool token_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int type = data[0] % 8;
    int app = data[1] % 6;
    size_t n = strnlen((const char *)data + 2, size - 2);
    char *v = malloc(n + 1);
    memcpy(v, data + 2, n);
    v[n] = '\0';

    hm_arena_t arena;
    hm_arena_init(&arena, 0);
    bool blocked = gd_id_blocked(v);
    FUZZ_CHECK(gd_id_blocked(v) == blocked);
    char *out = NULL;
    const char *why = NULL;
    int rc = gd_id_normalize(&arena, type, app, v, &out, &why);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        FUZZ_CHECK(why != NULL && why[0] != '\0');
    } else {
        FUZZ_CHECK(type >= GD_ID_EMAIL && type < GD_ID_NTYPES);
        FUZZ_CHECK(!(type == GD_ID_APP_USER && app == 0));
        FUZZ_CHECK(!((type == GD_ID_EMAIL || type == GD_ID_PHONE) && app != 0));
        FUZZ_CHECK(out != NULL);
        FUZZ_CHECK(!gd_id_blocked(out));
        FUZZ_CHECK(!blocked || strcmp(out, v) != 0);
        size_t m = strlen(out);
        if (type == GD_ID_EMAIL) {
            const char *at = strchr(out, '@');
            FUZZ_CHECK(at != NULL && at != out && at[1] != '\0' && strchr(at + 1, '@') == NULL);
            for (size_t i = 0; i < m; i++)
                FUZZ_CHECK(!(out[i] >= 'A' && out[i] <= 'Z'));
        } else if (type == GD_ID_PHONE) {
            FUZZ_CHECK(out[0] == '+' && m >= 4 && m <= 21);
            for (size_t i = 1; i < m; i++)
                FUZZ_CHECK(out[i] >= '0' && out[i] <= '9');
        } else {
            FUZZ_CHECK(m >= 1 && m <= 128);
            for (size_t i = 0; i < m; i++)
                FUZZ_CHECK(token_char(out[i]));
            FUZZ_CHECK(strstr(v, out) != NULL); /* the trimmed input itself */
        }
        char *again = NULL;
        const char *why2 = NULL;
        FUZZ_CHECK(gd_id_normalize(&arena, type, app, out, &again, &why2) == 0);
        FUZZ_CHECK(strcmp(again, out) == 0);
    }
    hm_arena_deinit(&arena);
    free(v);
    return 0;
}
