/*
 * board.c - GetVisionBoard: a guest's vision board as data (docs/marketing.md). A 6x4 grid with
 * fixed slots: a title tile, four product tiles (the guest's live recommendations), four small
 * interest tiles (interests and favourite categories, with personalization consent) and an
 * inspiration tile; a slot without content becomes an inspiration tile, so the board never has
 * holes. The theme is asked for or picked from the guest's interests. board_png.c draws it;
 * marketing.c's GetVisionBoard gathers the data. No I/O here (shared with the benchmark).
 */
#include <string.h>

#include "marketing.h"
#include "render.h"

#define SEC(x) HOSPITALITY__MARKETING__V1__SECTION_TYPE__SECTION_TYPE_##x

typedef struct theme_def {
    Hospitality__Marketing__V1__BoardTheme t;
    const char *interest_color, *inspiration_color;
    const char *quote; /* the title tile's line */
} theme_def_t;

#define THEME(n, bg, pr, ac, tx, ic, sc, q)                                                        \
    {                                                                                              \
        {PROTOBUF_C_MESSAGE_INIT(&hospitality__marketing__v1__board_theme__descriptor),            \
         (char *)n,                                                                                \
         (char *)bg,                                                                               \
         (char *)pr,                                                                               \
         (char *)ac,                                                                               \
         (char *)tx,                                                                               \
         (char *)"DejaVu Sans",                                                                    \
         (char *)"DejaVu Serif"},                                                                  \
            ic, sc, q                                                                              \
    }

static const theme_def_t themes[] = {
    THEME("warm_evening", "#2B2118", "#F4EFE9", "#C8553D", "#2B2118", "#F2D0A4", "#E8B4A0",
          "Slow evenings, good food, the people you love."),
    THEME("ocean_breeze", "#0B3954", "#F0F7F4", "#087E8B", "#0B3954", "#BFD7EA", "#A8DADC",
          "Salt air, open water and nowhere to be."),
    THEME("garden_fresh", "#283618", "#FEFAE0", "#BC6C25", "#283618", "#DDE5B6", "#E9EDC9",
          "Green mornings, quiet paths, time to breathe."),
    THEME("midnight", "#14213D", "#E5E5E5", "#FCA311", "#14213D", "#C9D6EA", "#FFD8A8",
          "City lights, late tables, one more song."),
};
#define NTHEMES (sizeof themes / sizeof themes[0])

const Hospitality__Marketing__V1__BoardTheme *mkt_theme(const char *name)
{
    for (size_t i = 0; i < NTHEMES; i++)
        if (strcmp(themes[i].t.name, name) == 0)
            return &themes[i].t;
    return NULL;
}

static const theme_def_t *theme_def(const char *name)
{
    for (size_t i = 0; i < NTHEMES; i++)
        if (strcmp(themes[i].t.name, name) == 0)
            return &themes[i];
    return &themes[0];
}

/* The theme for a guest without one asked for: from the first interest that suggests one,
 * else by the guest id's hash (stable). */
static const char *pick_theme(const char *guest, char **interests, size_t n)
{
    static const struct {
        const char *word, *theme;
    } hints[] = {
        {"spa", "garden_fresh"},       {"wellness", "garden_fresh"}, {"garden", "garden_fresh"},
        {"hiking", "garden_fresh"},    {"vegan", "garden_fresh"},    {"beach", "ocean_breeze"},
        {"pool", "ocean_breeze"},      {"sea", "ocean_breeze"},      {"boat", "ocean_breeze"},
        {"diving", "ocean_breeze"},    {"night", "midnight"},        {"bar", "midnight"},
        {"music", "midnight"},         {"cocktail", "midnight"},     {"club", "midnight"},
        {"dining", "warm_evening"},    {"wine", "warm_evening"},     {"italian", "warm_evening"},
        {"restaurant", "warm_evening"}};
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < sizeof hints / sizeof hints[0]; k++)
            if (strstr(interests[i], hints[k].word))
                return hints[k].theme;
    return themes[mk_hash(guest) % NTHEMES].t.name;
}

/* Inspiration words for slots without content, in slot order. */
static const char *const fill_titles[] = {"Relax",  "Explore",  "Taste",  "Celebrate",
                                          "Unwind", "Discover", "Gather", "Wander"};

typedef struct slot {
    int type; /* the section type the slot is for */
    int x, y, w, h;
} slot_t;

static const slot_t slots[] = {
    {SEC(INSPIRATION), 0, 0, 2, 2}, /* title */
    {SEC(PRODUCT), 2, 0, 2, 2},     {SEC(PRODUCT), 4, 0, 2, 1},  {SEC(PRODUCT), 4, 1, 2, 1},
    {SEC(INTEREST), 0, 2, 1, 1},    {SEC(INTEREST), 1, 2, 1, 1}, {SEC(INTEREST), 0, 3, 1, 1},
    {SEC(INTEREST), 1, 3, 1, 1},    {SEC(PRODUCT), 2, 2, 2, 2},  {SEC(INSPIRATION), 4, 2, 2, 2},
};
#define NSLOTS (sizeof slots / sizeof slots[0])

