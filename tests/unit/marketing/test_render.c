/*
 * test_render.c - recommenderd's email template renderer (services/recommenderd/render.c).
 *
 * Golden files in golden/: for each case <name>.mustache (the template), <name>.json (mode
 * "html" | "text" | "line", the personalization "fields" and the "context" as JSON: strings,
 * booleans, lists and objects) and either <name>.out (the exact expected output) or <name>.err
 * (text the error message must contain). HM_UPDATE_GOLDEN=1 rewrites the .out files from the
 * current output (review the diff before committing). Then: the demo template of docs/samples,
 * the output and step limits, top-level names, and the variant pick (stable, weighted).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "hm/arena.h"
#include "render.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    size_t got = fread(p, 1, (size_t)n, f);
    fclose(f);
    p[got] = '\0';
    if (len)
        *len = got;
    return p;
}

static mk_val_t *from_json(hm_arena_t *a, json_t *j)
{
    if (json_is_string(j))
        return mk_str(a, hm_arena_strdup(a, json_string_value(j)));
    if (json_is_boolean(j))
        return mk_bool(a, json_is_true(j));
    if (json_is_array(j)) {
        mk_val_t *l = mk_list(a);
        size_t i;
        json_t *x;
        json_array_foreach(j, i, x) mk_push(a, l, from_json(a, x));
        return l;
    }
    if (json_is_object(j)) {
        mk_val_t *o = mk_obj(a);
        const char *k;
        json_t *x;
        json_object_foreach(j, k, x) mk_set(a, o, hm_arena_strdup(a, k), from_json(a, x));
        return o;
    }
    return mk_str(a, NULL);
}

/* Renders one golden case; returns its output or error text (heap). */
static char *run_case(const char *name, bool *failed)
{
    hm_arena_t a;
    hm_arena_init(&a, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.mustache", GOLDEN_DIR, name);
    char *src = slurp(path, NULL);
    if (!src)
        fail_msg("cannot read %s", path);
    snprintf(path, sizeof path, "%s/%s.json", GOLDEN_DIR, name);
    json_error_t je;
    json_t *spec = json_load_file(path, 0, &je);
    if (!spec)
        fail_msg("%s: %s", path, je.text);
    const char *mode_s = json_string_value(json_object_get(spec, "mode"));
    mk_mode_t mode = strcmp(mode_s, "html") == 0   ? MK_HTML
                     : strcmp(mode_s, "text") == 0 ? MK_TEXT
                                                   : MK_LINE;
    mk_val_t *ctx = from_json(&a, json_object_get(spec, "context"));
    json_t *fields = json_object_get(spec, "fields");
    size_t nf = json_array_size(fields);
    mk_field_t *f = hm_arena_zalloc(&a, (nf + 1) * sizeof *f);
    for (size_t i = 0; i < nf; i++) {
        json_t *x = json_array_get(fields, i);
        f[i].name = hm_arena_strdup(&a, json_string_value(json_object_get(x, "name")));
        f[i].required = json_is_true(json_object_get(x, "required"));
        const char *d = json_string_value(json_object_get(x, "default"));
        f[i].def = d ? hm_arena_strdup(&a, d) : NULL;
    }
    char err[256], *out = NULL;
    mk_tmpl_t *t;
    *failed = true;
    const char *missing;
    if (mk_compile(&a, src, &t, err, sizeof err) != 0) {
        out = strdup(err);
    } else if (mk_apply_fields(&a, ctx, f, nf, &missing) != 0) {
        snprintf(err, sizeof err, "missing required field: %s", missing);
        out = strdup(err);
    } else {
        char *r;
        size_t len;
        int rc = mk_render(&a, t, ctx, mode, 1 << 20, &r, &len);
        if (rc != 0) {
            snprintf(err, sizeof err, "render failed: %d", rc);
            out = strdup(err);
        } else {
            assert_int_equal(strlen(r), len);
            out = strdup(r);
            *failed = false;
        }
    }
    json_decref(spec);
    free(src);
    hm_arena_deinit(&a);
    return out;
}

static void golden(const char *name)
{
    bool failed;
    char *got = run_case(name, &failed);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.out", GOLDEN_DIR, name);
    char *want = slurp(path, NULL);
    if (want) {
        if (failed)
            fail_msg("%s: expected output, got error: %s", name, got);
        if (strcmp(got, want) != 0) {
            const char *upd = getenv("HM_UPDATE_GOLDEN");
            if (upd && strcmp(upd, "1") == 0) {
                FILE *f = fopen(path, "wb");
                fputs(got, f);
                fclose(f);
            } else {
                fail_msg("%s: output differs\n--- expected\n%s--- got\n%s", name, want, got);
            }
        }
    } else {
        snprintf(path, sizeof path, "%s/%s.err", GOLDEN_DIR, name);
        want = slurp(path, NULL);
        if (!want)
            fail_msg("%s: neither .out nor .err", name);
        want[strcspn(want, "\n")] = '\0';
        if (!failed)
            fail_msg("%s: expected error \"%s\", got output:\n%s", name, want, got);
        if (!strstr(got, want))
            fail_msg("%s: expected error \"%s\", got \"%s\"", name, want, got);
    }
    free(want);
    free(got);
}

static void test_escaping(void **state)
{
    (void)state;
    golden("escaping");
    golden("escaping_text");
    golden("subject_line");
}

static void test_sections(void **state)
{
    (void)state;
    golden("sections");
    golden("inverted");
}

static void test_defaults(void **state)
{
    (void)state;
    golden("defaults");
}

static void test_missing_required(void **state)
{
    (void)state;
    golden("missing_required");
}

static void test_syntax_errors(void **state)
{
    (void)state;
    golden("unclosed");
    golden("mismatched");
    golden("partial");
    golden("bad_name");
    golden("unclosed_tag");
}

/* The demo template renders with the demo data the way docs/samples/weekly_picks.html shows,
 * minus the generated parts: checked for its personal parts and that no tag is left. */
static void test_demo_template(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    char *src = slurp(SAMPLES_DIR "/weekly_picks.html.mustache", NULL);
    assert_non_null(src);
    mk_tmpl_t *t;
    char err[256];
    assert_int_equal(mk_compile(&a, src, &t, err, sizeof err), 0);
    mk_val_t *ctx = mk_obj(&a);
    mk_set_str(&a, ctx, "first_name", "Zoë <script>");
    mk_set_str(&a, ctx, "hotel_name", "Casa Azul");
    mk_set_str(&a, ctx, "unsubscribe_url", "https://example.test/u?t=abc&x=1");
    mk_val_t *recs = mk_list(&a);
    for (int i = 0; i < 3; i++) {
        mk_val_t *r = mk_obj(&a);
        mk_set_str(&a, r, "position", hm_arena_printf(&a, "%d", i + 1));
        mk_set_str(&a, r, "name", hm_arena_printf(&a, "Item %d", i + 1));
        mk_push(&a, recs, r);
    }
    mk_set(&a, ctx, "recommendations", recs);
    char *out;
    size_t len;
    assert_int_equal(mk_render(&a, t, ctx, MK_HTML, 1 << 20, &out, &len), 0);
    assert_non_null(strstr(out, "Dear Zoë &lt;script&gt;,"));
    assert_non_null(strstr(out, "<strong>3. Item 3</strong>"));
    assert_non_null(strstr(out, "https://example.test/u?t=abc&amp;x=1"));
    assert_null(strstr(out, "still learning"));
    assert_null(strstr(out, "{{"));
    free(src);
    hm_arena_deinit(&a);
}

static void test_limits(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    mk_tmpl_t *t;
    char err[256];
    /* nested loops over a list: output and steps bounded */
    assert_int_equal(
        mk_compile(&a, "{{#l}}{{#l}}{{#l}}{{#l}}xx{{/l}}{{/l}}{{/l}}{{/l}}", &t, err, sizeof err),
        0);
    mk_val_t *ctx = mk_obj(&a), *l = mk_list(&a);
    for (int i = 0; i < 100; i++)
        mk_push(&a, l, mk_bool(&a, true));
    mk_set(&a, ctx, "l", l);
    char *out;
    size_t len;
    assert_int_equal(mk_render(&a, t, ctx, MK_TEXT, 4096, &out, &len), MK_ETOOBIG);
    assert_null(out);
    assert_int_equal(
        mk_compile(&a, "{{#l}}{{#l}}{{#l}}{{#l}}{{/l}}{{/l}}{{/l}}{{/l}}", &t, err, sizeof err), 0);
    assert_int_equal(mk_render(&a, t, ctx, MK_TEXT, 4096, &out, &len), MK_ETOOBIG);
    /* exactly at the limit is fine */
    assert_int_equal(mk_compile(&a, "{{#l}}x{{/l}}", &t, err, sizeof err), 0);
    assert_int_equal(mk_render(&a, t, ctx, MK_TEXT, 100, &out, &len), 0);
    assert_int_equal(len, 100);
    assert_int_equal(mk_render(&a, t, ctx, MK_TEXT, 99, &out, &len), MK_ETOOBIG);
    /* 32 nested sections compile, 33 do not */
    char deep[33 * 16 + 1] = "";
    for (int i = 0; i < 33; i++)
        strcat(deep, "{{#a}}");
    assert_int_equal(mk_compile(&a, deep, &t, err, sizeof err), MK_ESYNTAX);
    assert_non_null(strstr(err, "nested more than 32"));
    hm_arena_deinit(&a);
}

static void test_names(void **state)
{
    (void)state;
    hm_arena_t a;
    hm_arena_init(&a, 0);
    mk_tmpl_t *t;
    char err[256];
    assert_int_equal(mk_compile(&a,
                                "{{first_name}} {{hotel.name}} {{#recommendations}}{{name}}{{/"
                                "recommendations}}{{^vip}}{{first_name}}{{city}}{{/vip}}",
                                &t, err, sizeof err),
                     0);
    size_t n;
    const char **v = mk_names(&a, t, &n);
    assert_int_equal(n, 5);
    assert_string_equal(v[0], "first_name");
    assert_string_equal(v[1], "hotel");
    assert_string_equal(v[2], "recommendations");
    assert_string_equal(v[3], "vip");
    assert_string_equal(v[4], "city");
    hm_arena_deinit(&a);
}

static void test_pick(void **state)
{
    (void)state;
    int32_t w[3] = {50, 50, 0};
    int count[3] = {0};
    char key[128];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "0190f1c2-0000-7000-8000-%012d/spring/weekly_picks", i);
        int k = mk_pick(key, w, 3);
        assert_true(k >= 0 && k < 2);
        assert_int_equal(k, mk_pick(key, w, 3)); /* stable */
        count[k]++;
    }
    /* 50/50 within a generous band; a weight of 0 is never picked */
    assert_in_range(count[0], 850, 1150);
    assert_int_equal(count[2], 0);
    int32_t z[2] = {0, -3};
    assert_int_equal(mk_pick("x", z, 2), -1);
    /* the bucket is part of the contract (assignments must survive a rebuild) */
    assert_true(mk_hash("") == 0xcbf29ce484222325ULL);
    assert_true(mk_hash("a") == 0xaf63dc4c8601ec8cULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaping),      cmocka_unit_test(test_sections),
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_syntax_errors), cmocka_unit_test(test_demo_template),
        cmocka_unit_test(test_limits),        cmocka_unit_test(test_names),
        cmocka_unit_test(test_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
