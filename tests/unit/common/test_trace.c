/*
 * test_trace.c - tests of common/src/trace.c: W3C traceparent parsing and formatting (the
 * spec's valid and invalid cases), tracestate bounds, span ids and parent links, parent-based
 * sampling, attributes and gRPC conventions, configuration checks, a full queue that drops and
 * counts without blocking, and export over OTLP/HTTP JSON to the stand-in receiver
 * (tools/standins/otlp_receiver.py, started by the test with /usr/bin/python3): the JSON on
 * the wire, retries on 503 honouring Retry-After, no retry on 400, flush at shutdown.
 *
 * The source root comes from HM_TEST_SRC_ROOT (environment, else the compile-time define
 * meson passes). Without python3 or the receiver the export tests are skipped and the
 * program exits 77 (meson's "skipped") once everything else has passed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "hm/config.h"
#include "hm/err.h"
#include "hm/log.h"
#include "hm/server.h"
#include "hm/trace.h"

#define PYTHON      "/usr/bin/python3"
#define W3C_TRACE   "4bf92f3577b34da6a3ce929d0e0e4736"
#define W3C_PARENT  "00f067aa0ba902b7"
#define W3C_EXAMPLE "00-" W3C_TRACE "-" W3C_PARENT "-01"

extern char **environ;

static bool receiver_missing; /* set when an export test had to be skipped */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool is_lc_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* ---- traceparent ---- */

static void test_parse_valid(void **state)
{
    (void)state;
    hm_trace_ctx_t ctx;

    assert_int_equal(hm_trace_parse_traceparent(W3C_EXAMPLE, &ctx), 0);
    assert_string_equal(ctx.trace_id, W3C_TRACE);
    assert_string_equal(ctx.parent_id, W3C_PARENT);
    assert_int_equal(ctx.flags, 0x01);

    assert_int_equal(hm_trace_parse_traceparent("00-" W3C_TRACE "-" W3C_PARENT "-00", &ctx), 0);
    assert_int_equal(ctx.flags, 0x00);
    /* Unknown flags are accepted (and not sent on, see test_format). */
    assert_int_equal(hm_trace_parse_traceparent("00-" W3C_TRACE "-" W3C_PARENT "-ff", &ctx), 0);
    assert_int_equal(ctx.flags, 0xff);
}

static void test_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* upper-case hex anywhere */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" W3C_PARENT "-01",
        "00-" W3C_TRACE "-00F067AA0BA902B7-01",
        "00-" W3C_TRACE "-" W3C_PARENT "-0A",
        "0A-" W3C_TRACE "-" W3C_PARENT "-01",
        /* all-zero ids */
        "00-00000000000000000000000000000000-" W3C_PARENT "-01",
        "00-" W3C_TRACE "-0000000000000000-01",
        /* version ff is forbidden, even well-formed */
        "ff-" W3C_TRACE "-" W3C_PARENT "-01",
        /* version 00 is exactly 55 characters */
        "00-" W3C_TRACE "-" W3C_PARENT "-0",
        "00-" W3C_TRACE "-" W3C_PARENT "-011",
        "00-" W3C_TRACE "-" W3C_PARENT "-01-",
        "00-" W3C_TRACE "-" W3C_PARENT "-01-extra",
        "00-" W3C_TRACE "0-" W3C_PARENT "-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-" W3C_PARENT "-01",
        /* separators and digits */
        "00_" W3C_TRACE "-" W3C_PARENT "-01",
        "00-" W3C_TRACE "_" W3C_PARENT "-01",
        "00-" W3C_TRACE "-" W3C_PARENT "_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" W3C_PARENT "-01",
        "00-" W3C_TRACE "-00f067aa0ba902bz-01",
        "00-" W3C_TRACE "-" W3C_PARENT "-0g",
        "0g-" W3C_TRACE "-" W3C_PARENT "-01",
        " 00-" W3C_TRACE "-" W3C_PARENT "-01",
        /* a later version still needs 55 characters, then only '-' */
        "cc-" W3C_TRACE "-" W3C_PARENT "-0",
        "cc-" W3C_TRACE "-" W3C_PARENT "-01what",
        "cc-" W3C_TRACE "-" W3C_PARENT "-01.what",
        "",
        "00",
    };
    hm_trace_ctx_t ctx;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (hm_trace_parse_traceparent(bad[i], &ctx) != HM_EINVAL)
            fail_msg("accepted invalid traceparent \"%s\"", bad[i]);
    }
    assert_int_equal(hm_trace_parse_traceparent(NULL, &ctx), HM_EINVAL);
}

