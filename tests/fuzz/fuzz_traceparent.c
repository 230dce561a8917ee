/*
 * fuzz_traceparent.c - fuzzes W3C traceparent parsing (hm_trace_parse_traceparent,
 * common/src/trace.c) against a reference written here from trace.h's contract.
 *
 * Input: the header value (cut at its first NUL, as gRPC metadata would be).
 * Asserts:
 *   - accepted exactly when the reference accepts: version 00 is exactly 55 characters; any
 *     other version (two lower-case hex digits, not ff) is read from its first 55 characters
 *     when the value is exactly that long or continues with '-'; "vv-<32 hex>-<16 hex>-<2 hex>"
 *     with lower-case hex only, trace and parent ids not all zeros;
 *   - when accepted: trace_id and parent_id are the value's ids, NUL-terminated; flags is the
 *     flags byte; formatting it gives a version 00 traceparent of 55 characters that parses
 *     again to the same ids and the sampled bit only (a fixed point).
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "hm/trace.h"

static bool lhex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

static bool hexrun(const char *s, size_t n, bool nonzero)
{
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (!lhex(s[i]))
            return false;
        any |= s[i] != '0';
    }
    return !nonzero || any;
}

static bool ref_valid(const char *s, size_t n)
{
    if (n < 55)
        return false;
    if (!hexrun(s, 2, false) || (s[0] == 'f' && s[1] == 'f'))
        return false;
    bool v00 = s[0] == '0' && s[1] == '0';
    if (v00 ? n != 55 : (n != 55 && s[55] != '-'))
        return false;
    return s[2] == '-' && hexrun(s + 3, 32, true) && s[35] == '-' && hexrun(s + 36, 16, true) &&
           s[52] == '-' && hexrun(s + 53, 2, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = strnlen((const char *)data, size);
    char *s = malloc(n + 1);
    memcpy(s, data, n);
    s[n] = '\0';

    hm_trace_ctx_t ctx;
    memset(&ctx, 0x5a, sizeof ctx);
    int rc = hm_trace_parse_traceparent(s, &ctx);
    bool want = ref_valid(s, n);
    if (want != (rc == 0)) {
        fprintf(stderr, "traceparent \"%s\": parse %d, reference %s\n", s, rc,
                want ? "valid" : "invalid");
        FUZZ_CHECK(want == (rc == 0));
    }
    if (rc == 0) {
        FUZZ_CHECK(strlen(ctx.trace_id) == HM_TRACE_ID_LEN);
        FUZZ_CHECK(strlen(ctx.parent_id) == HM_SPAN_ID_LEN);
        FUZZ_CHECK(memcmp(ctx.trace_id, s + 3, 32) == 0);
        FUZZ_CHECK(memcmp(ctx.parent_id, s + 36, 16) == 0);
        FUZZ_CHECK(ctx.flags == hexval(s[53]) * 16 + hexval(s[54]));
        char out[HM_TRACEPARENT_LEN + 1];
        hm_trace_format_traceparent(&ctx, out);
        FUZZ_CHECK(strlen(out) == HM_TRACEPARENT_LEN);
        FUZZ_CHECK(memcmp(out, "00-", 3) == 0);
        hm_trace_ctx_t again;
        FUZZ_CHECK(hm_trace_parse_traceparent(out, &again) == 0);
        FUZZ_CHECK(strcmp(again.trace_id, ctx.trace_id) == 0);
        FUZZ_CHECK(strcmp(again.parent_id, ctx.parent_id) == 0);
        FUZZ_CHECK(again.flags == (ctx.flags & HM_TRACE_FLAG_SAMPLED));
    } else {
        FUZZ_CHECK(rc == HM_EINVAL);
    }
    free(s);
    return 0;
}
