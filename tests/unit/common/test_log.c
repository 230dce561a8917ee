/*
 * test_log.c - unit tests of common/src/log.c: every line is one valid JSON object on one
 * line, with the documented members, escaping, UTF-8 repair, truncation and call context.
 * Lines are captured by pointing fd 2 at a temporary file and parsed back with jansson.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "hm/err.h"
#include "hm/log.h"

/* ---- capturing stderr ---- */

static int saved_fd2 = -1;
static int cap_fd = -1;

static void capture_begin(void)
{
    char path[] = "/tmp/hm_test_log_XXXXXX";

    cap_fd = mkstemp(path);
    assert_true(cap_fd >= 0);
    unlink(path);
    fflush(stderr);
    saved_fd2 = dup(STDERR_FILENO);
    assert_true(saved_fd2 >= 0);
    assert_int_equal(dup2(cap_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Restores fd 2 and returns what was written (malloc'd, NUL-terminated). */
static char *capture_end(size_t *len)
{
    off_t size;
    char *buf;

    dup2(saved_fd2, STDERR_FILENO);
    close(saved_fd2);
    size = lseek(cap_fd, 0, SEEK_END);
    assert_true(size >= 0);
    buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(pread(cap_fd, buf, (size_t)size, 0), size);
    buf[size] = '\0';
    close(cap_fd);
    if (len != NULL)
        *len = (size_t)size;
    return buf;
}

/* The single line in buf, parsed; asserts it is exactly one newline-terminated JSON object. */
static json_t *parse_one(const char *buf, size_t len)
{
    json_error_t jerr;
    json_t *j;

    assert_true(len > 0);
    assert_true(len <= 8192);
    assert_int_equal(buf[len - 1], '\n');
    assert_ptr_equal(strchr(buf, '\n'), buf + len - 1);
    j = json_loadb(buf, len - 1, 0, &jerr);
    if (j == NULL)
        fail_msg("not JSON (%s): %.200s", jerr.text, buf);
    assert_true(json_is_object(j));
    return j;
}

static const char *member(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);

    return v != NULL && json_is_string(v) ? json_string_value(v) : NULL;
}

static int setup(void **state)
{
    (void)state;
    hm_log_init("testd", HM_LOG_DEBUG);
    hm_log_set_ctx(NULL);
    return 0;
}

/* ---- tests ---- */

static void test_basic_line(void **state)
{
    regex_t re;
    size_t len;
    char *buf;
    json_t *j;

    (void)state;
    capture_begin();
    HM_INFO("hello %d", 42);
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "level"), "info");
    assert_string_equal(member(j, "daemon"), "testd");
    assert_string_equal(member(j, "msg"), "hello 42");
    assert_null(json_object_get(j, "request_id"));
    assert_null(json_object_get(j, "truncated"));
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    assert_int_equal(regexec(&re, member(j, "ts"), 0, NULL, 0), 0);
    /* Members come in the documented order: ts, level, daemon, msg. */
    assert_true(strstr(buf, "{\"ts\":\"") == buf);
    assert_true(strstr(buf, "\"level\"") < strstr(buf, "\"daemon\""));
    assert_true(strstr(buf, "\"daemon\"") < strstr(buf, "\"msg\""));
    regfree(&re);
    json_decref(j);
    free(buf);
}

static void test_levels(void **state)
{
    size_t len;
    char *buf;
    json_t *j;

    (void)state;
    hm_log_init("testd", HM_LOG_WARN);
    capture_begin();
    HM_DEBUG("no");
    HM_INFO("no");
    hm_log_write(HM_LOG_INFO, NULL, "not even directly");
    HM_ERROR("yes");
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "level"), "error");
    assert_string_equal(member(j, "msg"), "yes");
    json_decref(j);
    free(buf);
    hm_log_init("testd", HM_LOG_DEBUG);

    capture_begin();
    HM_DEBUG("d");
    HM_WARN("w");
    buf = capture_end(&len);
    assert_non_null(strstr(buf, "\"level\":\"debug\""));
    assert_non_null(strstr(buf, "\"level\":\"warn\""));
    free(buf);
}

static void test_level_parse(void **state)
{
    hm_log_level_t l = HM_LOG_ERROR;

    (void)state;
    assert_int_equal(hm_log_level_parse("debug", &l), 0);
    assert_int_equal(l, HM_LOG_DEBUG);
    assert_int_equal(hm_log_level_parse("INFO", &l), 0);
    assert_int_equal(l, HM_LOG_INFO);
    assert_int_equal(hm_log_level_parse("warn", &l), 0);
    assert_int_equal(l, HM_LOG_WARN);
    assert_int_equal(hm_log_level_parse("error", &l), 0);
    assert_int_equal(l, HM_LOG_ERROR);
    assert_int_equal(hm_log_level_parse("verbose", &l), HM_EINVAL);
    assert_int_equal(hm_log_level_parse("", &l), HM_EINVAL);
    assert_int_equal(hm_log_level_parse(NULL, &l), HM_EINVAL);
}

