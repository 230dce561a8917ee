/*
 * board_png.c - a vision board drawn with cairo into a PNG (docs/marketing.md).
 *
 * Geometry (mkt_board_rect): each section's tile is its grid rectangle, a rounded rectangle
 * (radius 10) filled with its background_color (else the theme's primary colour), with an
 * 8-pixel bar of the theme's accent colour along its top; the 14 pixels inside its left and
 * right edges hold no content, so a reader (tests/integration/test_marketing.py) can find
 * every tile's colour where the layout says. Titles and text are wrapped and shrunk until they
 * fit their box (cut with an ellipsis at the smallest size). Product tiles show the item's
 * image from a local file (PNG, under HM_REC_ASSET_DIR, named by the catalogue's image_file,
 * never fetched), else a drawn placeholder. Deterministic: the same board gives the same bytes
 * with the same fonts.
 */
#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/log.h"
#include "marketing.h"

#define SEC(x)  HOSPITALITY__MARKETING__V1__SECTION_TYPE__SECTION_TYPE_##x
#define PAD     14
#define BAR     8
#define RADIUS  10
#define LINE_SP 1.22

typedef struct rgb {
    double r, g, b;
} rgb_t;

static rgb_t color(const char *hex, rgb_t def)
{
    if (!hex || hex[0] != '#' || strlen(hex) != 7)
        return def;
    char *e;
    long v = strtol(hex + 1, &e, 16);
    if (*e)
        return def;
    return (rgb_t){((v >> 16) & 255) / 255.0, ((v >> 8) & 255) / 255.0, (v & 255) / 255.0};
}

static void set(cairo_t *cr, rgb_t c)
{
    cairo_set_source_rgb(cr, c.r, c.g, c.b);
}

static rgb_t mix(rgb_t a, rgb_t b, double t)
{
    return (rgb_t){a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

static void rounded(cairo_t *cr, double x, double y, double w, double h, double r)
{
    cairo_new_sub_path(cr);
    cairo_arc(cr, x + w - r, y + r, r, -1.5707963267948966, 0);
    cairo_arc(cr, x + w - r, y + h - r, r, 0, 1.5707963267948966);
    cairo_arc(cr, x + r, y + h - r, r, 1.5707963267948966, 3.141592653589793);
    cairo_arc(cr, x + r, y + r, r, 3.141592653589793, 4.71238898038469);
    cairo_close_path(cr);
}

/* ---- text fitted to a box ---- */

/* Byte length of the UTF-8 sequence starting with c. */
static size_t u8len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static double width_of(cairo_t *cr, const char *s, size_t n, char *buf)
{
    memcpy(buf, s, n);
    buf[n] = '\0';
    cairo_text_extents_t e;
    cairo_text_extents(cr, buf, &e);
    return e.x_advance;
}

/* Breaks text into lines no wider than w at the current font: line starts and lengths in
 * starts/lens (at most max lines); returns the number of lines needed (may exceed max). */
static size_t wrap(cairo_t *cr, const char *text, double w, size_t max, const char **starts,
                   size_t *lens, char *buf)
{
    size_t n = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        /* take words while they fit */
        size_t len = 0, fit = 0;
        for (;;) {
            size_t end = len;
            while (p[end] == ' ')
                end++;
            if (!p[end])
                break;
            size_t word = end;
            while (p[word] && p[word] != ' ')
                word += u8len((unsigned char)p[word]);
            if (width_of(cr, p, word, buf) > w)
                break;
            len = word;
            fit = word;
            if (!p[word])
                break;
        }
        if (fit == 0) { /* one word wider than the line: cut it by characters */
            size_t k = u8len((unsigned char)p[0]);
            while (p[k] && p[k] != ' ' && width_of(cr, p, k + u8len((unsigned char)p[k]), buf) <= w)
                k += u8len((unsigned char)p[k]);
            fit = k;
        }
        if (n < max) {
            starts[n] = p;
            lens[n] = fit;
        }
        n++;
        p += fit;
    }
    return n;
}

/*
 * Draws text in the box (x, y, w, h), top-aligned: the largest size from max_px down to
 * min_px at which every line fits; at min_px, as many lines as fit, the last cut with an
 * ellipsis. Returns the height used.
 */
static double fit_text(cairo_t *cr, const char *family, bool bold, const char *text, double x,
                       double y, double w, double h, int max_px, int min_px)
{
    if (!text || !*text || w <= 4 || h <= 4)
        return 0;
    size_t tl = strlen(text);
    char *buf = malloc(tl + 8);
    const char *starts[32];
    size_t lens[32], n = 0;
    int size = max_px;
    cairo_select_font_face(cr, family, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    for (; size >= min_px; size--) {
        cairo_set_font_size(cr, size);
        size_t room = (size_t)(h / (size * LINE_SP));
        if (room == 0)
            continue;
        n = wrap(cr, text, w, 32, starts, lens, buf);
        if (n <= room && n <= 32)
            break;
    }
    bool cut = false;
    if (size < min_px) { /* nothing fits: the smallest size, lines cut */
        size = min_px;
        cairo_set_font_size(cr, size);
        size_t room = (size_t)(h / (size * LINE_SP));
        if (room == 0)
            room = 1;
        n = wrap(cr, text, w, 32, starts, lens, buf);
        if (n > room) {
            n = room;
            cut = true;
        }
        if (n > 32)
            n = 32;
    }
    cairo_font_extents_t fe;
    cairo_font_extents(cr, &fe);
    cairo_save(cr);
    cairo_rectangle(cr, x, y, w, h);
    cairo_clip(cr);
    for (size_t i = 0; i < n; i++) {
        size_t len = lens[i];
        memcpy(buf, starts[i], len);
        buf[len] = '\0';
        if (cut && i == n - 1) { /* shorten until "line…" fits */
            for (;;) {
                char *t = malloc(len + 4);
                memcpy(t, starts[i], len);
                memcpy(t + len, "\xE2\x80\xA6", 4);
                cairo_text_extents_t e;
                cairo_text_extents(cr, t, &e);
                bool ok = e.x_advance <= w || len == 0;
                if (ok) {
                    memcpy(buf, t, len + 4);
                    free(t);
                    break;
                }
                free(t);
                do /* back one UTF-8 character */
                    len--;
                while (len > 0 && ((unsigned char)starts[i][len] & 0xC0) == 0x80);
            }
        }
        cairo_move_to(cr, x, y + fe.ascent + i * size * LINE_SP);
        cairo_show_text(cr, buf);
    }
    cairo_restore(cr);
    free(buf);
    return n * size * LINE_SP;
}

/* ---- images ---- */

/* An image file under dir, or NULL: a relative path of [A-Za-z0-9_./-] without "..", a PNG. */
static cairo_surface_t *load_image(const char *dir, const char *file)
{
    if (!dir || !*dir || !file || !*file || file[0] == '/' || strstr(file, "..") ||
        strlen(file) > 200)
        return NULL;
    for (const char *p = file; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '/' || *p == '-'))
            return NULL;
    size_t n = strlen(file);
    if (n < 5 || strcmp(file + n - 4, ".png") != 0)
        return NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    cairo_surface_t *s = cairo_image_surface_create_from_png(path);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
        cairo_surface_destroy(s);
        return NULL;
    }
    return s;
}