static void test_parse_future_version(void **state)
{
    (void)state;
    hm_trace_ctx_t ctx;

    /* Exactly 55 characters with a higher version: parsed like 00. */
    assert_int_equal(hm_trace_parse_traceparent("01-" W3C_TRACE "-" W3C_PARENT "-01", &ctx), 0);
    assert_string_equal(ctx.trace_id, W3C_TRACE);
    /* Longer, with the next field after a '-' (the spec's own example). */
    memset(&ctx, 0, sizeof ctx);
    assert_int_equal(hm_trace_parse_traceparent(
                         "cc-" W3C_TRACE "-" W3C_PARENT "-01-what-the-future-will-be-like", &ctx),
                     0);
    assert_string_equal(ctx.trace_id, W3C_TRACE);
    assert_string_equal(ctx.parent_id, W3C_PARENT);
    assert_int_equal(ctx.flags, 0x01);
}

static void test_format(void **state)
{
    (void)state;
    hm_trace_ctx_t ctx;
    char out[HM_TRACEPARENT_LEN + 1];

    assert_int_equal(hm_trace_parse_traceparent(W3C_EXAMPLE, &ctx), 0);
    hm_trace_format_traceparent(&ctx, out);
    assert_string_equal(out, W3C_EXAMPLE);
    /* Reserved flags are not propagated; a later version goes out as 00. */
    assert_int_equal(hm_trace_parse_traceparent("cc-" W3C_TRACE "-" W3C_PARENT "-fe-x", &ctx), 0);
    hm_trace_format_traceparent(&ctx, out);
    assert_string_equal(out, "00-" W3C_TRACE "-" W3C_PARENT "-00");
}

/* ---- spans ---- */

static void test_server_span_continues_the_trace(void **state)
{
    (void)state;
    hm_span_t s;
    char child[HM_TRACEPARENT_LEN + 1];

    hm_trace_start_server(NULL, W3C_EXAMPLE, "congo=t61rcWkgMzE", "svc/M", &s);
    assert_string_equal(s.trace_id, W3C_TRACE);
    assert_string_equal(s.parent_span_id, W3C_PARENT);
    assert_true(is_lc_hex(s.span_id, HM_SPAN_ID_LEN));
    assert_string_not_equal(s.span_id, W3C_PARENT);
    assert_true(hm_span_sampled(&s));
    assert_int_equal(s.kind, HM_SPAN_SERVER);
    assert_string_equal(s.name, "svc/M");
    assert_string_equal(hm_span_tracestate(&s), "congo=t61rcWkgMzE");

    /* The outgoing call: a client span, child of the server span, same trace and state. */
    hm_span_t c;
    hm_trace_start_client(NULL, &s, "peer/Call", &c);
    assert_int_equal(c.kind, HM_SPAN_CLIENT);
    assert_string_equal(c.trace_id, W3C_TRACE);
    assert_string_equal(c.parent_span_id, s.span_id);
    assert_string_not_equal(c.span_id, s.span_id);
    assert_string_equal(hm_span_tracestate(&c), "congo=t61rcWkgMzE");
    hm_trace_child_traceparent(&c, child);
    char want[HM_TRACEPARENT_LEN + 1];
    snprintf(want, sizeof want, "00-%s-%s-01", W3C_TRACE, c.span_id);
    assert_string_equal(child, want);

    hm_trace_end(NULL, &c);
    hm_trace_end(NULL, &s);
    assert_true(s.ended);
    assert_true(s.end_ns >= s.start_ns);
    assert_true(s.start_ns > 1600000000LL * 1000000000LL); /* unix nanos, not monotonic */
}

static void test_invalid_parent_starts_a_new_trace(void **state)
{
    (void)state;
    hm_span_t s;

    hm_trace_start_server(NULL, "00-" W3C_TRACE "-0000000000000000-01", "congo=x", "m", &s);
    assert_true(is_lc_hex(s.trace_id, HM_TRACE_ID_LEN));
    assert_string_not_equal(s.trace_id, W3C_TRACE);
    assert_string_equal(s.parent_span_id, "");
    /* tracestate is never taken without a valid traceparent */
    assert_null(hm_span_tracestate(&s));

    hm_trace_start_server(NULL, NULL, NULL, NULL, &s);
    assert_true(is_lc_hex(s.trace_id, HM_TRACE_ID_LEN));
    assert_string_equal(s.parent_span_id, "");
    assert_string_equal(s.name, "");
    assert_true(hm_span_sampled(&s)); /* no tracer: ratio 1 */
}

