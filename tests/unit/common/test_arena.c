/*
 * test_arena.c - the per-call arena: alignment, growth, large allocations, reset reuse,
 * cleanup order, printf, and the protobuf-c allocator; plus the error table of err.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "google/rpc/status.pb-c.h"
#include "hm/arena.h"
#include "hm/err.h"

static void test_alignment_and_growth(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 1024);
    for (int i = 1; i < 500; i++) {
        unsigned char *p = hm_arena_alloc(&a, (size_t)i);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, (size_t)i); /* ASan catches overlap/overflow */
    }
    void *big = hm_arena_alloc(&a, 100000);
    memset(big, 1, 100000);
    assert_true(a.total >= 100000);
    hm_arena_deinit(&a);
}

static void test_zalloc_and_strings(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    unsigned char *z = hm_arena_zalloc(&a, 64);
    for (int i = 0; i < 64; i++)
        assert_int_equal(z[i], 0);
    assert_string_equal(hm_arena_strdup(&a, "guest"), "guest");
    assert_null(hm_arena_strdup(&a, NULL));
    assert_string_equal(hm_arena_strndup(&a, "abcdef", 3), "abc");
    char longer[600];
    memset(longer, 'x', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    char *s = hm_arena_printf(&a, "%s-%d", longer, 42);
    assert_int_equal(strlen(s), sizeof(longer) - 1 + 3);
    assert_string_equal(s + sizeof(longer) - 1, "-42");
    hm_arena_deinit(&a);
}

static int order[4];
static int norder;

static void record(void *arg)
{
    order[norder++] = (int)(intptr_t)arg;
}

static void test_cleanups_run_lifo_on_reset(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    norder = 0;
    hm_arena_defer(&a, record, (void *)1);
    hm_arena_defer(&a, record, (void *)2);
    hm_arena_defer(&a, record, (void *)3);
    hm_arena_reset(&a);
    assert_int_equal(norder, 3);
    assert_int_equal(order[0], 3);
    assert_int_equal(order[2], 1);
    /* After reset the arena serves again and has no cleanups left. */
    hm_arena_alloc(&a, 10);
    hm_arena_reset(&a);
    assert_int_equal(norder, 3);
    hm_arena_defer(&a, record, (void *)4);
    hm_arena_deinit(&a);
    assert_int_equal(norder, 4);
    assert_int_equal(order[3], 4);
}

static void test_reset_reuses_first_block(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 4096);
    void *first = hm_arena_alloc(&a, 100);
    for (int i = 0; i < 100; i++)
        hm_arena_alloc(&a, 500);
    hm_arena_reset(&a);
    assert_int_equal(a.total, 0);
    void *again = hm_arena_alloc(&a, 100);
    assert_ptr_equal(first, again);
    hm_arena_deinit(&a);
}

static void test_protobuf_allocator(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    Google__Rpc__Status st;
    google__rpc__status__init(&st);
    st.code = 5;
    st.message = "guest not found";
    uint8_t buf[64];
    size_t n = google__rpc__status__pack(&st, buf);
    Google__Rpc__Status *out = google__rpc__status__unpack(hm_arena_pb(&a), n, buf);
    assert_non_null(out);
    assert_int_equal(out->code, 5);
    assert_string_equal(out->message, "guest not found");
    /* Garbage is refused, not crashed on. */
    uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_null(google__rpc__status__unpack(hm_arena_pb(&a), sizeof(junk), junk));
    hm_arena_deinit(&a); /* no free of `out`: the arena owns it (LeakSanitizer checks) */
}

static void test_error_table(void **state)
{
    (void)state;
    assert_int_equal(hm_err_code(HM_ENOTFOUND), HM_CODE_NOT_FOUND);
    assert_int_equal(hm_err_code(HM_EEXIST), HM_CODE_ALREADY_EXISTS);
    assert_int_equal(hm_err_code(HM_ECONFLICT), HM_CODE_ABORTED);
    assert_int_equal(hm_err_code(HM_EUNAVAIL), HM_CODE_UNAVAILABLE);
    assert_int_equal(hm_err_code(0), HM_CODE_OK);
    assert_string_equal(hm_err_name(HM_EINVAL), "HM_EINVAL");
    assert_string_equal(hm_err_reason(HM_ERATE), "RATE_LIMITED");
    /* Unknown codes are reported as internal errors, never as success. */
    assert_int_equal(hm_err_code(-999), HM_CODE_INTERNAL);
    assert_string_equal(hm_code_name(HM_CODE_FAILED_PRECONDITION), "FAILED_PRECONDITION");
    assert_string_equal(hm_code_name((hm_code_t)99), "UNKNOWN");
    hm_status_t st = hm_status_from_err(HM_ETIMEDOUT);
    assert_int_equal(st.code, HM_CODE_DEADLINE_EXCEEDED);
    assert_string_equal(st.reason, "DEADLINE_EXCEEDED");
    assert_true(hm_status_ok(hm_status_from_err(0)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment_and_growth),
        cmocka_unit_test(test_zalloc_and_strings),
        cmocka_unit_test(test_cleanups_run_lifo_on_reset),
        cmocka_unit_test(test_reset_reuses_first_block),
        cmocka_unit_test(test_protobuf_allocator),
        cmocka_unit_test(test_error_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
