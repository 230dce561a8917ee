/*
 * log.c - structured logging (hm/log.h): one JSON object per line on stderr.
 *
 * A line is rendered into a stack buffer of at most HM_LOG_LINE_MAX bytes and handed to one
 * write(2), so lines from different threads never interleave. Everything that comes from
 * outside (the message, the daemon name, request and trace ids) is JSON-escaped: quotes,
 * backslashes and control characters are escaped and invalid UTF-8 becomes U+FFFD, so a line
 * is always valid JSON and always exactly one line. Over-long content is cut at a character
 * boundary and the line says "truncated":true.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "hm/err.h"
#include "hm/log.h"

/* Longest line written, newline included. */
#define HM_LOG_LINE_MAX 8192
/* Room always left for the message when the extra fields are long. */
#define HM_LOG_MSG_MIN 512
/* Longest id (request, trace, span) copied into a line. */
#define HM_LOG_ID_MAX 128

int hm__log_level = HM_LOG_INFO;

/* Set once by hm_log_init() before threads start; a string literal. */
static const char *log_daemon = "hm";

/* The call this thread is serving; owned by the runtime (see hm_log_set_ctx). */
static _Thread_local const hm_log_ctx_t *log_ctx;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void hm_log_init(const char *daemon, hm_log_level_t level)
{
    if (daemon != NULL && daemon[0] != '\0')
        log_daemon = daemon;
    hm__log_level = (int)level;
}

int hm_log_level_parse(const char *s, hm_log_level_t *out)
{
    if (s == NULL)
        return HM_EINVAL;
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (hm_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = HM_LOG_WARN;
        return 0;
    }
    return HM_EINVAL;
}

void hm_log_set_ctx(const hm_log_ctx_t *ctx)
{
    log_ctx = ctx;
}

const hm_log_ctx_t *hm_log_get_ctx(void)
{
    return log_ctx;
}

/*
 * Length of the well-formed UTF-8 sequence at p (1..4), or 0 when the bytes there are not one
 * (stray continuation byte, overlong form, surrogate, beyond U+10FFFF, cut short). Reads at
 * most up to the first byte that does not fit, so a NUL terminator stops it.
 */
static unsigned utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    unsigned n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (unsigned i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    }
    return n;
}

/*
 * Appends up to n bytes of s to dst[len..] JSON-escaped. Each unit (a character or its escape)
 * is written whole or not at all, and writing stops at the first unit that does not fit, so
 * dst never ends inside an escape or a multi-byte character. dst stays NUL-terminated.
 * *cut is set when not all of s fit.
 */
static unsigned escape_n(char *dst, unsigned cap, unsigned len, const char *s, size_t n, bool *cut)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    if (cap == 0)
        return len;
    if (len >= cap) {
        *cut = n > 0;
        dst[cap - 1] = '\0';
        return cap - 1;
    }
    while (i < n) {
        char esc[8];
        const char *unit = esc;
        unsigned ulen, step;
        unsigned char c = p[i];

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ulen = 2;
            step = 1;
        } else if (c < 0x20 || c == 0x7F) {
            esc[0] = '\\';
            step = 1;
            ulen = 2;
            switch (c) {
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0xF];
                ulen = 6;
                break;
            }
        } else {
            step = utf8_len(p + i, n - i);
            if (step == 0) {
                unit = "\\ufffd";
                ulen = 6;
                step = 1;
            } else {
                unit = s + i;
                ulen = step;
            }
        }
        if (cap - len <= ulen) { /* keep one byte for the NUL */
            *cut = true;
            break;
        }
        memcpy(dst + len, unit, ulen);
        len += ulen;
        i += step;
    }
    dst[len] = '\0';
    return len;
}

unsigned hm_json_escape(char *dst, unsigned cap, unsigned len, const char *s)
{
    bool cut = false;

    if (s == NULL)
        s = "";
    return escape_n(dst, cap, len, s, strlen(s), &cut);
}

/* Appends a literal that the caller has made room for (or as much of it as fits). */
static unsigned put(char *dst, unsigned cap, unsigned len, const char *s)
{
    size_t n = strlen(s);

    if (len + 1 >= cap)
        return len;
    if (n > cap - len - 1)
        n = cap - len - 1;
    memcpy(dst + len, s, n);
    len += (unsigned)n;
    dst[len] = '\0';
    return len;
}

