/*
 * marketing.h - recommenderd's hospitality.marketing.v1.MarketingService (docs/marketing.md).
 *
 * Files: marketing.c (templates, GenerateEmail, Unsubscribe, the guest's data from guestd and
 * privacyd), board.c (GetVisionBoard: the layout), board_png.c (the layout drawn with cairo),
 * render.c (the template renderer, render.h).
 */
#ifndef REC_MARKETING_H
#define REC_MARKETING_H

#include "hospitality/guest/v1/guest.pb-c.h"
#include "hospitality/marketing/v1/marketing.pb-c.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "rec.h"

/* Checks the marketing configuration (the unsubscribe key) and warms the renderer's font
 * cache up; 0 or HM_EINVAL with the reason logged. */
int mkt_init(void);

REC_HANDLER(mkt_generate_email);
REC_HANDLER(mkt_upsert_email_template);
REC_HANDLER(mkt_list_email_templates);
REC_HANDLER(mkt_get_vision_board);
REC_HANDLER(mkt_unsubscribe);

/* What GetVisionBoard and GenerateEmail learn about a guest from guestd (each NULL when guestd
 * did not answer: unavailable, no such guest, or not allowed). */
typedef struct mkt_guest {
    const Hospitality__Guest__V1__Profile *profile;
    const Hospitality__Guest__V1__PersonalizationContext *context;
    hm_status_t profile_status; /* guestd's answer to GetProfile */
} mkt_guest_t;

/* Asks guestd for the guest's profile and personalization context (never inside a
 * transaction). */
void mkt_load_guest(hm_call_t *call, const char *guest, mkt_guest_t *g);
/* The first word of a display name, in the arena ("" for NULL or blank). */
const char *mkt_first_name(hm_arena_t *a, const char *name);

/* Recommendations for the guest through Recommend's own code path (recorded as a served list
 * like any other): the response, or NULL with *st set. */
Hospitality__Recommender__V1__RecommendResponse *mkt_recommend(hm_call_t *call, const char *guest,
                                                               int limit, hm_status_t *st);

/* Catalogue data of items, by id, in the order asked (missing items have empty fields). */
typedef struct mkt_item {
    const char *id, *name, *category, *description, *image_url, *image_file, *currency;
    int64_t price_minor;
    bool has_price;
} mkt_item_t;
int mkt_load_items(hm_call_t *call, char **ids, size_t n, mkt_item_t *out);
/* "EUR 45.00" (currencies with two decimals) in the arena. */
const char *mkt_price(hm_arena_t *a, int64_t minor, const char *currency);

/* Vision boards (board.c), exposed for the benchmark and the sample renderer. */

/* The board's layout and theme for the guest's data (deterministic). */
Hospitality__Marketing__V1__VisionBoard *mkt_board_build(hm_arena_t *a, const char *guest_id,
                                                         const char *first_name, char **interests,
                                                         size_t ninterests, const mkt_item_t *items,
                                                         size_t nitems, const char *theme,
                                                         int width, int height);
/* A theme by name (NULL when unknown). */
const Hospitality__Marketing__V1__BoardTheme *mkt_theme(const char *name);
/* The board drawn as a PNG (board_png.c): 0 with *png and *len in the arena, or HM_EINTERNAL.
 * Item images come from asset_dir (NULL or "": none) joined with each item's image_file;
 * `files` gives each section's image_file (NULL entries: none). */
int mkt_board_png(hm_arena_t *a, const Hospitality__Marketing__V1__VisionBoard *b,
                  const char *const *files, const char *asset_dir, uint8_t **png, size_t *len);
/* Loads the board fonts once (board_png.c); 0. */
int mkt_board_warm_up(void);
/* Releases cairo's and fontconfig's caches at exit (after the last board). */
void mkt_board_shutdown(void);
/* Pixel rectangle of a grid position on a board (the PNG test computes the same). */
void mkt_board_rect(const Hospitality__Marketing__V1__BoardLayout *l,
                    const Hospitality__Marketing__V1__GridPosition *p, int *x, int *y, int *w,
                    int *h);

/* A receipt's line: N records of SECTION in data category CAT, in the arena (subject.c). */
Hospitality__Privacy__V1__SectionCount *rec_section_count(hm_arena_t *a, const char *section,
                                                          int cat, int64_t n);

/* Erasure of the guest's marketing rows inside subject.c's transaction: assignments are
 * deleted, emails deleted (anonymize: unlinked from the guest and kept for the variant
 * statistics). Non-zero counts go into the receipt's lists. 0 or an hm_db error. */
int mkt_erase(hm_db_t *db, hm_arena_t *a, const char *guest, bool anonymize,
              Hospitality__Privacy__V1__ErasureReceipt *receipt);

#endif