static void test_tracestate_bounds(void **state)
{
    (void)state;
    char ts[HM_TRACESTATE_MAX + 2];
    hm_span_t s;

    memset(ts, 'a', HM_TRACESTATE_MAX);
    memcpy(ts, "k=", 2);
    ts[HM_TRACESTATE_MAX] = '\0';
    hm_trace_start_server(NULL, W3C_EXAMPLE, ts, "m", &s);
    assert_non_null(hm_span_tracestate(&s));
    assert_int_equal(strlen(hm_span_tracestate(&s)), HM_TRACESTATE_MAX);

    ts[HM_TRACESTATE_MAX] = 'a';
    ts[HM_TRACESTATE_MAX + 1] = '\0';
    hm_trace_start_server(NULL, W3C_EXAMPLE, ts, "m", &s);
    assert_null(hm_span_tracestate(&s));
    assert_string_equal(s.trace_id, W3C_TRACE); /* the context itself is kept */

    hm_trace_start_server(NULL, W3C_EXAMPLE, "k=v\r\nx: y", "m", &s);
    assert_null(hm_span_tracestate(&s)); /* would break the outgoing metadata */
    hm_trace_start_server(NULL, W3C_EXAMPLE, "", "m", &s);
    assert_null(hm_span_tracestate(&s));
}

static void test_ids_are_distinct(void **state)
{
    (void)state;
    enum { N = 2000 };
    static char ids[N][HM_SPAN_ID_LEN + 1];
    static char traces[N][HM_TRACE_ID_LEN + 1];
    hm_span_t s;

    for (int i = 0; i < N; i++) {
        hm_trace_start_server(NULL, NULL, NULL, "m", &s);
        assert_true(is_lc_hex(s.span_id, HM_SPAN_ID_LEN));
        memcpy(ids[i], s.span_id, sizeof ids[i]);
        memcpy(traces[i], s.trace_id, sizeof traces[i]);
    }
    for (int i = 0; i < N; i++) {
        for (int j = i + 1; j < N; j++) {
            assert_string_not_equal(ids[i], ids[j]);
            assert_string_not_equal(traces[i], traces[j]);
        }
    }
}

/* ---- sampling ---- */

static hm_tracer_t *tracer_with(const char *endpoint, const char *ratio, long long queue,
                                int64_t batch_ms)
{
    hm_trace_config_t cfg = {.otlp_endpoint = endpoint,
                             .sample_ratio = ratio,
                             .queue_size = queue,
                             .batch_ms = batch_ms};
    char err[256];
    hm_tracer_t *t = hm_tracer_create(&cfg, "test_trace", err, sizeof err);

    if (t == NULL)
        fail_msg("hm_tracer_create: %s", err);
    return t;
}

static void test_sampling_is_parent_based(void **state)
{
    (void)state;
    hm_tracer_t *never = tracer_with(NULL, "0", 4096, 1000);
    hm_tracer_t *always = tracer_with(NULL, "1", 4096, 1000);
    hm_span_t s, c;

    for (int i = 0; i < 1000; i++) {
        hm_trace_start_server(never, NULL, NULL, "m", &s);
        assert_false(hm_span_sampled(&s));
        hm_trace_start_server(always, NULL, NULL, "m", &s);
        assert_true(hm_span_sampled(&s));
    }
    /* A sampled parent wins over ratio 0, an unsampled one over ratio 1. */
    hm_trace_start_server(never, W3C_EXAMPLE, NULL, "m", &s);
    assert_true(hm_span_sampled(&s));
    assert_false(hm_span_recording(never, &s)); /* sampled, but nothing is exported */
    hm_trace_start_client(never, &s, "c", &c);
    assert_true(hm_span_sampled(&c));
    hm_trace_start_server(always, "00-" W3C_TRACE "-" W3C_PARENT "-00", NULL, "m", &s);
    assert_false(hm_span_sampled(&s));
    hm_trace_start_client(always, &s, "c", &c);
    assert_false(hm_span_sampled(&c));
    char tp[HM_TRACEPARENT_LEN + 1];
    hm_trace_child_traceparent(&c, tp);
    assert_string_equal(tp + 53, "00"); /* the decision travels on */

    hm_tracer_destroy(never);
    hm_tracer_destroy(always);
}

static void test_sampling_ratio(void **state)
{
    (void)state;
    hm_tracer_t *half = tracer_with(NULL, "0.25", 4096, 1000);
    hm_span_t s;
    int sampled = 0;

    for (int i = 0; i < 20000; i++) {
        hm_trace_start_server(half, NULL, NULL, "m", &s);
        sampled += hm_span_sampled(&s);
    }
    /* 5000 expected; the standard deviation is about 61. */
    assert_in_range(sampled, 4600, 5400);
    hm_tracer_destroy(half);
}

/* ---- attributes and status ---- */

static const hm_span_attr_t *attr(const hm_span_t *s, const char *key)
{
    for (unsigned i = 0; i < s->nattrs; i++) {
        if (strcmp(s->text + s->attrs[i].key_off, key) == 0)
            return &s->attrs[i];
    }
    return NULL;
}

static const char *attr_str(const hm_span_t *s, const char *key)
{
    const hm_span_attr_t *a = attr(s, key);

    return a != NULL && !a->is_int ? s->text + a->str_off : NULL;
}

