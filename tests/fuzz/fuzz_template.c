/*
 * fuzz_template.c - fuzzes recommenderd's email template renderer (services/recommenderd/
 * render.c): mk_compile, mk_names, mk_apply_fields and mk_render in every mode, with a fixed
 * context whose every string is a marker full of the characters escaping must change.
 *
 * Input: byte 0 chooses the mode (HTML, TEXT, LINE by value mod 3) and the output limit
 * (small or 64 KiB by bit 2); the rest, cut at its first NUL, is the template. Seeds in
 * corpus/fuzz_template/ are the golden templates of tests/unit/marketing and docs/samples'
 * demo template behind a mode byte.
 * Asserts:
 *   - compile: 0, or MK_ESYNTAX with a message "line L, column C: ...";
 *   - names: each 1..64 characters of [A-Za-z0-9_-], none twice;
 *   - render: 0 with a NUL-terminated output of strlen == len <= the limit, or MK_ETOOBIG
 *     with no output; twice the same input gives the same bytes;
 *   - HTML: without raw tags ({{{ or {{&) and without the marker in the template, the output
 *     never holds the marker unescaped;
 *   - LINE: a template without control characters renders to an output without them;
 *   - fields: a required field the context lacks is reported missing, one it has never is.
 */
#include <string.h>

#include "fuzz.h"
#include "../../services/recommenderd/render.h"

#define MARK "<mk\"'&>"

static mk_val_t *context(hm_arena_t *a)
{
    mk_val_t *c = mk_obj(a);
    mk_set_str(a, c, "name", MARK);
    mk_set_str(a, c, "first_name", "Ana" MARK "\r\nBcc: x");
    mk_set(a, c, "flag", mk_bool(a, true));
    mk_set(a, c, "off", mk_bool(a, false));
    mk_set(a, c, "empty", mk_list(a));
    mk_val_t *recs = mk_list(a), *tags = mk_list(a);
    for (int i = 0; i < 3; i++) {
        mk_val_t *r = mk_obj(a);
        mk_set_str(a, r, "name", MARK);
        mk_set_str(a, r, "position", i == 0 ? "1" : i == 1 ? "2" : "3");
        mk_set(a, r, "recommendations", recs); /* a cycle: loops must stay bounded */
        mk_push(a, recs, r);
        mk_push(a, tags, mk_str(a, MARK));
    }
    mk_set(a, c, "recommendations", recs);
    mk_set(a, c, "tags", tags);
    mk_val_t *hotel = mk_obj(a), *addr = mk_obj(a);
    mk_set_str(a, addr, "city", MARK);
    mk_set(a, hotel, "address", addr);
    mk_set_str(a, hotel, "name", MARK);
    mk_set(a, c, "hotel", hotel);
    return c;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    mk_mode_t mode = data[0] % 3 == 0 ? MK_HTML : data[0] % 3 == 1 ? MK_TEXT : MK_LINE;
    size_t max = (data[0] & 4) ? 65536 : 512;
    char *src = hm_arena_strndup(&a, (const char *)data + 1, size - 1);
    char err[256];
    mk_tmpl_t *t;
    int rc = mk_compile(&a, src, &t, err, sizeof err);
    if (rc != 0) {
        FUZZ_CHECK(rc == MK_ESYNTAX);
        FUZZ_CHECK(strncmp(err, "line ", 5) == 0 && strstr(err, ", column ") != NULL);
        hm_arena_deinit(&a);
        return 0;
    }
    size_t nn;
    const char **names = mk_names(&a, t, &nn);
    for (size_t i = 0; i < nn; i++) {
        FUZZ_CHECK(name_ok(names[i]));
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(names[i], names[j]) != 0);
    }

    mk_val_t *ctx = context(&a);
    mk_field_t f[2] = {{"first_name", true, NULL}, {"nowhere_to_be_found", true, NULL}};
    const char *missing = NULL;
    FUZZ_CHECK(mk_apply_fields(&a, ctx, f, 2, &missing) == MK_EMISSING);
    FUZZ_CHECK(missing && strcmp(missing, "nowhere_to_be_found") == 0);
    FUZZ_CHECK(mk_apply_fields(&a, ctx, f, 1, &missing) == 0);

    char *out, *again;
    size_t len, len2;
    rc = mk_render(&a, t, ctx, mode, max, &out, &len);
    int rc2 = mk_render(&a, t, ctx, mode, max, &again, &len2);
    FUZZ_CHECK(rc == rc2);
    if (rc != 0) {
        FUZZ_CHECK(rc == MK_ETOOBIG && out == NULL);
        hm_arena_deinit(&a);
        return 0;
    }
    FUZZ_CHECK(out != NULL && strlen(out) == len && len <= max);
    FUZZ_CHECK(len == len2 && memcmp(out, again, len) == 0);
    if (mode == MK_HTML && !strstr(src, "{{{") && !strstr(src, "{{&") && !strstr(src, "<mk") &&
        !strstr(src, "\"'&>"))
        FUZZ_CHECK(strstr(out, "<mk") == NULL && strstr(out, "\"'&>") == NULL);
    if (mode == MK_LINE) {
        bool ctl = false;
        for (const char *p = src; *p && !ctl; p++)
            ctl = (unsigned char)*p < 0x20 || *p == 0x7f;
        if (!ctl)
            for (const char *p = out; *p; p++)
                FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
    }
    hm_arena_deinit(&a);
    return 0;
}
