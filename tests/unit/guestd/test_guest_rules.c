/*
 * test_guest_rules.c - guestd's identity rules, table-driven: blocked placeholder values,
 * normalization per type, per-type limits and merge conflicts, priorities, and rule ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "hm/arena.h"
#include "rules.h"

static void test_blocked_values(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        bool blocked;
    } cases[] = {
        {"", true},
        {"   ", true},
        {"null", true},
        {"NULL", true},
        {" Undefined ", true},
        {"anonymous", true},
        {"n/a", true},
        {"0", true},
        {"0000", true},
        {"00000000-0000-0000-0000-000000000000", true},
        {"+00 000 000", true},
        {"aaaaaaa", true},
        {"xxxx", true},
        {"test@test.com", true},
        {"user@example.com", true},
        {"ana@example.com", false},
        {"+4915112345678", false},
        {"sess-1f2e3d", false},
        {"abc", false}, /* short repeats are real ids ("aaa" is blocked only from 4) */
        {"0001", false},
        {"nullable", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (gd_id_blocked(cases[i].value) != cases[i].blocked)
            fail_msg("\"%s\": expected %s", cases[i].value,
                     cases[i].blocked ? "blocked" : "allowed");
    }
}

static void test_normalize(void **state)
{
    (void)state;
    static const struct {
        int type, app;
        const char *in, *out; /* out NULL: refused */
    } cases[] = {
        {GD_ID_EMAIL, 0, "  Ana.B@Example.ORG ", "ana.b@example.org"},
        {GD_ID_EMAIL, 0, "not-an-email", NULL},
        {GD_ID_EMAIL, 0, "null", NULL},
        {GD_ID_EMAIL, 1, "ana@example.org", NULL}, /* emails belong to no app */
        {GD_ID_PHONE, 0, "+44 (20) 7946-0958", "+442079460958"},
        {GD_ID_PHONE, 0, "07946 0958", NULL}, /* not international */
        {GD_ID_DEVICE, 0, "dev-123.abc_X", "dev-123.abc_X"},
        {GD_ID_DEVICE, 0, "has space", NULL},
        {GD_ID_SESSION, 2, " sess-9 ", "sess-9"},
        {GD_ID_SESSION, 0, "undefined", NULL},
        {GD_ID_APP_USER, 1, "u-42", "u-42"},
        {GD_ID_APP_USER, 0, "u-42", NULL}, /* needs its app */
        {0, 0, "x", NULL},
        {9, 0, "x", NULL},
    };
    hm_arena_t a;
    hm_arena_init(&a, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out = NULL;
        const char *why = NULL;
        int rc = gd_id_normalize(&a, cases[i].type, cases[i].app, cases[i].in, &out, &why);
        if (cases[i].out == NULL) {
            if (rc == 0)
                fail_msg("case %zu \"%s\": accepted as \"%s\"", i, cases[i].in, out);
            assert_non_null(why);
            assert_true(strlen(why) > 5);
        } else {
            if (rc != 0)
                fail_msg("case %zu \"%s\": refused (%s)", i, cases[i].in, why);
            assert_string_equal(out, cases[i].out);
        }
    }
    hm_arena_deinit(&a);
}

static void test_limits_and_conflicts(void **state)
{
    (void)state;
    assert_int_equal(gd_id_limit(GD_ID_EMAIL), 5);
    assert_int_equal(gd_id_limit(GD_ID_APP_USER), 1);
    static const struct {
        gd_id_count_t counts[3];
        size_t n;
        int conflict;
    } cases[] = {
        {{{GD_ID_EMAIL, 0, 5}, {GD_ID_APP_USER, 1, 1}}, 2, -1},
        {{{GD_ID_EMAIL, 0, 6}}, 1, 0},
        {{{GD_ID_EMAIL, 0, 2}, {GD_ID_APP_USER, 1, 2}}, 2, 1},     /* two accounts of one app */
        {{{GD_ID_APP_USER, 1, 1}, {GD_ID_APP_USER, 2, 1}}, 2, -1}, /* one per app */
        {{{GD_ID_PHONE, 0, 3}, {GD_ID_SESSION, 0, 100}, {GD_ID_DEVICE, 0, 11}}, 3, 2},
        {{{GD_ID_SESSION, 0, 101}}, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (gd_merge_conflict(cases[i].counts, cases[i].n) != cases[i].conflict)
            fail_msg("case %zu: conflict %d, expected %d", i,
                     gd_merge_conflict(cases[i].counts, cases[i].n), cases[i].conflict);
}

static void test_priorities_and_rules(void **state)
{
    (void)state;
    /* app user id > verified email > verified phone > email > phone > device > session */
    const int order[][2] = {{GD_ID_APP_USER, 0}, {GD_ID_EMAIL, 1}, {GD_ID_PHONE, 1},
                            {GD_ID_EMAIL, 0},    {GD_ID_PHONE, 0}, {GD_ID_DEVICE, 0},
                            {GD_ID_SESSION, 0}};
    for (size_t i = 1; i < sizeof order / sizeof *order; i++)
        assert_true(gd_id_priority(order[i - 1][0], order[i - 1][1]) >
                    gd_id_priority(order[i][0], order[i][1]));
    assert_string_equal(gd_merge_rule(GD_ID_EMAIL, true), "anonymous_login");
    assert_string_equal(gd_merge_rule(GD_ID_EMAIL, false), "email_match");
    assert_string_equal(gd_merge_rule(GD_ID_APP_USER, false), "app_user_id_match");
    assert_string_equal(gd_merge_rule(0, false), "manual");
    assert_string_equal(gd_id_type_name(GD_ID_SESSION), "anonymous_session");
    assert_string_equal(gd_id_type_name(42), "unspecified");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocked_values),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_limits_and_conflicts),
        cmocka_unit_test(test_priorities_and_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