static char *capitalized(hm_arena_t *a, const char *s)
{
    char *c = hm_arena_strdup(a, s);
    for (char *p = c; *p; p++)
        if (*p == '_')
            *p = ' ';
    if (c[0] >= 'a' && c[0] <= 'z')
        c[0] = (char)(c[0] - 'a' + 'A');
    return c;
}

const char *mkt_price(hm_arena_t *a, int64_t minor, const char *currency)
{
    bool neg = minor < 0;
    uint64_t m = neg ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
    return hm_arena_printf(a, "%s%s%s%llu.%02llu", currency && *currency ? currency : "",
                           currency && *currency ? " " : "", neg ? "-" : "",
                           (unsigned long long)(m / 100), (unsigned long long)(m % 100));
}

void mkt_board_rect(const Hospitality__Marketing__V1__BoardLayout *l,
                    const Hospitality__Marketing__V1__GridPosition *p, int *x, int *y, int *w,
                    int *h)
{
    int g = l->gutter_px;
    int cw = (l->width_px - g * (l->columns + 1)) / l->columns;
    int ch = (l->height_px - g * (l->rows + 1)) / l->rows;
    *x = g + p->x * (cw + g);
    *y = g + p->y * (ch + g);
    *w = p->width * cw + (p->width - 1) * g;
    *h = p->height * ch + (p->height - 1) * g;
}

Hospitality__Marketing__V1__VisionBoard *mkt_board_build(hm_arena_t *a, const char *guest_id,
                                                         const char *first_name, char **interests,
                                                         size_t ninterests, const mkt_item_t *items,
                                                         size_t nitems, const char *theme,
                                                         int width, int height)
{
    Hospitality__Marketing__V1__VisionBoard *b = hm_arena_alloc(a, sizeof *b);
    hospitality__marketing__v1__vision_board__init(b);
    b->guest_id = (char *)guest_id;
    b->layout = hm_arena_alloc(a, sizeof *b->layout);
    hospitality__marketing__v1__board_layout__init(b->layout);
    b->layout->columns = 6;
    b->layout->rows = 4;
    b->layout->width_px = width;
    b->layout->height_px = height;
    b->layout->gutter_px = width >= 800 ? 16 : 8;
    const char *tn = theme && *theme ? theme : pick_theme(guest_id, interests, ninterests);
    const theme_def_t *td = theme_def(tn);
    b->theme = hm_arena_memdup(a, &td->t, sizeof td->t);
    b->sections = hm_arena_alloc(a, NSLOTS * sizeof *b->sections);
    size_t nextp = 0, nexti = 0, nextf = 0;
    for (size_t k = 0; k < NSLOTS; k++) {
        Hospitality__Marketing__V1__VisionBoardSection *s = hm_arena_alloc(a, sizeof *s);
        hospitality__marketing__v1__vision_board_section__init(s);
        s->position = hm_arena_alloc(a, sizeof *s->position);
        hospitality__marketing__v1__grid_position__init(s->position);
        s->position->x = slots[k].x;
        s->position->y = slots[k].y;
        s->position->width = slots[k].w;
        s->position->height = slots[k].h;
        if (k == 0) {
            s->type = SEC(INSPIRATION);
            s->title = first_name && *first_name
                           ? hm_arena_printf(a, "%s's vision board", first_name)
                           : "Your vision board";
            s->text = (char *)td->quote;
            s->background_color = (char *)td->inspiration_color;
        } else if (slots[k].type == SEC(PRODUCT) && nextp < nitems) {
            const mkt_item_t *it = &items[nextp++];
            s->type = SEC(PRODUCT);
            s->item_id = (char *)it->id;
            s->title = (char *)(it->name[0] ? it->name : it->id);
            s->text = it->has_price
                          ? (char *)hm_arena_printf(a, "%s%s%s", capitalized(a, it->category),
                                                    it->category[0] ? " - " : "",
                                                    mkt_price(a, it->price_minor, it->currency))
                          : capitalized(a, it->category);
            s->image_url = (char *)it->image_url;
        } else if (slots[k].type == SEC(INTEREST) && nexti < ninterests) {
            s->type = SEC(INTEREST);
            s->title = capitalized(a, interests[nexti++]);
            s->text = "Because you love it";
            s->background_color = (char *)td->interest_color;
        } else {
            s->type = SEC(INSPIRATION);
            s->title = (char *)fill_titles[nextf++ % 8];
            s->text = k == NSLOTS - 1 ? "Your next stay starts with a wish." : "";
            s->background_color = (char *)td->inspiration_color;
        }
        b->sections[b->n_sections++] = s;
    }
    return b;
}