static void test_attributes(void **state)
{
    (void)state;
    hm_span_t s;
    char key[32], big[600];

    hm_trace_start_server(NULL, NULL, NULL, "m", &s);
    hm_span_set_attr_str(&s, "a", "one");
    hm_span_set_attr_str(&s, "a", "two"); /* replaces */
    hm_span_set_attr_int(&s, "n", -42);
    assert_int_equal(s.nattrs, 2);
    assert_string_equal(attr_str(&s, "a"), "two");
    assert_true(attr(&s, "n")->is_int);
    assert_int_equal(attr(&s, "n")->ival, -42);

    /* A long value is cut at HM_SPAN_VALUE_MAX bytes, on a character boundary. */
    memset(big, 'x', sizeof big);
    memcpy(big + HM_SPAN_VALUE_MAX - 1, "\xc3\xa9", 2); /* é straddles the cut */
    big[sizeof big - 1] = '\0';
    hm_span_set_attr_str(&s, "big", big);
    assert_int_equal(strlen(attr_str(&s, "big")), HM_SPAN_VALUE_MAX - 1);

    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "k%d", i);
        hm_span_set_attr_int(&s, key, i);
    }
    assert_int_equal(s.nattrs, HM_SPAN_ATTRS_MAX);
    assert_int_equal(s.dropped_attrs, 3 + 20 - HM_SPAN_ATTRS_MAX);

    /* The text area fills up: later strings are dropped, never overflow. */
    hm_trace_start_server(NULL, NULL, NULL, "m", &s);
    for (int i = 0; i < HM_SPAN_ATTRS_MAX; i++) {
        snprintf(key, sizeof key, "s%d", i);
        hm_span_set_attr_str(&s, key, big);
    }
    assert_true(s.dropped_attrs > 0);
    assert_true(s.text_len <= HM_SPAN_TEXT_MAX);

    hm_span_set_status(&s, HM_SPAN_STATUS_OK, "ignored");
    assert_int_equal(s.status, HM_SPAN_STATUS_OK);
    assert_int_equal(s.status_msg_len, 0);
}

static void test_grpc_conventions(void **state)
{
    (void)state;
    hm_span_t s, c;

    hm_trace_start_server(NULL, NULL, NULL, "hospitality.guest.v1.GuestService/GetProfile", &s);
    hm_span_set_rpc(&s, "/hospitality.guest.v1.GuestService/GetProfile");
    assert_string_equal(attr_str(&s, "rpc.system"), "grpc");
    assert_string_equal(attr_str(&s, "rpc.service"), "hospitality.guest.v1.GuestService");
    assert_string_equal(attr_str(&s, "rpc.method"), "GetProfile");

    /* Server: NOT_FOUND is the client's doing, INTERNAL is an error. */
    hm_span_set_grpc_status(&s, HM_CODE_NOT_FOUND, "guest not found");
    assert_int_equal(attr(&s, "rpc.grpc.status_code")->ival, HM_CODE_NOT_FOUND);
    assert_int_equal(s.status, HM_SPAN_STATUS_UNSET);
    hm_span_set_grpc_status(&s, HM_CODE_INTERNAL, "boom");
    assert_int_equal(attr(&s, "rpc.grpc.status_code")->ival, HM_CODE_INTERNAL);
    assert_int_equal(s.status, HM_SPAN_STATUS_ERROR);
    assert_string_equal(s.text + s.status_msg_off, "boom");

    /* Client: any code but OK is an error. */
    hm_trace_start_client(NULL, &s, "x", &c);
    hm_span_set_grpc_status(&c, HM_CODE_NOT_FOUND, NULL);
    assert_int_equal(c.status, HM_SPAN_STATUS_ERROR);
    assert_string_equal(c.text + c.status_msg_off, "NOT_FOUND");

    hm_span_set_grpc_peer(&s, "ipv4:10.1.2.3:5555");
    assert_string_equal(attr_str(&s, "network.peer.address"), "10.1.2.3");
    assert_int_equal(attr(&s, "network.peer.port")->ival, 5555);
    hm_span_set_grpc_peer(&c, "ipv6:[::1]:443");
    assert_string_equal(attr_str(&c, "network.peer.address"), "::1");
    assert_int_equal(attr(&c, "network.peer.port")->ival, 443);
    hm_span_set_grpc_peer(&c, "ipv6:%5B::2%5D:80");
    assert_string_equal(attr_str(&c, "network.peer.address"), "::2");
    assert_int_equal(attr(&c, "network.peer.port")->ival, 80);
    hm_span_set_grpc_peer(&c, "unix:/run/x.sock");
    assert_string_equal(attr_str(&c, "network.peer.address"), "/run/x.sock");
}

/* ---- configuration ---- */

