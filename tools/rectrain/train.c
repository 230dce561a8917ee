/*
 * train.c - popularity, item-item (EASE or cosine kNN), implicit ALS and the hmrec/1 writer;
 * the offline evaluation (splits, metrics @10, bootstrap intervals). See train.h.
 *
 * EASE (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, over the most
 * frequent items; each item keeps its kneigh largest weights. Cosine kNN: binary co-occurrence
 * over sqrt(|U_i| |U_j|), top k. Implicit ALS (Hu, Koren, Volinsky 2008): confidence
 * 1 + alpha * w, alternating exact solves; the file keeps item factors and Y^T Y so the daemon
 * folds users in at query time.
 */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

void rt_opts_default(rt_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->item_model = "ease";
    o->kneigh = 200;
    o->ease_lambda = 250;
    o->ease_min_count = 3;
    o->ease_max_items = 4000;
    o->factors = 64;
    o->iterations = 12;
    o->als_lambda = 5;
    o->als_alpha = 5;
    o->weights[1] = 0.05; /* popularity */
    o->weights[2] = 1.0;  /* item-item */
    o->weights[3] = 0.3;  /* matrix factorization */
    o->seed = 20261125;
}

/* ---- data ---- */

static int cmp_ui(const void *a, const void *b)
{
    const rt_triplet_t *x = a, *y = b;
    if (x->u != y->u)
        return x->u < y->u ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int rt_data_build(rt_data_t *d, int nusers, int nitems, const rt_triplet_t *t, size_t n)
{
    memset(d, 0, sizeof *d);
    d->nusers = nusers;
    d->nitems = nitems;
    rt_triplet_t *s = xcalloc(n, sizeof *s);
    memcpy(s, t, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_ui);
    size_t m = 0;
    for (size_t k = 0; k < n; k++) {
        if (m && s[m - 1].u == s[k].u && s[m - 1].i == s[k].i)
            s[m - 1].w += s[k].w;
        else
            s[m++] = s[k];
    }
    d->nnz = (int64_t)m;
    d->uptr = xcalloc((size_t)nusers + 1, sizeof *d->uptr);
    d->iptr = xcalloc((size_t)nitems + 1, sizeof *d->iptr);
    d->uidx = xcalloc(m, sizeof *d->uidx);
    d->iidx = xcalloc(m, sizeof *d->iidx);
    d->uval = xcalloc(m, sizeof *d->uval);
    d->ival = xcalloc(m, sizeof *d->ival);
    for (size_t k = 0; k < m; k++) {
        d->uptr[s[k].u + 1]++;
        d->iptr[s[k].i + 1]++;
    }
    for (int u = 0; u < nusers; u++)
        d->uptr[u + 1] += d->uptr[u];
    for (int i = 0; i < nitems; i++)
        d->iptr[i + 1] += d->iptr[i];
    int64_t *fill = xcalloc((size_t)nitems, sizeof *fill);
    for (size_t k = 0; k < m; k++) {
        d->uidx[k] = s[k].i;
        d->uval[k] = s[k].w;
        int64_t at = d->iptr[s[k].i] + fill[s[k].i]++;
        d->iidx[at] = s[k].u;
        d->ival[at] = s[k].w;
    }
    free(fill);
    free(s);
    return 0;
}

void rt_data_free(rt_data_t *d)
{
    free(d->uptr);
    free(d->iptr);
    free(d->uidx);
    free(d->iidx);
    free(d->uval);
    free(d->ival);
    memset(d, 0, sizeof *d);
}

/* ---- neighbours ---- */

typedef struct pair {
    float w;
    uint32_t j;
} pair_t;

static int cmp_pair(const void *a, const void *b)
{
    const pair_t *x = a, *y = b;
    if (x->w != y->w)
        return x->w < y->w ? 1 : -1;
    return x->j < y->j ? -1 : x->j > y->j;
}

/* Keeps the k largest positive weights of a row into out (padded). */
static void keep_top(pair_t *row, size_t n, int k, rec_neigh_t *out)
{
    qsort(row, n, sizeof *row, cmp_pair);
    int o = 0;
    for (size_t x = 0; x < n && o < k; x++)
        if (row[x].w > 0)
            out[o++] = (rec_neigh_t){row[x].j, row[x].w};
    for (; o < k; o++)
        out[o] = (rec_neigh_t){UINT32_MAX, 0};
}

static void cosine_knn(const rt_data_t *d, int k, rec_neigh_t *nb)
{
    int ni = d->nitems;
    float *acc = xcalloc((size_t)ni, sizeof *acc);
    double *norm = xcalloc((size_t)ni, sizeof *norm);
    int *touched = xcalloc((size_t)ni, sizeof *touched);
    pair_t *row = xcalloc((size_t)ni, sizeof *row);
    for (int i = 0; i < ni; i++)
        norm[i] = sqrt((double)(d->iptr[i + 1] - d->iptr[i]));
    for (int i = 0; i < ni; i++) {
        int nt = 0;
        for (int64_t a = d->iptr[i]; a < d->iptr[i + 1]; a++) {
            int u = d->iidx[a];
            for (int64_t b = d->uptr[u]; b < d->uptr[u + 1]; b++) {
                int j = d->uidx[b];
                if (j == i)
                    continue;
                if (acc[j] == 0)
                    touched[nt++] = j;
                acc[j] += 1;
            }
        }
        for (int x = 0; x < nt; x++) {
            int j = touched[x];
            row[x] = (pair_t){(float)(acc[j] / (norm[i] * norm[j])), (uint32_t)j};
            acc[j] = 0;
        }
        keep_top(row, (size_t)nt, k, nb + (size_t)i * (size_t)k);
    }
    free(acc);
    free(norm);
    free(touched);
    free(row);
}

/* In-place inverse of a symmetric positive definite matrix (n x n, row-major): Cholesky
 * A = L L^T, then inv(L), then inv(A) = inv(L)^T inv(L). 0, or -1. */
static int spd_inverse(double *a, int n)
{
    for (int j = 0; j < n; j++) {
        double *rj = a + (size_t)j * n;
        double dd = rj[j];
        for (int k = 0; k < j; k++)
            dd -= rj[k] * rj[k];
        if (dd <= 0)
            return -1;
        dd = sqrt(dd);
        rj[j] = dd;
        for (int i = j + 1; i < n; i++) {
            double *ri = a + (size_t)i * n, s = ri[j];
            for (int k = 0; k < j; k++)
                s -= ri[k] * rj[k];
            ri[j] = s / dd;
        }
    }
    /* inv(L) in the lower triangle, row by row: M_ii = 1/L_ii, M_ij = -sum_k L_ik M_kj / L_ii */
    double *m = xcalloc((size_t)n * n, sizeof *m);
    for (int i = 0; i < n; i++) {
        const double *li = a + (size_t)i * n;
        double *mi = m + (size_t)i * n;
        mi[i] = 1.0 / li[i];
        for (int k = 0; k < i; k++) {
            double lik = li[k];
            const double *mk = m + (size_t)k * n;
            for (int j = 0; j <= k; j++)
                mi[j] -= lik * mk[j];
        }
        for (int j = 0; j < i; j++)
            mi[j] /= li[i];
    }
    /* inv(A)_ij = sum_{k >= max(i,j)} M_ki M_kj */
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++)
            a[(size_t)i * n + j] = 0;
    for (int k = 0; k < n; k++) {
        const double *mk = m + (size_t)k * n;
        for (int i = 0; i <= k; i++) {
            double v = mk[i];
            if (v == 0)
                continue;
            double *ai = a + (size_t)i * n;
            for (int j = 0; j <= i; j++)
                ai[j] += v * mk[j];
        }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            a[(size_t)j * n + i] = a[(size_t)i * n + j];
    free(m);
    return 0;
}

static int cmp_count_desc(const void *a, const void *b)
{
    const int64_t *x = a, *y = b; /* {count, item} */
    if (x[0] != y[0])
        return x[0] < y[0] ? 1 : -1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static int ease(const rt_data_t *d, const rt_opts_t *o, rec_neigh_t *nb)
{
    int ni = d->nitems, k = o->kneigh;
    int64_t *cnt = xcalloc((size_t)ni * 2, sizeof *cnt);
    for (int i = 0; i < ni; i++) {
        cnt[2 * i] = d->iptr[i + 1] - d->iptr[i];
        cnt[2 * i + 1] = i;
    }
    qsort(cnt, (size_t)ni, 2 * sizeof *cnt, cmp_count_desc);
    int m = 0;
    while (m < ni && m < o->ease_max_items && cnt[2 * m] >= o->ease_min_count)
        m++;
    int *dense = xcalloc((size_t)ni, sizeof *dense), *orig = xcalloc((size_t)m + 1, sizeof *orig);
    for (int i = 0; i < ni; i++)
        dense[i] = -1;
    for (int x = 0; x < m; x++) {
        orig[x] = (int)cnt[2 * x + 1];
        dense[orig[x]] = x;
    }
    free(cnt);
    for (int i = 0; i < ni * k; i++)
        nb[i] = (rec_neigh_t){UINT32_MAX, 0};
    if (o->verbose)
        fprintf(stderr, "rectrain: EASE over %d of %d items (lambda %.0f)\n", m, ni,
                o->ease_lambda);
    if (m == 0) {
        free(dense);
        free(orig);
        return 0;
    }
    double *g = xcalloc((size_t)m * m, sizeof *g);
    int *row = xcalloc((size_t)ni, sizeof *row);
    for (int u = 0; u < d->nusers; u++) { /* G = X^T X on binary X */
        int nr = 0;
        for (int64_t b = d->uptr[u]; b < d->uptr[u + 1]; b++)
            if (dense[d->uidx[b]] >= 0)
                row[nr++] = dense[d->uidx[b]];
        for (int x = 0; x < nr; x++) {
            double *gx = g + (size_t)row[x] * m;
            for (int y = 0; y < nr; y++)
                gx[row[y]] += 1;
        }
    }
    for (int x = 0; x < m; x++)
        g[(size_t)x * m + x] += o->ease_lambda;
    if (spd_inverse(g, m) != 0) {
        fprintf(stderr, "rectrain: EASE matrix not positive definite\n");
        free(g);
        free(row);
        free(dense);
        free(orig);
        return -1;
    }
    pair_t *pr = xcalloc((size_t)m, sizeof *pr);
    for (int x = 0; x < m; x++) { /* B_xy = -P_xy / P_yy: weight of x in the score of y */
        int np = 0;
        for (int y = 0; y < m; y++)
            if (y != x)
                pr[np++] = (pair_t){(float)(-g[(size_t)x * m + y] / g[(size_t)y * m + y]),
                                    (uint32_t)orig[y]};
        keep_top(pr, (size_t)np, k, nb + (size_t)orig[x] * (size_t)k);
    }
    free(pr);
    free(g);
    free(row);
    free(dense);
    free(orig);
    return 0;
}

/* ---- implicit ALS ---- */

/* One half-sweep: solves every row of `x` (n rows) against the fixed factors `y`. */
static void als_half(int n, const int64_t *ptr, const int *idx, const float *val, float *x,
                     const float *y, int ny, int f, double lambda, double alpha)
{
    double *gram = xcalloc((size_t)f * f, sizeof *gram), *a = xcalloc((size_t)f * f, sizeof *a);
    double *b = xcalloc((size_t)f, sizeof *b);
    for (int j = 0; j < ny; j++) {
        const float *yj = y + (size_t)j * f;
        for (int p = 0; p < f; p++)
            for (int q = 0; q < f; q++)
                gram[p * f + q] += (double)yj[p] * yj[q];
    }
    for (int r = 0; r < n; r++) {
        memcpy(a, gram, (size_t)f * f * sizeof *a);
        memset(b, 0, (size_t)f * sizeof *b);
        for (int p = 0; p < f; p++)
            a[p * f + p] += lambda;
        for (int64_t e = ptr[r]; e < ptr[r + 1]; e++) {
            const float *yj = y + (size_t)idx[e] * f;
            double c = 1 + alpha * val[e];
            for (int p = 0; p < f; p++) {
                b[p] += c * yj[p];
                double cp = (c - 1) * yj[p];
                for (int q = 0; q < f; q++)
                    a[p * f + q] += cp * yj[q];
            }
        }
        float *xr = x + (size_t)r * f;
        if (ptr[r + 1] == ptr[r] || rec_cholesky_solve(a, b, f) != 0) {
            memset(xr, 0, (size_t)f * sizeof *xr);
            continue;
        }
        for (int p = 0; p < f; p++)
            xr[p] = (float)b[p];
    }
    free(gram);
    free(a);
    free(b);
}

static void ials(const rt_data_t *d, const rt_opts_t *o, float *items, float *gram)
{
    int f = o->factors;
    float *users = xcalloc((size_t)d->nusers * f, sizeof *users);
    unsigned s = o->seed;
    for (size_t x = 0; x < (size_t)d->nitems * f; x++) {
        s = s * 1103515245u + 12345u;
        items[x] = ((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f) * 0.1f;
    }
    for (int it = 0; it < o->iterations; it++) {
        als_half(d->nusers, d->uptr, d->uidx, d->uval, users, items, d->nitems, f, o->als_lambda,
                 o->als_alpha);
        als_half(d->nitems, d->iptr, d->iidx, d->ival, items, users, d->nusers, f, o->als_lambda,
                 o->als_alpha);
        if (o->verbose > 1)
            fprintf(stderr, "rectrain: iALS sweep %d\n", it + 1);
    }
    memset(gram, 0, (size_t)f * f * sizeof *gram);
    for (int j = 0; j < d->nitems; j++) {
        const float *yj = items + (size_t)j * f;
        for (int p = 0; p < f; p++)
            for (int q = 0; q < f; q++)
                gram[p * f + q] += yj[p] * yj[q];
    }
    free(users);
}

/* ---- the file ---- */

static int write_all(FILE *fp, const void *p, size_t n)
{
    return fwrite(p, 1, n, fp) == n ? 0 : -1;
}

int rt_train_write(const rt_data_t *d, char *const *ids, const rt_opts_t *o,
                   const rec_metric_t *metrics, int nmetrics, const char *path)
{
    size_t ni = (size_t)d->nitems, k = (size_t)o->kneigh, f = (size_t)o->factors;
    for (size_t i = 0; i < ni; i++)
        if (strlen(ids[i]) >= REC_ID_LEN || (i && strcmp(ids[i - 1], ids[i]) >= 0)) {
            fprintf(stderr, "rectrain: item ids must be sorted, unique and < %d bytes\n",
                    REC_ID_LEN);
            return -1;
        }
    rec_header_t h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, REC_MAGIC, 8);
    h.format = REC_FORMAT;
    h.nfactors = (uint32_t)f;
    h.kneigh = (uint32_t)k;
    h.nmetrics = (uint32_t)nmetrics;
    h.trained_at_us = (int64_t)time(NULL) * 1000000;
    h.nusers = d->nusers;
    h.nitems = d->nitems;
    h.ninteractions = d->nnz;
    snprintf(h.item_model, sizeof h.item_model, "%s", o->item_model);
    memcpy(h.weights, o->weights, sizeof h.weights);
    h.als_lambda = o->als_lambda;
    h.als_alpha = o->als_alpha;
    h.off_ids = REC_HEADER_SIZE;
    h.off_pop = h.off_ids + ni * REC_ID_LEN;
    h.off_neigh = h.off_pop + ni * 4;
    h.off_factors = h.off_neigh + ni * k * sizeof(rec_neigh_t);
    h.off_gram = h.off_factors + ni * f * 4;
    h.off_metrics = h.off_gram + f * f * 4;
    h.off_metrics = (h.off_metrics + 7) & ~(uint64_t)7;
    h.file_size = h.off_metrics + (uint64_t)nmetrics * sizeof(rec_metric_t);

    char *body = xcalloc(h.file_size - REC_HEADER_SIZE, 1);
    char *base = body - REC_HEADER_SIZE;
    for (size_t i = 0; i < ni; i++)
        memcpy(base + h.off_ids + i * REC_ID_LEN, ids[i], strlen(ids[i]));
    float *pop = (float *)(base + h.off_pop);
    float mx = 0;
    for (size_t i = 0; i < ni; i++) {
        double s = 0;
        for (int64_t e = d->iptr[i]; e < d->iptr[i + 1]; e++)
            s += d->ival[e] > 0 ? 1 : 0;
        pop[i] = (float)s;
        if (pop[i] > mx)
            mx = pop[i];
    }
    for (size_t i = 0; mx > 0 && i < ni; i++)
        pop[i] /= mx;
    rec_neigh_t *nb = (rec_neigh_t *)(base + h.off_neigh);
    int rc = 0;
    if (k > 0) {
        if (strcmp(o->item_model, "cosine") == 0)
            cosine_knn(d, (int)k, nb);
        else
            rc = ease(d, o, nb);
    }
    if (rc == 0 && f > 0)
        ials(d, o, (float *)(base + h.off_factors), (float *)(base + h.off_gram));
    if (nmetrics)
        memcpy(base + h.off_metrics, metrics, (size_t)nmetrics * sizeof *metrics);
    h.checksum = rec_fnv1a(body, h.file_size - REC_HEADER_SIZE);
    if (o->version)
        snprintf(h.version, sizeof h.version, "%s", o->version);
    else {
        struct tm tm;
        time_t now = time(NULL);
        gmtime_r(&now, &tm);
        char ts[32];
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        snprintf(h.version, sizeof h.version, "%s-%04llx", ts,
                 (unsigned long long)(h.checksum & 0xffff));
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *fp = rc == 0 ? fopen(tmp, "wb") : NULL;
    char pad[REC_HEADER_SIZE];
    memset(pad, 0, sizeof pad);
    memcpy(pad, &h, sizeof h);
    if (!fp || write_all(fp, pad, sizeof pad) != 0 ||
        write_all(fp, body, h.file_size - REC_HEADER_SIZE) != 0 || fflush(fp) != 0 ||
        fsync(fileno(fp)) != 0) {
        if (rc == 0)
            fprintf(stderr, "rectrain: cannot write %s: %s\n", tmp, strerror(errno));
        if (fp)
            fclose(fp);
        unlink(tmp);
        free(body);
        return -1;
    }
    fclose(fp);
    free(body);
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "rectrain: cannot rename to %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (o->verbose)
        fprintf(stderr, "rectrain: wrote %s (%s): %zu items, %d users, %lld interactions\n", path,
                h.version, ni, d->nusers, (long long)d->nnz);
    return 0;
}

/* ---- evaluation ---- */

const char *const rt_metric_names[RT_NMET] = {"precision@10", "recall@10", "ndcg@10", "hr@10",
                                              "coverage@10"};

static unsigned next_rand(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static int cmp_user_time(const void *a, const void *b)
{
    const rt_triplet_t *x = a, *y = b;
    if (x->u != y->u)
        return x->u < y->u ? -1 : 1;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static void split(const rt_triplet_t *t, size_t n, int mode, double frac, unsigned seed,
                  rt_split_t *s)
{
    rt_triplet_t *c = xcalloc(n, sizeof *c);
    memcpy(c, t, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_user_time);
    s->train = xcalloc(n, sizeof *s->train);
    s->test = xcalloc(n, sizeof *s->test);
    s->ntrain = s->ntest = 0;
    unsigned r = seed ? seed : 1;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && c[b].u == c[a].u)
            b++;
        size_t len = b - a;
        if (mode == 0 && len >= 5) {
            /* Fisher-Yates over the user's interactions; the first round(frac*len) are test */
            for (size_t x = len - 1; x > 0; x--) {
                size_t y = next_rand(&r) % (x + 1);
                rt_triplet_t tmp = c[a + x];
                c[a + x] = c[a + y];
                c[a + y] = tmp;
            }
            size_t nt = (size_t)llround(frac * (double)len);
            for (size_t x = 0; x < len; x++) {
                if (x < nt)
                    s->test[s->ntest++] = c[a + x];
                else
                    s->train[s->ntrain++] = c[a + x];
            }
        } else if (mode == 1 && len >= 3) {
            for (size_t x = 0; x + 1 < len; x++)
                s->train[s->ntrain++] = c[a + x];
            s->test[s->ntest++] = c[b - 1];
        } else {
            for (size_t x = 0; x < len; x++)
                s->train[s->ntrain++] = c[a + x];
        }
        a = b;
    }
    free(c);
}

void rt_split_random(const rt_triplet_t *t, size_t n, int nusers, double test_frac, unsigned seed,
                     rt_split_t *s)
{
    (void)nusers;
    split(t, n, 0, test_frac, seed, s);
}

void rt_split_last(const rt_triplet_t *t, size_t n, int nusers, rt_split_t *s)
{
    (void)nusers;
    split(t, n, 1, 0, 0, s);
}

void rt_split_free(rt_split_t *s)
{
    free(s->train);
    free(s->test);
    memset(s, 0, sizeof *s);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int rt_evaluate(const char *path, const double *w, const rt_data_t *train, const rt_split_t *s,
                int boot, unsigned seed, rt_result_t *res)
{
    rec_model_t m;
    char err[256];
    if (rec_model_open(path, &m, err, sizeof err) != 0) {
        fprintf(stderr, "receval: %s\n", err);
        return -1;
    }
    int nu = train->nusers, ni = train->nitems;
    /* test items per user (CSR) */
    int64_t *tptr = xcalloc((size_t)nu + 1, sizeof *tptr);
    for (size_t x = 0; x < s->ntest; x++)
        tptr[s->test[x].u + 1]++;
    for (int u = 0; u < nu; u++)
        tptr[u + 1] += tptr[u];
    int *titems = xcalloc(s->ntest + 1, sizeof *titems);
    int64_t *fill = xcalloc((size_t)nu, sizeof *fill);
    for (size_t x = 0; x < s->ntest; x++)
        titems[tptr[s->test[x].u] + fill[s->test[x].u]++] = s->test[x].i;
    free(fill);
    float *score = xcalloc((size_t)ni, sizeof *score);
    void *work = xcalloc(rec_blend_work_size(&m), 1);
    rec_hist_t *hist = xcalloc((size_t)ni, sizeof *hist);
    unsigned char *mark = xcalloc((size_t)ni, 1);
    double *per = xcalloc((size_t)nu * 4, sizeof *per);
    int *top = xcalloc((size_t)nu * 10, sizeof *top);
    int *users = xcalloc((size_t)nu, sizeof *users);
    int ne = 0;
    for (int u = 0; u < nu; u++) {
        int64_t nt = tptr[u + 1] - tptr[u];
        if (nt == 0)
            continue;
        size_t nh = 0;
        for (int64_t e = train->uptr[u]; e < train->uptr[u + 1]; e++)
            hist[nh++] = (rec_hist_t){(uint32_t)train->uidx[e], train->uval[e]};
        rec_blend(&m, hist, nh, w, score, NULL, work);
        for (size_t x = 0; x < nh; x++)
            score[hist[x].idx] = -INFINITY;
        /* top 10 by selection (ties: lower index) */
        int *t10 = top + (size_t)ne * 10;
        for (int r = 0; r < 10; r++) {
            int best = -1;
            for (int j = 0; j < ni; j++)
                if (score[j] != -INFINITY && (best < 0 || score[j] > score[best]))
                    best = j;
            t10[r] = best;
            if (best >= 0)
                score[best] = -INFINITY;
        }
        for (int64_t e = tptr[u]; e < tptr[u + 1]; e++)
            mark[titems[e]] = 1;
        double hits = 0, dcg = 0, idcg = 0;
        for (int r = 0; r < 10; r++) {
            if (t10[r] >= 0 && mark[t10[r]]) {
                hits++;
                dcg += 1.0 / log2(r + 2.0);
            }
            if (r < nt)
                idcg += 1.0 / log2(r + 2.0);
        }
        for (int64_t e = tptr[u]; e < tptr[u + 1]; e++)
            mark[titems[e]] = 0;
        double *pu = per + (size_t)ne * 4;
        pu[0] = hits / 10.0;
        pu[1] = hits / (double)nt;
        pu[2] = dcg / idcg;
        pu[3] = hits > 0;
        users[ne++] = u;
    }
    res->users = ne;
    /* point estimates, then bootstrap over users */
    unsigned r = seed ? seed : 7;
    double *samples = xcalloc((size_t)(boot > 0 ? boot : 1) * RT_NMET, sizeof *samples);
    int *pick = xcalloc((size_t)ne + 1, sizeof *pick);
    for (int b = -1; b < boot; b++) {
        double sum[4] = {0};
        memset(mark, 0, (size_t)ni);
        int distinct = 0;
        for (int x = 0; x < ne; x++) {
            int y = b < 0 ? x : (int)(next_rand(&r) % (unsigned)ne);
            for (int q = 0; q < 4; q++)
                sum[q] += per[(size_t)y * 4 + q];
            for (int k = 0; k < 10; k++) {
                int it = top[(size_t)y * 10 + k];
                if (it >= 0 && !mark[it]) {
                    mark[it] = 1;
                    distinct++;
                }
            }
        }
        double *dst = b < 0 ? res->value : samples + (size_t)b * RT_NMET;
        for (int q = 0; q < 4; q++)
            dst[q] = ne ? sum[q] / ne : 0;
        dst[RT_COV] = (double)distinct / ni;
    }
    for (int q = 0; q < RT_NMET; q++) {
        double *col = xcalloc((size_t)(boot > 0 ? boot : 1), sizeof *col);
        for (int b = 0; b < boot; b++)
            col[b] = samples[(size_t)b * RT_NMET + q];
        if (boot > 0 && q != RT_COV) {
            /* coverage is a property of the whole population of lists: resampling users with
             * replacement lowers it (fewer distinct users), so it gets no interval */
            qsort(col, (size_t)boot, sizeof *col, cmp_double);
            res->lo[q] = col[(int)(0.025 * (boot - 1))];
            res->hi[q] = col[(int)(0.975 * (boot - 1))];
        } else {
            res->lo[q] = res->hi[q] = res->value[q];
        }
        free(col);
    }
    free(samples);
    free(pick);
    free(tptr);
    free(titems);
    free(score);
    free(work);
    free(hist);
    free(mark);
    free(per);
    free(top);
    free(users);
    rec_model_close(&m);
    return 0;
}