/* Appends ,"key":"escaped value" with the value cut at max bytes of input. */
static unsigned put_member(char *dst, unsigned cap, unsigned len, const char *key, const char *v,
                           size_t max)
{
    bool cut = false;
    size_t n = strlen(v);

    len = put(dst, cap, len, ",\"");
    len = put(dst, cap, len, key);
    len = put(dst, cap, len, "\":\"");
    len = escape_n(dst, cap, len, v, n < max ? n : max, &cut);
    return put(dst, cap, len, "\"");
}

/* "2024-11-24T21:42:00.123Z" into buf (at least 32 bytes). */
static void format_ts(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* strftime bounds every field by construction; only the milliseconds are added by hand. */
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    unsigned ms = (unsigned)(ts.tv_nsec / 1000000) % 1000u;
    if (n + 6 <= cap) {
        buf[n++] = '.';
        buf[n++] = (char)('0' + ms / 100);
        buf[n++] = (char)('0' + ms / 10 % 10);
        buf[n++] = (char)('0' + ms % 10);
        buf[n++] = 'Z';
        buf[n] = '\0';
    }
}

/* One write(2); a short write (rare, signals or a full pipe) is completed rather than lost. */
static void write_line(const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, buf, n);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += w;
        n -= (size_t)w;
    }
}

void hm_log_write(hm_log_level_t level, const char *fields, const char *fmt, ...)
{
    char msg[HM_LOG_LINE_MAX];
    char tail[3 * (HM_LOG_ID_MAX * 6 + 32)];
    char line[HM_LOG_LINE_MAX];
    char ts[40];
    const hm_log_ctx_t *ctx = log_ctx;
    unsigned len = 0, tlen = 0, flen = 0, room;
    bool cut = false;
    int saved_errno = errno;
    int mlen;
    va_list ap;

    if ((int)level < hm__log_level)
        return;
    if ((int)level < HM_LOG_DEBUG || (int)level > HM_LOG_ERROR)
        level = HM_LOG_ERROR;

    va_start(ap, fmt);
    mlen = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (mlen < 0) {
        snprintf(msg, sizeof msg, "(unformattable log message)");
        mlen = (int)strlen(msg);
    } else if ((size_t)mlen >= sizeof msg) {
        mlen = (int)sizeof msg - 1;
        cut = true;
    }

    /* The members after the message, rendered first so the message gets what is left. */
    tail[0] = '\0';
    if (ctx != NULL) {
        if (ctx->request_id != NULL)
            tlen =
                put_member(tail, sizeof tail, tlen, "request_id", ctx->request_id, HM_LOG_ID_MAX);
        if (ctx->trace_id != NULL)
            tlen = put_member(tail, sizeof tail, tlen, "trace_id", ctx->trace_id, HM_LOG_ID_MAX);
        if (ctx->span_id != NULL)
            tlen = put_member(tail, sizeof tail, tlen, "span_id", ctx->span_id, HM_LOG_ID_MAX);
    }

    format_ts(ts, sizeof ts);
    len = put(line, sizeof line, len, "{\"ts\":\"");
    len = put(line, sizeof line, len, ts);
    len = put(line, sizeof line, len, "\",\"level\":\"");
    len = put(line, sizeof line, len, level_names[level]);
    len = put(line, sizeof line, len, "\"");
    len = put_member(line, sizeof line, len, "daemon", log_daemon, HM_LOG_ID_MAX);
    len = put(line, sizeof line, len, ",\"msg\":\"");

    /* Fields are kept only whole: a cut fragment would not be JSON. */
    if (fields != NULL && fields[0] != '\0') {
        size_t n = strlen(fields);

        if (len + tlen + n + HM_LOG_MSG_MIN + 64 < sizeof line)
            flen = (unsigned)n;
        else
            cut = true;
    }
    /* Reserve: closing quote, tail, ",fields", ",\"truncated\":true", "}\n", NUL. */
    room = (unsigned)sizeof line - (1 + tlen + (flen ? flen + 1 : 0) + 17 + 2 + 1);
    len = escape_n(line, room, len, msg, (size_t)mlen, &cut);
    len = put(line, sizeof line, len, "\"");
    if (tlen > 0) {
        memcpy(line + len, tail, tlen);
        len += tlen;
    }
    if (flen > 0) {
        line[len++] = ',';
        for (unsigned i = 0; i < flen; i++) {
            unsigned char c = (unsigned char)fields[i];

            /* A raw control byte is invalid JSON anyway; never let it break the line. */
            line[len++] = c < 0x20 ? ' ' : (char)c;
        }
    }
    if (cut) {
        memcpy(line + len, ",\"truncated\":true", 17);
        len += 17;
    }
    line[len++] = '}';
    line[len++] = '\n';

    write_line(line, len);
    errno = saved_errno;
}