static void test_config(void **state)
{
    (void)state;
    hm_trace_config_t cfg;
    char err[256];
    static const char *const bad_ratios[] = {"abc", "1.5", "-0.1", "nan", " 0.5", "0.5x", "1e400"};

    unsetenv("HM_OTLP_ENDPOINT");
    unsetenv("HM_TRACE_SAMPLE_RATIO");
    unsetenv("HM_TRACE_QUEUE");
    unsetenv("HM_TRACE_BATCH_MS");
    assert_int_equal(
        hm_config_load(hm_trace_config_vars, hm_trace_config_nvars, &cfg, err, sizeof err), 0);
    assert_true(cfg.otlp_endpoint == NULL || cfg.otlp_endpoint[0] == '\0');
    assert_int_equal(cfg.queue_size, 4096);
    assert_int_equal(cfg.batch_ms, 1000);

    hm_tracer_t *t = hm_tracer_create(&cfg, "svc", err, sizeof err);
    assert_non_null(t);
    assert_false(hm_tracer_exporting(t));
    assert_int_equal(hm_tracer_flush(t, 10), 0);
    hm_tracer_destroy(t);

    for (size_t i = 0; i < sizeof bad_ratios / sizeof bad_ratios[0]; i++) {
        cfg.sample_ratio = bad_ratios[i];
        assert_null(hm_tracer_create(&cfg, "svc", err, sizeof err));
        if (strstr(err, "HM_TRACE_SAMPLE_RATIO: must be a number between 0 and 1") == NULL)
            fail_msg("ratio \"%s\": unexpected message \"%s\"", bad_ratios[i], err);
    }
    cfg.sample_ratio = "0.001";
    cfg.otlp_endpoint = "ftp://collector:4318";
    assert_null(hm_tracer_create(&cfg, "svc", err, sizeof err));
    assert_non_null(strstr(err, "HM_OTLP_ENDPOINT"));

    setenv("HM_TRACE_QUEUE", "1", 1);
    assert_int_equal(
        hm_config_load(hm_trace_config_vars, hm_trace_config_nvars, &cfg, err, sizeof err),
        HM_EINVAL);
    assert_non_null(strstr(err, "HM_TRACE_QUEUE"));
    unsetenv("HM_TRACE_QUEUE");
}

/* ---- the queue ---- */

/* A port on 127.0.0.1 that nothing listens on. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;

    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    return ntohs(sin.sin_port);
}

static void end_spans(hm_tracer_t *t, int n, const char *traceparent)
{
    hm_span_t s;

    for (int i = 0; i < n; i++) {
        hm_trace_start_server(t, traceparent, NULL, "m", &s);
        hm_span_set_attr_int(&s, "i", i);
        hm_trace_end(t, &s);
    }
}

static void test_full_queue_drops_without_blocking(void **state)
{
    (void)state;
    char url[64];
    hm_trace_stats_t st;

    snprintf(url, sizeof url, "http://127.0.0.1:%d", closed_port());
    hm_tracer_t *t = tracer_with(url, "1", 16, 60000);
    hm__tracer_pause(t, true);
    hm_span_t probe;
    hm_trace_start_server(t, NULL, NULL, "m", &probe);
    assert_true(hm_span_recording(t, &probe));

    int64_t t0 = now_ms();
    end_spans(t, 10016, NULL);
    int64_t took = now_ms() - t0;
    hm_tracer_stats(t, &st);
    assert_int_equal(st.queued, 16);
    assert_int_equal(st.dropped, 10000);
    assert_int_equal(st.exported, 0);
    assert_true(took < 2000); /* microseconds each, even under the sanitizers */

    /* Unsampled spans are never queued, so never dropped. */
    end_spans(t, 100, "00-" W3C_TRACE "-" W3C_PARENT "-00");
    hm_tracer_stats(t, &st);
    assert_int_equal(st.dropped, 10000);

    /* Nobody listens: the flush ends with one failed request, not retried. */
    assert_int_equal(hm_tracer_flush(t, 5000), 0);
    hm_tracer_stats(t, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.failed, 16);
    assert_int_equal(st.export_failures, 1);
    assert_int_equal(st.retries, 0);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    hm_tracer_metrics(t, f);
    fclose(f);
    assert_non_null(strstr(text, "hm_trace_spans_dropped_total{reason=\"queue_full\"} 10000\n"));
    assert_non_null(strstr(text, "hm_trace_spans_dropped_total{reason=\"export_failed\"} 16\n"));
    assert_non_null(strstr(text, "hm_trace_export_failures_total 1\n"));
    free(text);
    hm_tracer_destroy(t);
}

/* ---- export to the stand-in receiver ---- */

typedef struct receiver {
    pid_t pid;
    int port;
    char url[64];
} receiver_t;

static const char *src_root(void)
{
    const char *r = getenv("HM_TEST_SRC_ROOT");

#ifdef HM_TEST_SRC_ROOT
    if (r == NULL || r[0] == '\0')
        r = HM_TEST_SRC_ROOT;
#endif
    return r;
}

/* Starts tools/standins/otlp_receiver.py with `args` (NULL-terminated); false when it cannot
 * run here (no python3 or no source tree), so the caller skips. */
