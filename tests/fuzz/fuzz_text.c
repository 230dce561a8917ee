/*
 * fuzz_text.c - fuzzes libhm's checks and canonical forms of request text: hm_utf8_valid,
 * hm_utf8_len, hm_uuid_valid, hm_crypto_normalize_email/phone, hm_json_escape and
 * hm_config_parse_duration, each against a small independent reference written here from the
 * header's contract.
 *
 * Input: the text (cut at its first NUL, as a C string from protobuf-c would be). The first
 * two bytes also choose hm_json_escape's capacity (1..64) and the length already in its buffer.
 * Asserts:
 *   - UTF-8: hm_utf8_valid agrees with Unicode's table of well-formed sequences (no
 *     overlongs, surrogates or code points past U+10FFFF); hm_utf8_len never exceeds the byte
 *     count and is the code point count of a valid string.
 *   - UUID: valid exactly for the 8-4-4-4-12 hex form.
 *   - email: accepted exactly when the trimmed text has one '@' with text on both sides and no
 *     white space or control character; the result is the trimmed text lower-cased (ASCII),
 *     and normalizing it again gives it back.
 *   - phone: accepted exactly when the trimmed text is an optional leading '+' and 3..20 digits
 *     among the separators " -.()/"; the result is the '+' and the digits; idempotent.
 *   - JSON: the appended text is a well-formed JSON string body without raw control characters
 *     (DEL included), valid UTF-8, and the buffer never overflows (it is allocated at its exact
 *     capacity, so ASan sees a byte too far) and stays NUL-terminated; the text before it is
 *     untouched; with room enough, a valid UTF-8 input escapes and unescapes to itself, and a
 *     cut output is a prefix of it.
 *   - duration: accepted exactly for digits with an optional ms|s|m|h suffix whose value in
 *     milliseconds fits an int64_t, and then the value is the expected one, never negative.
 */
#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "hm/config.h"
#include "hm/crypto.h"
#include "hm/err.h"
#include "hm/id.h"
#include "hm/log.h"

/* Length of the well-formed UTF-8 sequence at p (Unicode table 3-7), or 0 if there is none. */
static size_t ref_utf8_seq(const unsigned char *p)
{
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) {
        n = 2;
    } else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
        n = 3;
        lo = p[0] == 0xE0 ? 0xA0 : lo;
        hi = p[0] == 0xED ? 0x9F : hi;
    } else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
        n = 4;
        lo = p[0] == 0xF0 ? 0x90 : lo;
        hi = p[0] == 0xF4 ? 0x8F : hi;
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi) /* also stops at the NUL */
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

/* Whether the first n bytes of s are well-formed UTF-8 (s NUL-terminated at or after n). */
static bool ref_utf8_valid(const char *s, size_t n, size_t *codepoints)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, count = 0;

    while (i < n) {
        size_t step = ref_utf8_seq(p + i);

        if (step == 0 || step > n - i)
            return false;
        i += step;
        count++;
    }
    if (codepoints != NULL)
        *codepoints = count;
    return true;
}

static void check_utf8(const char *s, size_t n)
{
    size_t count = 0;
    bool valid = hm_utf8_valid(s);

    FUZZ_CHECK(valid == ref_utf8_valid(s, n, &count));
    FUZZ_CHECK(hm_utf8_len(s) <= n);
    if (valid)
        FUZZ_CHECK(hm_utf8_len(s) == count);
}

static void check_uuid(const char *s, size_t n)
{
    bool ref = n == HM_UUID_LEN;

    for (size_t i = 0; ref && i < n; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ref = s[i] == '-';
        else
            ref = isxdigit((unsigned char)s[i]) != 0;
    }
    FUZZ_CHECK(hm_uuid_valid(s) == ref);
}