static void *log_without_ctx(void *arg)
{
    (void)arg;
    HM_INFO("other thread");
    return NULL;
}

static void test_context(void **state)
{
    hm_log_ctx_t ctx = {"req-1", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"};
    pthread_t th;
    size_t len;
    char *buf, *nl;
    json_t *j;

    (void)state;
    hm_log_set_ctx(&ctx);
    assert_ptr_equal(hm_log_get_ctx(), &ctx);
    capture_begin();
    HM_INFO("in call");
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "request_id"), "req-1");
    assert_string_equal(member(j, "trace_id"), "0af7651916cd43dd8448eb211c80319c");
    assert_string_equal(member(j, "span_id"), "b7ad6b7169203331");
    json_decref(j);
    free(buf);

    /* The context is per thread. */
    capture_begin();
    assert_int_equal(pthread_create(&th, NULL, log_without_ctx, NULL), 0);
    pthread_join(th, NULL);
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
    free(buf);

    /* Partial context; then cleared. */
    ctx.trace_id = NULL;
    ctx.span_id = NULL;
    capture_begin();
    HM_INFO("partial");
    hm_log_set_ctx(NULL);
    HM_INFO("cleared");
    buf = capture_end(&len);
    nl = strchr(buf, '\n');
    j = parse_one(buf, (size_t)(nl - buf) + 1);
    assert_string_equal(member(j, "request_id"), "req-1");
    assert_null(json_object_get(j, "trace_id"));
    json_decref(j);
    j = parse_one(nl + 1, len - (size_t)(nl + 1 - buf));
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
    free(buf);
    assert_null(hm_log_get_ctx());
}

static void check_msg_roundtrip(const char *msg, const char *want)
{
    size_t len;
    char *buf;
    json_t *j;

    capture_begin();
    HM_INFO("%s", msg);
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "msg"), want);
    json_decref(j);
    free(buf);
}