static bool receiver_start(receiver_t *r, const char *const *args)
{
    char script[4096];
    const char *argv[16];
    int n = 0, fds[2];
    const char *root = src_root();

    if (root == NULL || access(PYTHON, X_OK) != 0)
        return false;
    snprintf(script, sizeof script, "%s/tools/standins/otlp_receiver.py", root);
    if (access(script, R_OK) != 0)
        return false;
    argv[n++] = PYTHON;
    argv[n++] = script;
    argv[n++] = "--port";
    argv[n++] = "0";
    for (; args != NULL && *args != NULL && n < 15; args++)
        argv[n++] = *args;
    argv[n] = NULL;

    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    int rc = posix_spawn(&r->pid, PYTHON, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    assert_int_equal(rc, 0);

    /* The first line is the port. */
    char line[32];
    size_t len = 0;
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    int64_t deadline = now_ms() + 15000;
    while (len < sizeof line - 1 && memchr(line, '\n', len) == NULL) {
        int left = (int)(deadline - now_ms());
        assert_true(left > 0);
        if (poll(&pfd, 1, left) <= 0)
            continue;
        ssize_t got = read(fds[0], line + len, sizeof line - 1 - len);
        assert_true(got > 0);
        len += (size_t)got;
    }
    close(fds[0]);
    line[len] = '\0';
    r->port = atoi(line);
    assert_in_range(r->port, 1, 65535);
    snprintf(r->url, sizeof r->url, "http://127.0.0.1:%d", r->port);
    return true;
}

static void receiver_stop(receiver_t *r)
{
    int status;

    kill(r->pid, SIGTERM);
    waitpid(r->pid, &status, 0);
}

#define START_RECEIVER_OR_SKIP(r, ...)                                                             \
    do {                                                                                           \
        static const char *const args_[] = {__VA_ARGS__, NULL};                                    \
        if (!receiver_start((r), args_)) {                                                         \
            receiver_missing = true;                                                               \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    FILE *f = arg;

    return fwrite(data, size, n, f);
}

/* GET <receiver>/debug/spans, parsed. */
static json_t *received(const receiver_t *r)
{
    char url[128], *text = NULL;
    size_t len = 0;
    long code = 0;
    FILE *f = open_memstream(&text, &len);
    CURL *c = curl_easy_init();

    snprintf(url, sizeof url, "%s/debug/spans", r->url);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    assert_int_equal(code, 200);
    curl_easy_cleanup(c);
    fclose(f);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (root == NULL)
        fail_msg("receiver answered no JSON: %s", jerr.text);
    free(text);
    return root;
}

static json_t *received_spans(json_t *root)
{
    json_t *spans = json_object_get(root, "spans");

    assert_true(json_is_array(spans));
    return spans;
}

/* The span of `spans` with spanId `id`. */
static json_t *span_by_id(json_t *spans, const char *id)
{
    size_t i;
    json_t *s;

    json_array_foreach(spans, i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "spanId")), id) == 0)
            return s;
    }
    fail_msg("span %s was not exported", id);
    return NULL;
}

/* The "value" object of attribute `key` of an exported span. */
static json_t *exported_attr(json_t *span, const char *key)
{
    size_t i;
    json_t *a;

    json_array_foreach(json_object_get(span, "attributes"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "key")), key) == 0)
            return json_object_get(a, "value");
    }
    fail_msg("attribute %s missing", key);
    return NULL;
}

static bool all_digits(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
    }
    return true;
}

