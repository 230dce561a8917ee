/*
 * model.h - recommenderd's model file ("hmrec/1") and the scoring both the daemon and the
 * offline tools (tools/rectrain, tools/receval) run, so that what is evaluated offline is what
 * serves.
 *
 * The file, little-endian, written by tools/rectrain and memory-mapped read-only by the daemon:
 *   rec_header_t (512 bytes, checksummed body after it)
 *   item ids   nitems x REC_ID_LEN bytes, NUL-padded, sorted (strcmp): an item's index
 *   popularity nitems floats (time-decayed, scaled to max 1)
 *   neighbours nitems x kneigh rec_neigh_t (item-item weights, strongest first, idx UINT32_MAX
 *              pads), from EASE or cosine item-kNN
 *   factors    nitems x nfactors floats (implicit ALS item factors)
 *   gram       nfactors x nfactors floats (Y^T Y, for folding users in)
 *   metrics    nmetrics rec_metric_t (offline evaluation at training time)
 * There are no per-user rows: a guest's vector is folded in from their current history at
 * query time (iALS's user step), so the file holds nothing about any one guest.
 */
#ifndef REC_MODEL_H
#define REC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define REC_MAGIC       "HMREC01"
#define REC_FORMAT      1
#define REC_ID_LEN      64
#define REC_HEADER_SIZE 512
/* Blend weight slots, by hospitality.common.v1.RecommendationStrategy number. */
#define REC_NW 8

typedef struct rec_neigh {
    uint32_t idx;
    float w;
} rec_neigh_t;

typedef struct rec_metric {
    char name[24];
    char protocol[40];
    double value, lo, hi;
} rec_metric_t;

typedef struct rec_header {
    char magic[8];
    uint32_t format, nfactors, kneigh, nmetrics;
    int64_t trained_at_us, nusers, nitems, ninteractions;
    char version[64];
    char item_model[16]; /* "ease" or "cosine" */
    double weights[REC_NW];
    double als_lambda, als_alpha;
    uint64_t off_ids, off_pop, off_neigh, off_factors, off_gram, off_metrics;
    uint64_t file_size, checksum; /* FNV-1a 64 over bytes [REC_HEADER_SIZE, file_size) */
} rec_header_t;

/* A loaded (or in-memory) model: pointers into the mapping. */
typedef struct rec_model {
    const rec_header_t *h;
    const char *ids; /* nitems * REC_ID_LEN */
    const float *pop;
    const rec_neigh_t *neigh;
    const float *factors;
    const float *gram;
    const rec_metric_t *metrics;
    void *map;
    size_t map_len;
} rec_model_t;

/* One interaction of the guest being scored: item index and weight (> 0). */
typedef struct rec_hist {
    uint32_t idx;
    float w;
} rec_hist_t;

uint64_t rec_fnv1a(const void *p, size_t n);

/* Maps and validates `path`: 0, or -1 with a reason in err (size errlen). */
int rec_model_open(const char *path, rec_model_t *m, char *err, size_t errlen);
void rec_model_close(rec_model_t *m);

/* Index of item `id`, or -1. */
long rec_model_item(const rec_model_t *m, const char *id);
static inline const char *rec_model_id(const rec_model_t *m, size_t idx)
{
    return m->ids + idx * REC_ID_LEN;
}

/* Item-item scores: out[j] = sum over history of w_h * weight(h -> j); out zeroed first. */
void rec_score_item(const rec_model_t *m, const rec_hist_t *h, size_t nh, float *out);
/* Folds a user in (iALS user step against the item factors): u (nfactors). 0, or -1 when the
 * model has no factors. `work` holds nfactors*nfactors + nfactors doubles. */
int rec_fold_in(const rec_model_t *m, const rec_hist_t *h, size_t nh, double *u, double *work);
/* Matrix-factorization scores: out[j] = u . y_j. */
void rec_score_mf(const rec_model_t *m, const double *u, float *out);

/*
 * The model part of the production blend: each strategy's scores over all items scaled to a
 * maximum of 1, weighted by w (REC_NW slots: POPULARITY 1, ITEM_ITEM 2, MATRIX_FACTORIZATION 3)
 * and summed into out[nitems]; parts[s] (when not NULL, each nitems floats) receives the
 * scaled, weighted contribution of strategy s. `work` holds 3*nitems floats plus the fold-in
 * scratch (rec_blend_work_size).
 */
size_t rec_blend_work_size(const rec_model_t *m);
void rec_blend(const rec_model_t *m, const rec_hist_t *h, size_t nh, const double *w, float *out,
               float *parts[REC_NW], void *work);

/* Solves A x = b for symmetric positive definite A (n x n, row-major, overwritten by its
 * Cholesky factor). 0, or -1 when A is not positive definite. */
int rec_cholesky_solve(double *a, double *b, int n);

#endif