/* The text without surrounding white space (isspace in the C locale, as crypto.c trims). */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && isspace((unsigned char)(*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

static void check_email(hm_arena_t *arena, const char *s, size_t n)
{
    const char *t = s;
    size_t tn = n, ats = 0;
    char *out = NULL, *again = NULL;
    bool ref;
    int rc;

    trim(&t, &tn);
    ref = tn > 0 && t[0] != '@' && t[tn - 1] != '@';
    for (size_t i = 0; ref && i < tn; i++) {
        unsigned char c = (unsigned char)t[i];

        ats += c == '@';
        ref = c > 0x20 && c != 0x7F;
    }
    ref = ref && ats == 1;
    rc = hm_crypto_normalize_email(arena, s, &out);
    FUZZ_CHECK((rc == 0) == ref);
    if (rc != 0) {
        FUZZ_CHECK(rc == HM_EINVAL && out == NULL);
        return;
    }
    FUZZ_CHECK(out != NULL && strlen(out) == tn);
    for (size_t i = 0; i < tn; i++) {
        unsigned char c = (unsigned char)t[i];

        FUZZ_CHECK(out[i] == (char)(c < 0x80 ? tolower(c) : c));
        FUZZ_CHECK(!(out[i] >= 'A' && out[i] <= 'Z'));
    }
    FUZZ_CHECK(strchr(out, '@') == strrchr(out, '@'));
    FUZZ_CHECK(hm_crypto_normalize_email(arena, out, &again) == 0 && strcmp(again, out) == 0);
}

static void check_phone(hm_arena_t *arena, const char *s, size_t n)
{
    const char *t = s;
    size_t tn = n, digits = 0;
    char *out = NULL, *again = NULL;
    bool ref = true;
    int rc;

    trim(&t, &tn);
    for (size_t i = 0; ref && i < tn; i++) {
        if (t[i] >= '0' && t[i] <= '9')
            digits++;
        else
            ref = (t[i] == '+' && i == 0) || strchr(" -.()/", t[i]) != NULL;
    }
    ref = ref && digits >= 3 && digits <= 20;
    rc = hm_crypto_normalize_phone(arena, s, &out);
    FUZZ_CHECK((rc == 0) == ref);
    if (rc != 0) {
        FUZZ_CHECK(rc == HM_EINVAL && out == NULL);
        return;
    }
    FUZZ_CHECK(out != NULL);
    FUZZ_CHECK(strlen(out) == digits + (t[0] == '+'));
    for (size_t i = 0; out[i] != '\0'; i++)
        FUZZ_CHECK((out[i] >= '0' && out[i] <= '9') || (out[i] == '+' && i == 0));
    FUZZ_CHECK(hm_crypto_normalize_phone(arena, out, &again) == 0 && strcmp(again, out) == 0);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes a JSON string body (RFC 8259, without the quotes) of n bytes into out (room for n
 * bytes), rejecting raw DEL too. Returns the decoded length, or -1 when it is not well formed.
 * \u escapes outside the BMP's non-surrogate range are refused: hm_json_escape never makes them.
 */
static long json_unescape(const char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;

    while (i < n) {
        unsigned char c = (unsigned char)in[i];
        unsigned cp = 0;

        if (c == '"' || c < 0x20 || c == 0x7F)
            return -1;
        if (c != '\\') {
            out[o++] = (char)c;
            i++;
            continue;
        }
        if (i + 1 >= n)
            return -1;
        switch (in[i + 1]) {
        case '"':
        case '\\':
        case '/':
            out[o++] = in[i + 1];
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u':
            if (n - i < 6)
                return -1;
            for (size_t k = 2; k < 6; k++) {
                int h = hexval(in[i + k]);

                if (h < 0)
                    return -1;
                cp = cp << 4 | (unsigned)h;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                return -1;
            if (cp < 0x80) {
                out[o++] = (char)cp;
            } else if (cp < 0x800) {
                out[o++] = (char)(0xC0 | cp >> 6);
                out[o++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[o++] = (char)(0xE0 | cp >> 12);
                out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            }
            i += 4;
            break;
        default:
            return -1;
        }
        i += 2;
    }
    return (long)o;
}

/* Escapes s after `pre` bytes of a buffer of exactly `cap` bytes and checks the result. */
static void check_json_once(const char *s, size_t n, unsigned cap, unsigned pre)
{
    char *buf = hm_xmalloc(cap), *plain;
    unsigned keep = pre < cap ? pre : cap - 1, len;
    long plen;
    bool valid = ref_utf8_valid(s, n, NULL);

    memset(buf, 'P', keep);
    buf[keep] = '\0';
    len = hm_json_escape(buf, cap, pre, s);
    FUZZ_CHECK(len < cap && buf[len] == '\0' && strlen(buf) == len);
    FUZZ_CHECK(len >= keep);
    for (unsigned i = 0; i < keep; i++)
        FUZZ_CHECK(buf[i] == 'P');
    plain = hm_xmalloc(len - keep + 1);
    plen = json_unescape(buf + keep, len - keep, plain);
    FUZZ_CHECK(plen >= 0);
    FUZZ_CHECK(ref_utf8_valid(buf + keep, len - keep, NULL));
    if (valid) {
        /* What fits is a prefix of the input; with room for any escaping, all of it. */
        FUZZ_CHECK((size_t)plen <= n && memcmp(plain, s, (size_t)plen) == 0);
        if (pre < cap && cap - pre > 6 * n)
            FUZZ_CHECK((size_t)plen == n);
    }
    free(plain);
    free(buf);
}

static void check_json(const char *s, size_t n, const uint8_t *data, size_t size)
{
    unsigned cap = size > 0 ? 1u + data[0] % 64u : 16u;
    unsigned pre = size > 1 ? data[1] % (cap + 2u) : 0u;

    check_json_once(s, n, cap, pre);
    check_json_once(s, n, (unsigned)(6 * n + 1), 0);
}

static void check_duration(const char *s, size_t n)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    size_t digits = 0;
    int64_t v = 0, ms = -1, want = 0;
    bool ref = false, overflow = false;
    int rc;

    while (digits < n && s[digits] >= '0' && s[digits] <= '9') {
        overflow = overflow || __builtin_mul_overflow(v, 10, &v) ||
                   __builtin_add_overflow(v, s[digits] - '0', &v);
        digits++;
    }
    for (size_t i = 0; digits > 0 && !overflow && i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(s + digits, units[i].suffix) == 0)
            ref = !__builtin_mul_overflow(v, units[i].mult, &want);
    }
    rc = hm_config_parse_duration(s, &ms);
    FUZZ_CHECK((rc == 0) == ref);
    if (rc == 0)
        FUZZ_CHECK(ms >= 0 && ms == want);
    else
        FUZZ_CHECK(rc == HM_EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = hm_xmalloc(size + 1);
    size_t n;
    hm_arena_t arena;

    memcpy(s, data, size);
    s[size] = '\0';
    n = strlen(s);
    hm_arena_init(&arena, 0);
    check_utf8(s, n);
    check_uuid(s, n);
    check_email(&arena, s, n);
    check_phone(&arena, s, n);
    check_json(s, n, data, size);
    check_duration(s, n);
    hm_arena_deinit(&arena);
    free(s);
    return 0;
}