static void test_export_wire_format(void **state)
{
    (void)state;
    receiver_t r;
    hm_span_t s, c;
    hm_trace_stats_t st;

    START_RECEIVER_OR_SKIP(&r, "--retry-after", "0");
    hm_tracer_t *t = tracer_with(r.url, "1", 4096, 60000);

    /* A call arrives with a context (as from grpc-js), makes one outgoing call, fails. */
    hm_trace_start_server(t, W3C_EXAMPLE, "congo=t61rcWkgMzE",
                          "hospitality.guest.v1.GuestService/GetProfile", &s);
    hm_span_set_rpc(&s, "/hospitality.guest.v1.GuestService/GetProfile");
    hm_span_set_grpc_peer(&s, "ipv4:127.0.0.1:40000");
    hm_span_set_attr_str(&s, "quote\"and\\slash", "line\nbreak \xff");
    hm_trace_start_client(t, &s, "hospitality.booking.v1.BookingService/ListBookings", &c);
    hm_span_set_rpc(&c, "/hospitality.booking.v1.BookingService/ListBookings");
    hm_span_set_grpc_status(&c, HM_CODE_OK, NULL);
    hm_trace_end(t, &c);
    hm_span_set_grpc_status(&s, HM_CODE_INTERNAL, "store failed");
    hm_trace_end(t, &s);
    /* A root span (no parent). */
    hm_span_t root_span;
    hm_trace_start_internal(t, NULL, "sweep", &root_span);
    hm_trace_end(t, &root_span);

    assert_int_equal(hm_tracer_flush(t, 10000), 0);
    hm_tracer_stats(t, &st);
    assert_int_equal(st.exported, 3);
    assert_int_equal(st.failed, 0);

    json_t *root = received(&r);
    json_t *spans = received_spans(root);
    assert_int_equal(json_array_size(spans), 3);

    json_t *js = span_by_id(spans, s.span_id);
    assert_string_equal(json_string_value(json_object_get(js, "traceId")), W3C_TRACE);
    assert_string_equal(json_string_value(json_object_get(js, "parentSpanId")), W3C_PARENT);
    assert_string_equal(json_string_value(json_object_get(js, "traceState")), "congo=t61rcWkgMzE");
    assert_string_equal(json_string_value(json_object_get(js, "name")),
                        "hospitality.guest.v1.GuestService/GetProfile");
    assert_true(json_is_integer(json_object_get(js, "kind")));
    assert_int_equal(json_integer_value(json_object_get(js, "kind")), 2);
    const char *start = json_string_value(json_object_get(js, "startTimeUnixNano"));
    const char *end = json_string_value(json_object_get(js, "endTimeUnixNano"));
    assert_true(all_digits(start));
    assert_true(all_digits(end));
    assert_int_equal(strtoll(start, NULL, 10), s.start_ns);
    assert_int_equal(strtoll(end, NULL, 10), s.end_ns);
    assert_string_equal(
        json_string_value(json_object_get(exported_attr(js, "rpc.method"), "stringValue")),
        "GetProfile");
    json_t *code = json_object_get(exported_attr(js, "rpc.grpc.status_code"), "intValue");
    assert_true(json_is_string(code)); /* 64-bit integers travel as strings */
    assert_string_equal(json_string_value(code), "13");
    assert_string_equal(
        json_string_value(json_object_get(exported_attr(js, "quote\"and\\slash"), "stringValue")),
        "line\nbreak \xef\xbf\xbd"); /* escaped on the wire, bad UTF-8 replaced */
    json_t *status = json_object_get(js, "status");
    assert_int_equal(json_integer_value(json_object_get(status, "code")), 2);
    assert_string_equal(json_string_value(json_object_get(status, "message")), "store failed");
    json_t *resource = json_object_get(js, "resource");
    assert_string_equal(json_string_value(json_object_get(resource, "service.name")), "test_trace");
    assert_string_equal(json_string_value(json_object_get(js, "scope")), "libhm");

    json_t *jc = span_by_id(spans, c.span_id);
    assert_string_equal(json_string_value(json_object_get(jc, "traceId")), W3C_TRACE);
    assert_string_equal(json_string_value(json_object_get(jc, "parentSpanId")), s.span_id);
    assert_int_equal(json_integer_value(json_object_get(jc, "kind")), 3);
    assert_string_equal(
        json_string_value(json_object_get(exported_attr(jc, "rpc.grpc.status_code"), "intValue")),
        "0");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(jc, "status"), "code")), 0);

    json_t *jr = span_by_id(spans, root_span.span_id);
    assert_null(json_object_get(jr, "parentSpanId")); /* omitted for a root span */
    assert_int_equal(json_integer_value(json_object_get(jr, "kind")), 1);
    assert_string_equal(json_string_value(json_object_get(jr, "traceId")), root_span.trace_id);

    json_decref(root);
    hm_tracer_destroy(t);
    receiver_stop(&r);
}

static void test_export_retries_503_after_retry_after(void **state)
{
    (void)state;
    receiver_t r;
    hm_trace_stats_t st;

    START_RECEIVER_OR_SKIP(&r, "--fail-first", "2", "--retry-after", "1");
    /* The endpoint may already name the path: it is not doubled. */
    char url[128];
    snprintf(url, sizeof url, "%s/v1/traces", r.url);
    hm_tracer_t *t = tracer_with(url, "1", 4096, 60000);

    end_spans(t, 3, NULL);
    int64_t t0 = now_ms();
    assert_int_equal(hm_tracer_flush(t, 20000), 0);
    int64_t took = now_ms() - t0;
    hm_tracer_stats(t, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.exported, 3);
    assert_int_equal(st.export_failures, 0);
    assert_true(took >= 2000); /* waited Retry-After: 1 twice */

    json_t *root = received(&r);
    assert_int_equal(json_integer_value(json_object_get(root, "requests")), 3);
    assert_int_equal(json_integer_value(json_object_get(root, "failed")), 2);
    assert_int_equal(json_array_size(received_spans(root)), 3);
    json_decref(root);
    hm_tracer_destroy(t);
    receiver_stop(&r);
}