static void test_escaping(void **state)
{
    (void)state;
    check_msg_roundtrip("quote \" backslash \\ slash /", "quote \" backslash \\ slash /");
    check_msg_roundtrip("line\nbreak\r\ttab\b\f", "line\nbreak\r\ttab\b\f");
    check_msg_roundtrip("ctl \x01\x1f del \x7f", "ctl \x01\x1f del \x7f");
    check_msg_roundtrip("injected\n{\"level\":\"error\"}", "injected\n{\"level\":\"error\"}");
    /* Valid UTF-8 passes through unchanged. */
    check_msg_roundtrip("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80",
                        "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    /* Each bad byte becomes U+FFFD (EF BF BD once decoded). */
    check_msg_roundtrip("a\xff"
                        "b",
                        "a\xef\xbf\xbd"
                        "b");
    check_msg_roundtrip("cut \xc3", "cut \xef\xbf\xbd");
    check_msg_roundtrip("stray \x80", "stray \xef\xbf\xbd");
    check_msg_roundtrip("overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd");
    check_msg_roundtrip("surrogate \xed\xa0\x80", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    check_msg_roundtrip("too big \xf4\x90\x80\x80",
                        "too big \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

/*
 * Logs a message made of `count` copies of `unit` and checks the line stays valid, carrying a
 * prefix of the message (made of whole units when `whole`).
 */
static void check_truncation(const char *unit, size_t count, bool whole)
{
    size_t ulen = strlen(unit), len;
    char *msg = malloc(ulen * count + 1), *buf;
    const char *got;
    json_t *j;

    assert_non_null(msg);
    for (size_t i = 0; i < count; i++)
        memcpy(msg + i * ulen, unit, ulen);
    msg[ulen * count] = '\0';
    capture_begin();
    HM_WARN("%s", msg);
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    got = member(j, "msg");
    assert_non_null(got);
    /* A prefix of the original, and most of the line. */
    if (whole)
        assert_int_equal(strlen(got) % ulen, 0);
    assert_memory_equal(got, msg, strlen(got));
    assert_true(len > 8192 - 64);
    json_decref(j);
    free(buf);
    free(msg);
}

static void test_truncation(void **state)
{
    (void)state;
    check_truncation("x", 20000, true);
    check_truncation("\"", 6000, true);               /* 2-byte escapes */
    check_truncation("\x01", 3000, true);             /* 6-byte escapes */
    check_truncation("\xf0\x9f\x98\x80", 3000, true); /* 4-byte characters */
    check_truncation("\xe2\x82\xac\\", 3000, false);  /* mixed */
}

static void test_fields(void **state)
{
    size_t len, flen = 9000;
    char *buf, *big;
    json_t *j;

    (void)state;
    capture_begin();
    hm_log_write(HM_LOG_INFO, "\"method\":\"/a.B/C\",\"code\":0", "call %s", "done");
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "msg"), "call done");
    assert_string_equal(member(j, "method"), "/a.B/C");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 0);
    json_decref(j);
    free(buf);

    /* Fields too long for a line are dropped whole, never cut. */
    big = malloc(flen + 1);
    assert_non_null(big);
    memcpy(big, "\"k\":\"", 5);
    memset(big + 5, 'v', flen - 6);
    big[flen - 1] = '"';
    big[flen] = '\0';
    capture_begin();
    hm_log_write(HM_LOG_INFO, big, "with big fields");
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_string_equal(member(j, "msg"), "with big fields");
    assert_null(json_object_get(j, "k"));
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
    free(buf);
    free(big);

    /* A raw newline in fields cannot split the line. */
    capture_begin();
    hm_log_write(HM_LOG_INFO, "\"a\":1,\n\"b\":2", "nl");
    buf = capture_end(&len);
    j = parse_one(buf, len);
    assert_int_equal(json_integer_value(json_object_get(j, "b")), 2);
    json_decref(j);
    free(buf);
}

static void test_json_escape(void **state)
{
    char buf[16];
    unsigned n;

    (void)state;
    n = hm_json_escape(buf, sizeof buf, 0, "a\"b");
    assert_int_equal(n, 4);
    assert_string_equal(buf, "a\\\"b");
    n = hm_json_escape(buf, sizeof buf, n, "\n");
    assert_string_equal(buf, "a\\\"b\\n");
    assert_int_equal(n, 6);

    /* cap 5: "ab" + "\\\"" fits (4 bytes + NUL); 'c' does not. */
    n = hm_json_escape(buf, 5, 0, "ab\"cd");
    assert_int_equal(n, 4);
    assert_string_equal(buf, "ab\\\"");
    /* An escape never splits: cap 4 leaves "ab". */
    n = hm_json_escape(buf, 4, 0, "ab\"cd");
    assert_int_equal(n, 2);
    assert_string_equal(buf, "ab");
    /* Nor does a multi-byte character. */
    n = hm_json_escape(buf, 4, 0, "a\xe2\x82\xac");
    assert_int_equal(n, 1);
    assert_string_equal(buf, "a");
    /* \u escapes for other control characters. */
    n = hm_json_escape(buf, sizeof buf, 0, "\x02");
    assert_string_equal(buf, "\\u0002");
    /* NULL is empty; a full buffer stays terminated. */
    n = hm_json_escape(buf, sizeof buf, 0, NULL);
    assert_int_equal(n, 0);
    assert_string_equal(buf, "");
    memset(buf, 'z', sizeof buf);
    n = hm_json_escape(buf, sizeof buf, 0, "0123456789abcdefghij");
    assert_int_equal(n, 15);
    assert_int_equal(buf[15], '\0');
}

static void test_errno_preserved(void **state)
{
    char *buf;

    (void)state;
    capture_begin();
    errno = ENOENT;
    HM_INFO("keeps errno");
    assert_int_equal(errno, ENOENT);
    buf = capture_end(NULL);
    free(buf);
}

#define THREADS 4
#define LINES   300

static void *log_many(void *arg)
{
    hm_log_ctx_t ctx = {"r", NULL, NULL};
    char id[32];

    snprintf(id, sizeof id, "thread-%d", (int)(intptr_t)arg);
    ctx.request_id = id;
    hm_log_set_ctx(&ctx);
    for (int i = 0; i < LINES; i++)
        HM_INFO("line %d from %s with some padding to make it longer: %0200d", i, id, i);
    hm_log_set_ctx(NULL);
    return NULL;
}

static void test_threads(void **state)
{
    pthread_t th[THREADS];
    size_t len, lines = 0;
    char *buf, *p;

    (void)state;
    capture_begin();
    for (intptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, log_many, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    buf = capture_end(&len);
    for (p = buf; *p != '\0';) {
        char *nl = strchr(p, '\n');
        json_t *j;
        char want[32];

        assert_non_null(nl);
        j = parse_one(p, (size_t)(nl - p) + 1);
        /* The context in each line is its own thread's. */
        snprintf(want, sizeof want, "from %s ", member(j, "request_id"));
        assert_non_null(strstr(member(j, "msg"), want));
        json_decref(j);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, THREADS * LINES);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_basic_line, setup),
        cmocka_unit_test_setup(test_levels, setup),
        cmocka_unit_test_setup(test_level_parse, setup),
        cmocka_unit_test_setup(test_context, setup),
        cmocka_unit_test_setup(test_escaping, setup),
        cmocka_unit_test_setup(test_invalid_utf8, setup),
        cmocka_unit_test_setup(test_truncation, setup),
        cmocka_unit_test_setup(test_fields, setup),
        cmocka_unit_test_setup(test_json_escape, setup),
        cmocka_unit_test_setup(test_errno_preserved, setup),
        cmocka_unit_test_setup(test_threads, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