/* The image scaled to cover (x, y, w, h), centred, clipped to a rounded box. */
static void draw_image(cairo_t *cr, cairo_surface_t *img, double x, double y, double w, double h)
{
    int iw = cairo_image_surface_get_width(img), ih = cairo_image_surface_get_height(img);
    if (iw <= 0 || ih <= 0)
        return;
    double s = w / iw > h / ih ? w / iw : h / ih;
    cairo_save(cr);
    rounded(cr, x, y, w, h, 6);
    cairo_clip(cr);
    cairo_translate(cr, x + (w - iw * s) / 2, y + (h - ih * s) / 2);
    cairo_scale(cr, s, s);
    cairo_set_source_surface(cr, img, 0, 0);
    cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_GOOD);
    cairo_paint(cr);
    cairo_restore(cr);
}

/* A drawn picture placeholder: a tinted box with hills and a sun. */
static void draw_placeholder(cairo_t *cr, rgb_t tile, rgb_t accent, double x, double y, double w,
                             double h)
{
    cairo_save(cr);
    rounded(cr, x, y, w, h, 6);
    cairo_clip(cr);
    set(cr, mix(tile, accent, 0.12));
    cairo_paint(cr);
    set(cr, mix(tile, accent, 0.35));
    cairo_move_to(cr, x, y + h);
    cairo_line_to(cr, x + w * 0.35, y + h * 0.45);
    cairo_line_to(cr, x + w * 0.6, y + h * 0.75);
    cairo_line_to(cr, x + w * 0.75, y + h * 0.6);
    cairo_line_to(cr, x + w, y + h);
    cairo_close_path(cr);
    cairo_fill(cr);
    double r = (w < h ? w : h) * 0.12;
    set(cr, mix(tile, accent, 0.6));
    cairo_arc(cr, x + w * 0.78, y + h * 0.28, r, 0, 6.283185307179586);
    cairo_fill(cr);
    cairo_restore(cr);
}

/* ---- the board ---- */

typedef struct png_buf {
    uint8_t *p;
    size_t n, cap;
} png_buf_t;

static cairo_status_t png_write(void *closure, const unsigned char *data, unsigned int len)
{
    png_buf_t *b = closure;
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->n + len)
            cap *= 2;
        b->p = hm_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return CAIRO_STATUS_SUCCESS;
}

