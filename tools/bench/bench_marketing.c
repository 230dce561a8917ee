/*
 * bench_marketing.c - recommenderd's marketing rendering in process (issue 8's budgets: an
 * email render under 2 ms, a 1200x800 vision-board PNG under 50 ms). Driven by
 * tools/bench/bench-marketing, which also measures the RPCs through the daemon.
 *
 *   email   what GenerateEmail does per request besides I/O: compile the built-in weekly_picks
 *           template (subject, HTML, text; docs/samples), apply its personalization fields and
 *           render the three parts with a guest, two segments and 4 recommendations
 *   board   mkt_board_build (10 sections, theme) and mkt_board_png at 1200x800: tiles, fitted
 *           text, one item image from a PNG file (written to a temporary asset folder first),
 *           three drawn placeholders, PNG encoding
 *
 * usage: bench_marketing [EMAIL_ITERATIONS [BOARD_ITERATIONS]]   (defaults 2000 and 100)
 * Prints one line per case with the median, p90 and p99 in microseconds, and a JSON line.
 */
#include <cairo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "marketing.h"
#include "render.h"

extern const unsigned char mk_default_subject[], mk_default_html[], mk_default_text[];

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *name, double *v, int n, double *median)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    *median = v[n / 2];
    printf("%-6s n=%d median %.0f us  p90 %.0f us  p99 %.0f us  max %.0f us\n", name, n, v[n / 2],
           v[n * 9 / 10], v[n * 99 / 100], v[n - 1]);
}

static mk_val_t *context(hm_arena_t *a)
{
    mk_val_t *c = mk_obj(a);
    mk_set_str(a, c, "first_name", "Zoë");
    mk_set_str(a, c, "name", "Zoë Marie O'Neil");
    mk_set_str(a, c, "language", "pt");
    mk_set_str(a, c, "hotel_name", "Casa Azul & Co");
    mk_set_str(a, c, "unsubscribe_url",
               "https://hotel.test/unsubscribe?token=AZBVx1a2b3c4d5e6f7g8h9i0jKLMNOPQRSTUVWXYZab");
    mk_val_t *segs = mk_list(a);
    const char *sn[2] = {"Foodie", "Returning guest"};
    for (int i = 0; i < 2; i++) {
        mk_val_t *s = mk_obj(a);
        mk_set_str(a, s, "name", sn[i]);
        mk_push(a, segs, s);
    }
    mk_set(a, c, "segments", segs);
    mk_val_t *recs = mk_list(a);
    const char *names[4] = {"Sunrise Spa Ritual", "Truffle Tasting Menu", "Douro Wine Flight",
                            "Sunset <Boat> Trip & Dinner"};
    for (int i = 0; i < 4; i++) {
        mk_val_t *r = mk_obj(a);
        mk_set_str(a, r, "position", i == 0 ? "1" : i == 1 ? "2" : i == 2 ? "3" : "4");
        mk_set_str(a, r, "name", names[i]);
        mk_set_str(a, r, "price", "EUR 45.00");
        mk_set_str(a, r, "reason", "popular with guests like you");
        mk_set_str(a, r, "image_url", i % 2 ? "" : "https://cdn.hotel.test/items/spa.jpg");
        mk_set_str(a, r, "link_url",
                   "https://hotel.test/items/spa?email=0190f1c2-7000-7abc-8def-0123456789ab&rec="
                   "0190f1c2-7001-7abc-8def-0123456789ab");
        mk_push(a, recs, r);
    }
    mk_set(a, c, "recommendations", recs);
    mk_set_str(a, c, "top_category", "spa");
    return c;
}

