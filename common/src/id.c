/*
 * id.c - UUID generation and validation, UTF-8 validation (see hm/id.h).
 */
#include "hm/id.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "google/protobuf/timestamp.pb-c.h"
#include "hm/arena.h"
#include "hm/server.h"

static void format(const unsigned char b[16], char out[HM_UUID_LEN + 1])
{
    snprintf(out, HM_UUID_LEN + 1,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

void hm_uuid_v4(char out[HM_UUID_LEN + 1])
{
    unsigned char b[16];
    hm_random_bytes(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format(b, out);
}

void hm_uuid_v7(char out[HM_UUID_LEN + 1])
{
    unsigned char b[16];
    hm_random_bytes(b, sizeof(b));
    uint64_t ms = (uint64_t)hm_now_ms();
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x70);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format(b, out);
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool hm_uuid_valid(const char *s)
{
    if (!s || strlen(s) != HM_UUID_LEN)
        return false;
    for (int i = 0; i < HM_UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !is_hex(s[i]))
            return false;
    }
    return true;
}

bool hm_utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!s)
        return true;
    while (*s) {
        unsigned c = *s;
        int n;
        unsigned min;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (s[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        s += n + 1;
    }
    return true;
}

size_t hm_utf8_len(const char *str)
{
    size_t n = 0;
    for (const unsigned char *s = (const unsigned char *)str; s && *s; s++)
        if ((*s & 0xc0) != 0x80)
            n++;
    return n;
}

Google__Protobuf__Timestamp *hm_timestamp_from_us(hm_arena_t *arena, int64_t us)
{
    Google__Protobuf__Timestamp *ts = hm_arena_alloc(arena, sizeof(*ts));
    google__protobuf__timestamp__init(ts);
    int64_t sec = us / 1000000, rem = us % 1000000;
    if (rem < 0) {
        rem += 1000000;
        sec -= 1;
    }
    ts->seconds = sec;
    ts->nanos = (int32_t)(rem * 1000);
    return ts;
}

int64_t hm_timestamp_to_us(const Google__Protobuf__Timestamp *ts)
{
    return ts ? ts->seconds * 1000000 + ts->nanos / 1000 : 0;
}

void hm_str_trim(const char **s, size_t *n)
{
    while (*n > 0 && isspace((unsigned char)(*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

bool hm_str_is_token(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-')
            return false;
    }
    return true;
}
