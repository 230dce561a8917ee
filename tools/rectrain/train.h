/*
 * train.h - training and offline evaluation for recommenderd's models, shared by
 * tools/rectrain (trains from recommenderd's database or a CSV and writes an hmrec/1 file) and
 * tools/receval (offline evaluation on MovieLens). Scoring is services/recommenderd/model.c's,
 * the daemon's own.
 */
#ifndef RT_TRAIN_H
#define RT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* One interaction: user and item indices, weight (> 0), time (seconds). */
typedef struct rt_triplet {
    int u, i;
    float w;
    int64_t t;
} rt_triplet_t;

/* Interactions as CSR by user and by item (duplicates summed). */
typedef struct rt_data {
    int nusers, nitems;
    int64_t nnz;
    int64_t *uptr, *iptr;
    int *uidx, *iidx; /* item of each user entry, user of each item entry */
    float *uval, *ival;
} rt_data_t;

int rt_data_build(rt_data_t *d, int nusers, int nitems, const rt_triplet_t *t, size_t n);
void rt_data_free(rt_data_t *d);

typedef struct rt_opts {
    const char *item_model;       /* "ease" (default) or "cosine" */
    int kneigh;                   /* neighbours kept per item [200] */
    double ease_lambda;           /* EASE L2 [250] */
    int ease_min_count;           /* items with fewer interactions stay out of EASE [3] */
    int ease_max_items;           /* at most this many items in EASE (most frequent) [4000] */
    int factors;                  /* iALS factors [64]; 0: no factors */
    int iterations;               /* iALS sweeps [12] */
    double als_lambda, als_alpha; /* [5, 5] */
    double pop_half_life_s;       /* popularity decay; 0: none */
    int64_t now_s;                /* "now" for the decay */
    double weights[REC_NW];       /* blend weights written into the file */
    const char *version;          /* model version; NULL: derived from the time and a checksum */
    unsigned seed;
    int verbose;
} rt_opts_t;

void rt_opts_default(rt_opts_t *o);

/* Trains every part and writes the model file to `path` (atomically: temporary + rename).
 * `ids` names the items (sorted, unique, < REC_ID_LEN). 0, or -1 with a message on stderr. */
int rt_train_write(const rt_data_t *d, char *const *ids, const rt_opts_t *o,
                   const rec_metric_t *metrics, int nmetrics, const char *path);

/* ---- evaluation ---- */

typedef struct rt_split {
    rt_triplet_t *train, *test;
    size_t ntrain, ntest;
} rt_split_t;

/* Per user, a random 80/20 split with `seed` (users with < 5 interactions all in train). */
void rt_split_random(const rt_triplet_t *t, size_t n, int nusers, double test_frac, unsigned seed,
                     rt_split_t *s);
/* Per user, the latest interaction held out (users with < 3 interactions all in train). */
void rt_split_last(const rt_triplet_t *t, size_t n, int nusers, rt_split_t *s);
void rt_split_free(rt_split_t *s);

enum { RT_P10, RT_R10, RT_NDCG10, RT_HR10, RT_COV, RT_NMET };
extern const char *const rt_metric_names[RT_NMET];

typedef struct rt_result {
    double value[RT_NMET], lo[RT_NMET], hi[RT_NMET];
    int users;
} rt_result_t;

/* Scores every test user with the model at `path` and the weights `w` (rec_blend over the
 * user's training interactions), ranks all items the user has not interacted with in training,
 * and computes the metrics @10 with 95% bootstrap intervals (`boot` resamples of the users). */
int rt_evaluate(const char *path, const double *w, const rt_data_t *train, const rt_split_t *s,
                int boot, unsigned seed, rt_result_t *res);

#endif