static void test_export_400_is_not_retried(void **state)
{
    (void)state;
    receiver_t r;
    hm_trace_stats_t st;

    START_RECEIVER_OR_SKIP(&r, "--fail-first", "1", "--fail-status", "400");
    hm_tracer_t *t = tracer_with(r.url, "1", 4096, 60000);

    end_spans(t, 5, NULL);
    assert_int_equal(hm_tracer_flush(t, 10000), 0);
    hm_tracer_stats(t, &st);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.failed, 5);
    assert_int_equal(st.export_failures, 1);

    /* The next batch goes through. */
    end_spans(t, 2, NULL);
    assert_int_equal(hm_tracer_flush(t, 10000), 0);
    hm_tracer_stats(t, &st);
    assert_int_equal(st.exported, 2);

    json_t *root = received(&r);
    assert_int_equal(json_integer_value(json_object_get(root, "requests")), 2);
    assert_int_equal(json_array_size(received_spans(root)), 2);
    json_decref(root);
    hm_tracer_destroy(t);
    receiver_stop(&r);
}

static void test_flush_at_shutdown_exports_everything(void **state)
{
    (void)state;
    receiver_t r;
    hm_trace_stats_t st;

    START_RECEIVER_OR_SKIP(&r, "--retry-after", "0");
    /* Ratio 0: only spans whose parent was sampled are exported. */
    hm_tracer_t *t = tracer_with(r.url, "0", 4096, 60000);

    end_spans(t, 1200, W3C_EXAMPLE); /* more than two batches */
    end_spans(t, 50, NULL);          /* new traces, not sampled */
    assert_int_equal(hm_tracer_flush(t, 20000), 0);
    hm_tracer_stats(t, &st);
    assert_int_equal(st.exported, 1200);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.dropped, 0);
    hm_tracer_destroy(t);

    json_t *root = received(&r);
    json_t *spans = received_spans(root);
    assert_int_equal(json_array_size(spans), 1200);
    /* Batches hold at most HM_TRACE_BATCH_MAX spans: at least three requests. */
    assert_true(json_integer_value(json_object_get(root, "requests")) >= 3);
    size_t i;
    json_t *s;
    json_array_foreach(spans, i, s)
    {
        assert_string_equal(json_string_value(json_object_get(s, "traceId")), W3C_TRACE);
    }
    json_decref(root);
    receiver_stop(&r);
}

static void test_batch_timer_exports_without_flush(void **state)
{
    (void)state;
    receiver_t r;
    hm_trace_stats_t st;

    START_RECEIVER_OR_SKIP(&r, "--retry-after", "0");
    hm_tracer_t *t = tracer_with(r.url, "1", 4096, 50);

    end_spans(t, 3, NULL);
    int64_t deadline = now_ms() + 10000;
    do {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
        hm_tracer_stats(t, &st);
    } while (st.exported < 3 && now_ms() < deadline);
    assert_int_equal(st.exported, 3);
    hm_tracer_destroy(t);
    receiver_stop(&r);
}

static void test_destroy_aborts_a_hung_export(void **state)
{
    (void)state;
    /* A collector that accepts the connection and never answers. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    char url[64];

    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 8), 0);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(sin.sin_port));
    hm_tracer_t *t = tracer_with(url, "1", 64, 60000);

    end_spans(t, 4, NULL);
    assert_int_equal(hm_tracer_flush(t, 300), HM_ETIMEDOUT); /* the request hangs */
    int64_t t0 = now_ms();
    hm_tracer_destroy(t);
    assert_true(now_ms() - t0 < 2000); /* not the 5 s request timeout */
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_parse_future_version),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_server_span_continues_the_trace),
        cmocka_unit_test(test_invalid_parent_starts_a_new_trace),
        cmocka_unit_test(test_tracestate_bounds),
        cmocka_unit_test(test_ids_are_distinct),
        cmocka_unit_test(test_sampling_is_parent_based),
        cmocka_unit_test(test_sampling_ratio),
        cmocka_unit_test(test_attributes),
        cmocka_unit_test(test_grpc_conventions),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_full_queue_drops_without_blocking),
        cmocka_unit_test(test_destroy_aborts_a_hung_export),
        cmocka_unit_test(test_export_wire_format),
        cmocka_unit_test(test_export_retries_503_after_retry_after),
        cmocka_unit_test(test_export_400_is_not_retried),
        cmocka_unit_test(test_flush_at_shutdown_exports_everything),
        cmocka_unit_test(test_batch_timer_exports_without_flush),
    };
    hm_log_level_t level;
    int failed;

    signal(SIGPIPE, SIG_IGN);
    /* A proxy from the environment must not sit between the test and 127.0.0.1. */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_trace", level);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    if (failed == 0 && receiver_missing) {
        fprintf(stderr, "test_trace: no %s or no source tree: export tests skipped\n", PYTHON);
        return 77;
    }
    return failed;
}