static int email_once(hm_arena_t *a, size_t *bytes)
{
    const char *src[3] = {(const char *)mk_default_subject, (const char *)mk_default_html,
                          (const char *)mk_default_text};
    const mk_mode_t modes[3] = {MK_LINE, MK_HTML, MK_TEXT};
    mk_val_t *ctx = context(a);
    mk_field_t f[3] = {
        {"first_name", true, ""}, {"hotel_name", true, ""}, {"unsubscribe_url", true, ""}};
    if (mk_apply_fields(a, ctx, f, 3, NULL) != 0)
        return -1;
    *bytes = 0;
    for (int i = 0; i < 3; i++) {
        mk_tmpl_t *t;
        char err[200], *out;
        size_t len;
        if (mk_compile(a, src[i], &t, err, sizeof err) != 0 ||
            mk_render(a, t, ctx, modes[i], 1 << 20, &out, &len) != 0)
            return -1;
        *bytes += len;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int ne = argc > 1 ? atoi(argv[1]) : 2000, nb = argc > 2 ? atoi(argv[2]) : 100;
    if (ne < 10 || nb < 10) {
        fprintf(stderr, "usage: bench_marketing [EMAIL_ITERATIONS>=10 [BOARD_ITERATIONS>=10]]\n");
        return 2;
    }
    hm_arena_t a;
    hm_arena_init(&a, 64 * 1024);

    double *te = malloc((size_t)ne * sizeof *te);
    size_t bytes = 0;
    for (int i = 0; i < ne + ne / 10; i++) { /* the first tenth warms caches up, not counted */
        double t0 = now_us();
        if (email_once(&a, &bytes) != 0) {
            fprintf(stderr, "bench_marketing: the email did not render\n");
            return 1;
        }
        double t = now_us() - t0;
        if (i >= ne / 10)
            te[i - ne / 10] = t;
        hm_arena_reset(&a);
    }

    /* an asset folder with one item image */
    char dir[] = "/tmp/hm-bench-marketing.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/spa.png", dir);
    cairo_surface_t *img = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 320, 240);
    cairo_t *cr = cairo_create(img);
    cairo_pattern_t *g = cairo_pattern_create_linear(0, 0, 0, 240);
    cairo_pattern_add_color_stop_rgb(g, 0, 0.97, 0.7, 0.55);
    cairo_pattern_add_color_stop_rgb(g, 1, 0.1, 0.54, 0.62);
    cairo_set_source(cr, g);
    cairo_paint(cr);
    cairo_pattern_destroy(g);
    cairo_destroy(cr);
    cairo_surface_write_to_png(img, path);
    cairo_surface_destroy(img);

    mkt_item_t items[4] = {
        {"spa-sunrise-ritual", "Sunrise Spa Ritual", "spa", "", "", "spa.png", "EUR", 4500, true},
        {"truffle-tasting-menu", "Truffle Tasting Menu", "dining", "", "", "", "EUR", 8900, true},
        {"douro-wine-flight", "Douro Wine Flight", "wine", "", "", "missing.png", "EUR", 3200,
         true},
        {"sunset-boat-trip", "Sunset Boat Trip with a very long name that must be fitted",
         "outdoor", "", "", "", "EUR", 6000, true}};
    char *interests[2] = {"spa", "wine_tasting"};
    mkt_board_warm_up();
    double *tb = malloc((size_t)nb * sizeof *tb);
    size_t png_len = 0;
    for (int i = 0; i < nb + nb / 10; i++) {
        double t0 = now_us();
        Hospitality__Marketing__V1__VisionBoard *b =
            mkt_board_build(&a, "0190f1c2-6b4e-7c3a-9d2e-5f8a1b2c3d4e", "Zoë", interests, 2, items,
                            4, "warm_evening", 1200, 800);
        const char *files[10] = {NULL};
        for (size_t k = 0; k < b->n_sections; k++)
            for (int j = 0; j < 4; j++)
                if (strcmp(b->sections[k]->item_id, items[j].id) == 0)
                    files[k] = items[j].image_file;
        uint8_t *png;
        if (mkt_board_png(&a, b, files, dir, &png, &png_len) != 0) {
            fprintf(stderr, "bench_marketing: the board did not render\n");
            return 1;
        }
        double t = now_us() - t0;
        if (i >= nb / 10)
            tb[i - nb / 10] = t;
        hm_arena_reset(&a);
    }
    unlink(path);
    rmdir(dir);

    double me, mb;
    report("email", te, ne, &me);
    report("board", tb, nb, &mb);
    printf("email output %zu bytes (subject, HTML, text); board PNG %zu bytes\n", bytes, png_len);
    printf("{\"email_median_us\": %.0f, \"board_png_median_us\": %.0f, \"email_bytes\": %zu, "
           "\"png_bytes\": %zu}\n",
           me, mb, bytes, png_len);
    free(te);
    free(tb);
    hm_arena_deinit(&a);
    mkt_board_shutdown();
    return 0;
}