static void draw_section(cairo_t *cr, const Hospitality__Marketing__V1__VisionBoard *b,
                         const Hospitality__Marketing__V1__VisionBoardSection *s, const char *file,
                         const char *asset_dir)
{
    const Hospitality__Marketing__V1__BoardTheme *t = b->theme;
    rgb_t primary = color(t->primary_color, (rgb_t){0.95, 0.95, 0.95});
    rgb_t tile = color(s->background_color, primary);
    rgb_t accent = color(t->accent_color, (rgb_t){0.8, 0.3, 0.2});
    rgb_t text = color(t->text_color, (rgb_t){0.1, 0.1, 0.1});
    int x, y, w, h;
    mkt_board_rect(b->layout, s->position, &x, &y, &w, &h);
    if (w <= 2 * PAD || h <= 2 * BAR)
        return;
    cairo_save(cr);
    rounded(cr, x, y, w, h, RADIUS);
    set(cr, tile);
    cairo_fill_preserve(cr);
    cairo_clip(cr);
    set(cr, accent);
    cairo_rectangle(cr, x, y, w, BAR);
    cairo_fill(cr);
    cairo_restore(cr);

    const char *title_font = t->title_font_family[0] ? t->title_font_family : "DejaVu Serif";
    const char *body_font = t->font_family[0] ? t->font_family : "DejaVu Sans";
    double cx = x + PAD, cw = w - 2 * PAD, top = y + BAR + 10, bottom = y + h - 10;
    bool big = s->position->height > 1;
    int tmax = s->type == SEC(INSPIRATION) && big ? 34 : big ? 24 : 18;
    double title_h = big ? (h * 0.28 < 84 ? h * 0.28 : 84) : (h - BAR - 20) * 0.5;
    set(cr, text);
    double used = fit_text(cr, title_font, true, s->title, cx, top, cw, title_h, tmax, 9);
    top += used + 6;
    if (s->type == SEC(PRODUCT)) {
        double text_h = big ? 40 : 20;
        double img_h = bottom - top - text_h - 6;
        if (img_h > 20) {
            cairo_surface_t *img = load_image(asset_dir, file);
            if (img) {
                draw_image(cr, img, cx, top, cw, img_h);
                cairo_surface_destroy(img);
            } else {
                draw_placeholder(cr, tile, accent, cx, top, cw, img_h);
            }
            top += img_h + 6;
        }
        set(cr, mix(text, tile, 0.25));
        fit_text(cr, body_font, false, s->text, cx, top, cw, bottom - top, big ? 16 : 13, 8);
    } else {
        set(cr, mix(text, tile, 0.2));
        fit_text(cr, body_font, false, s->text, cx, top, cw, bottom - top, big ? 20 : 13, 8);
    }
}

int mkt_board_png(hm_arena_t *a, const Hospitality__Marketing__V1__VisionBoard *b,
                  const char *const *files, const char *asset_dir, uint8_t **png, size_t *len)
{
    const Hospitality__Marketing__V1__BoardLayout *l = b->layout;
    if (!l || l->width_px <= 0 || l->height_px <= 0 || l->columns <= 0 || l->rows <= 0)
        return HM_EINVAL;
    cairo_surface_t *surf =
        cairo_image_surface_create(CAIRO_FORMAT_RGB24, l->width_px, l->height_px);
    cairo_t *cr = cairo_create(surf);
    /* grayscale antialiasing without hinting: the same pixels whatever the font settings */
    cairo_font_options_t *fo = cairo_font_options_create();
    cairo_font_options_set_antialias(fo, CAIRO_ANTIALIAS_GRAY);
    cairo_font_options_set_hint_style(fo, CAIRO_HINT_STYLE_NONE);
    cairo_font_options_set_hint_metrics(fo, CAIRO_HINT_METRICS_OFF);
    cairo_set_font_options(cr, fo);
    cairo_font_options_destroy(fo);
    set(cr, color(b->theme ? b->theme->background_color : NULL, (rgb_t){0.17, 0.13, 0.09}));
    cairo_paint(cr);
    for (size_t i = 0; i < b->n_sections; i++)
        if (b->sections[i]->position)
            draw_section(cr, b, b->sections[i], files ? files[i] : NULL, asset_dir);
    cairo_destroy(cr);
    cairo_surface_flush(surf);
    png_buf_t buf = {0};
    cairo_status_t st = cairo_surface_write_to_png_stream(surf, png_write, &buf);
    cairo_surface_destroy(surf);
    if (st != CAIRO_STATUS_SUCCESS) {
        free(buf.p);
        HM_ERROR("vision board: PNG encoding failed: %s", cairo_status_to_string(st));
        return HM_EINTERNAL;
    }
    *png = hm_arena_memdup(a, buf.p, buf.n);
    *len = buf.n;
    free(buf.p);
    return 0;
}

/* Loads fonts once (fontconfig's first look-up is slow), so the first board is as fast as
 * the others. */
int mkt_board_warm_up(void)
{
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 8, 8);
    cairo_t *cr = cairo_create(s);
    const char *fams[2] = {"DejaVu Sans", "DejaVu Serif"};
    for (int i = 0; i < 2; i++)
        for (int bold = 0; bold < 2; bold++) {
            cairo_select_font_face(cr, fams[i], CAIRO_FONT_SLANT_NORMAL,
                                   bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
            cairo_text_extents_t e;
            cairo_text_extents(cr, "Warm up", &e);
        }
    cairo_destroy(cr);
    cairo_surface_destroy(s);
    return 0;
}

void mkt_board_shutdown(void)
{
    /* cairo's font caches hold fontconfig patterns: both released, so that leak checkers see
     * nothing at exit */
    cairo_debug_reset_static_data();
    FcFini();
}
