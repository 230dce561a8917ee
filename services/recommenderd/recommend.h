/*
 * recommend.h - candidates, filters and list recording shared by recommend.c (Recommend,
 * RecommendSimilarItems) and offers.c (cross-sell, history, graph, offers, feedback).
 */
#ifndef REC_RECOMMEND_H
#define REC_RECOMMEND_H

#include "rec.h"

/* One candidate item: per-strategy raw scores, the strongest reason source per strategy and
 * the catalogue data the filters need. */
typedef struct cand {
    const char *id;
    double s[REC_NW];
    const char *src[REC_NW]; /* item (or interest) behind the strongest contribution */
    int src_kind[REC_NW];    /* its event type (reason verb) */
    double src_w[REC_NW];
    double total;
    int top; /* strategy contributing most */
    bool known, hidden, has_price;
    const char *name, *category, *currency, *venue;
    int64_t price;
    int app, kind;
    char **dietary, **tags;
    size_t ndietary, ntags;
} cand_t;

typedef struct cands {
    hm_arena_t *a;
    cand_t *v;
    size_t n, cap, slots;
    long *index;
} cands_t;

void cands_init(cands_t *c, hm_arena_t *a, size_t cap);
cand_t *cands_get(cands_t *c, const char *id);
cand_t *cands_find(const cands_t *c, const char *id);
void cand_add(cands_t *c, const char *id, int k, double s, const char *src, int src_kind);

typedef struct history_item {
    const char *id;
    double w;
    bool consumed;
    int type;
} history_item_t;

typedef struct history {
    history_item_t *items;
    size_t n;
    char **dismissed;
    size_t ndismissed;
    bool has_affinity;
} history_t;

int load_history(hm_call_t *call, const char *guest, history_t *h);

typedef struct filter {
    const history_t *history; /* consumed and dismissed items (NULL: none known) */
    bool include_consumed;
    char **exclude, **cats, **diet, **fav;
    size_t nexclude, ncats, ndiet, nfav;
    const Hospitality__Common__V1__Money *min_price, *max_price;
    int app;
    const char *venue;
} filter_t;

int strat_popularity(hm_call_t *call, cands_t *c, const char *cats, int app, int limit);
int load_meta(hm_call_t *call, cands_t *c, char **extra, size_t nextra, cands_t *names);
bool keep_item(const cand_t *x, const filter_t *f);
/* Filters, sorts by total and picks k by MMR (lambda 0: by total). */
size_t rank_mmr(hm_arena_t *a, cands_t *c, const filter_t *f, double lambda, size_t k,
                cand_t ***out);
const char *reason_for(hm_arena_t *a, const cand_t *x, int k, const cands_t *names);
const char *item_name(const cands_t *names, const char *id);
int cmp_float_desc(const void *a, const void *b);
char *new_id(hm_arena_t *a);

/* Records a served list and publishes recommendation.generated (and `extra`) in one
 * transaction. */
int save_list(hm_call_t *call, const char *rec_id, const char *guest, int kind, int strategy,
              const char *model_version, bool personalized, int app,
              Hospitality__Recommender__V1__RecommendedItem **items, size_t n, const char *rules,
              const char *extra_type, const ProtobufCMessage *extra);

#endif
