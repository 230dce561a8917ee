/*
 * board.c - GetVisionBoard: a guest's vision board as data (docs/marketing.md). A 6x4 grid with
 * fixed slots: a title tile, four product tiles (the guest's live recommendations), four small
 * interest tiles (interests and favourite categories, with personalization consent) and an
 * inspiration tile; a slot without content becomes an inspiration tile, so the board never has
 * holes. The theme is asked for or picked from the guest's interests. board_png.c draws it.
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

/* ---- GetVisionBoard ---- */

static const hm_stmt_t st_interests = {
    "mk_interests",
    "SELECT value FROM rc_interests WHERE guest_id = $1::uuid ORDER BY confidence DESC, value "
    "LIMIT 8",
    1};

static bool has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

REC_HANDLER(mkt_get_vision_board)
{
    const Hospitality__Marketing__V1__GetVisionBoardRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->width_px && (req->width_px < 300 || req->width_px > 2400))
        return hm_call_invalid(call, "width_px", "0 (1200) or within 300..2400");
    if (req->height_px && (req->height_px < 200 || req->height_px > 1600))
        return hm_call_invalid(call, "height_px", "0 (800) or within 200..1600");
    if (req->theme_name[0] && !mkt_theme(req->theme_name))
        return hm_call_invalid(call, "theme_name",
                               "one of warm_evening, ocean_breeze, garden_fresh, midnight");

    mkt_guest_t g;
    mkt_load_guest(call, req->guest_id, &g);
    if (g.profile_status.code == HM_CODE_NOT_FOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "guestd knows no guest %s",
                             req->guest_id);
    /* interests only with personalization consent (privacyd, cached like Recommend's) */
    char **interests = hm_arena_alloc(a, 16 * sizeof *interests);
    size_t ni = 0;
    if (rec_consent(call, req->guest_id) == 1) {
        const Hospitality__Guest__V1__PersonalizationContext *c = g.context;
        if (c && c->personalization_allowed && c->preferences)
            for (size_t i = 0; i < c->preferences->n_favorite_categories && ni < 8; i++)
                if (!has(interests, ni, c->preferences->favorite_categories[i]))
                    interests[ni++] = c->preferences->favorite_categories[i];
        const char *p[1] = {req->guest_id};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, a, &st_interests, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "load interests");
        for (int i = 0; i < PQntuples(r) && ni < 16; i++)
            if (!has(interests, ni, rec_str(r, i, 0)))
                interests[ni++] = hm_arena_strdup(a, rec_str(r, i, 0));
    }
    hm_status_t st;
    Hospitality__Recommender__V1__RecommendResponse *recs =
        mkt_recommend(call, req->guest_id, 4, &st);
    if (!recs)
        return st;
    char **ids = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *ids);
    for (size_t i = 0; i < recs->n_items; i++)
        ids[i] = recs->items[i]->item_id;
    mkt_item_t *items = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *items);
    int rc = mkt_load_items(call, ids, recs->n_items, items);
    if (rc != 0)
        return hm_call_fail(call, rc, "load items");
    Hospitality__Marketing__V1__VisionBoard *b = mkt_board_build(
        a, req->guest_id, mkt_first_name(a, g.profile ? g.profile->name : NULL), interests, ni,
        items, recs->n_items, req->theme_name, req->width_px ? req->width_px : 1200,
        req->height_px ? req->height_px : 800);
    Hospitality__Marketing__V1__GetVisionBoardResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__marketing__v1__get_vision_board_response__init(resp);
    resp->board = b;
    resp->generated_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    if (req->include_png) {
        const char **files = hm_arena_zalloc(a, b->n_sections * sizeof *files);
        for (size_t i = 0; i < b->n_sections; i++)
            for (size_t k = 0; k < recs->n_items; k++)
                if (b->sections[i]->item_id[0] && strcmp(b->sections[i]->item_id, items[k].id) == 0)
                    files[i] = items[k].image_file;
        uint8_t *png;
        size_t len;
        if ((rc = mkt_board_png(a, b, files, rec_cfg.asset_dir, &png, &len)) != 0)
            return hm_call_fail(call, rc, "render board");
        resp->png.data = png;
        resp->png.len = len;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}
