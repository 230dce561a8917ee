/*
 * model.c - the hmrec/1 model file and the scoring shared by recommenderd, rectrain and
 * receval (model.h).
 */
#include "model.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

uint64_t rec_fnv1a(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int section_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off >= REC_HEADER_SIZE && off <= size && len <= size - off && off % 4 == 0;
}

int rec_model_open(const char *path, rec_model_t *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s", path);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < REC_HEADER_SIZE) {
        close(fd);
        snprintf(err, errlen, "%s: not a model file (too short)", path);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map", path);
        return -1;
    }
    const rec_header_t *h = map;
    const char *why = NULL;
    uint64_t ni = (uint64_t)h->nitems, nf = h->nfactors, k = h->kneigh;
    if (memcmp(h->magic, REC_MAGIC, 8) != 0)
        why = "bad magic";
    else if (h->format != REC_FORMAT)
        why = "unsupported format version";
    else if (h->file_size != len)
        why = "truncated (size differs from header)";
    else if (h->nitems < 0 || h->nitems > 50000000 || nf > 1024 || k > 4096 || h->nmetrics > 1024)
        why = "implausible sizes";
    else if (!section_ok(h->off_ids, ni * REC_ID_LEN, len) ||
             !section_ok(h->off_pop, ni * 4, len) ||
             !section_ok(h->off_neigh, ni * k * sizeof(rec_neigh_t), len) ||
             !section_ok(h->off_factors, ni * nf * 4, len) ||
             !section_ok(h->off_gram, nf * nf * 4, len) ||
             !section_ok(h->off_metrics, h->nmetrics * sizeof(rec_metric_t), len))
        why = "section out of bounds";
    else if (memchr(h->version, 0, sizeof h->version) == NULL)
        why = "bad version string";
    else if (rec_fnv1a((const char *)map + REC_HEADER_SIZE, len - REC_HEADER_SIZE) != h->checksum)
        why = "checksum mismatch";
    if (why) {
        munmap(map, len);
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    const char *base = map;
    m->h = h;
    m->ids = base + h->off_ids;
    m->pop = (const float *)(base + h->off_pop);
    m->neigh = (const rec_neigh_t *)(base + h->off_neigh);
    m->factors = (const float *)(base + h->off_factors);
    m->gram = (const float *)(base + h->off_gram);
    m->metrics = (const rec_metric_t *)(base + h->off_metrics);
    for (uint64_t i = 0; i < ni; i++)
        if (m->ids[i * REC_ID_LEN + REC_ID_LEN - 1] != 0 ||
            (i > 0 && strcmp(m->ids + (i - 1) * REC_ID_LEN, m->ids + i * REC_ID_LEN) >= 0))
            why = "item ids not NUL-terminated and sorted";
    for (uint64_t i = 0; !why && i < ni * k; i++)
        if (m->neigh[i].idx != UINT32_MAX && m->neigh[i].idx >= ni)
            why = "neighbour index out of range";
    if (why) {
        munmap(map, len);
        memset(m, 0, sizeof *m);
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    m->map = map;
    m->map_len = len;
    return 0;
}

void rec_model_close(rec_model_t *m)
{
    if (m->map)
        munmap(m->map, m->map_len);
    memset(m, 0, sizeof *m);
}

long rec_model_item(const rec_model_t *m, const char *id)
{
    long lo = 0, hi = m->h ? (long)m->h->nitems - 1 : -1;
    while (lo <= hi) {
        long mid = lo + (hi - lo) / 2;
        int c = strcmp(rec_model_id(m, (size_t)mid), id);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

void rec_score_item(const rec_model_t *m, const rec_hist_t *h, size_t nh, float *out)
{
    size_t ni = (size_t)m->h->nitems, k = m->h->kneigh;
    memset(out, 0, ni * sizeof *out);
    for (size_t i = 0; i < nh; i++) {
        const rec_neigh_t *nb = m->neigh + (size_t)h[i].idx * k;
        for (size_t j = 0; j < k && nb[j].idx != UINT32_MAX; j++)
            out[nb[j].idx] += h[i].w * nb[j].w;
    }
}

int rec_cholesky_solve(double *a, double *b, int n)
{
    for (int j = 0; j < n; j++) {
        double d = a[j * n + j];
        for (int k = 0; k < j; k++)
            d -= a[j * n + k] * a[j * n + k];
        if (d <= 0)
            return -1;
        d = sqrt(d);
        a[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = a[i * n + j];
            for (int k = 0; k < j; k++)
                s -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = s / d;
        }
    }
    for (int i = 0; i < n; i++) { /* L y = b */
        double s = b[i];
        for (int k = 0; k < i; k++)
            s -= a[i * n + k] * b[k];
        b[i] = s / a[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) { /* L^T x = y */
        double s = b[i];
        for (int k = i + 1; k < n; k++)
            s -= a[k * n + i] * b[k];
        b[i] = s / a[i * n + i];
    }
    return 0;
}

int rec_fold_in(const rec_model_t *m, const rec_hist_t *h, size_t nh, double *u, double *work)
{
    int nf = (int)m->h->nfactors;
    if (nf == 0)
        return -1;
    double *a = work, alpha = m->h->als_alpha, lambda = m->h->als_lambda;
    for (int i = 0; i < nf * nf; i++)
        a[i] = m->gram[i];
    for (int i = 0; i < nf; i++) {
        a[i * nf + i] += lambda;
        u[i] = 0;
    }
    for (size_t x = 0; x < nh; x++) {
        const float *y = m->factors + (size_t)h[x].idx * (size_t)nf;
        double c = 1 + alpha * h[x].w;
        for (int i = 0; i < nf; i++) {
            u[i] += c * y[i];
            for (int j = 0; j < nf; j++)
                a[i * nf + j] += (c - 1) * y[i] * y[j];
        }
    }
    return rec_cholesky_solve(a, u, nf);
}

void rec_score_mf(const rec_model_t *m, const double *u, float *out)
{
    size_t ni = (size_t)m->h->nitems, nf = m->h->nfactors;
    for (size_t j = 0; j < ni; j++) {
        const float *y = m->factors + j * nf;
        double s = 0;
        for (size_t i = 0; i < nf; i++)
            s += u[i] * y[i];
        out[j] = (float)s;
    }
}

size_t rec_blend_work_size(const rec_model_t *m)
{
    size_t nf = m->h->nfactors;
    return 3 * (size_t)m->h->nitems * sizeof(float) + 8 + (nf * nf + 2 * nf) * sizeof(double);
}

/* Scales v so that its maximum over the items is 1 (negative values clipped to 0). */
static void scale(float *v, size_t n)
{
    float mx = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] > mx)
            mx = v[i];
    float f = mx > 0 ? 1.0f / mx : 0;
    for (size_t i = 0; i < n; i++)
        v[i] = v[i] > 0 ? v[i] * f : 0;
}

void rec_blend(const rec_model_t *m, const rec_hist_t *h, size_t nh, const double *w, float *out,
               float *parts[REC_NW], void *work)
{
    size_t ni = (size_t)m->h->nitems, nf = m->h->nfactors;
    float *item = work, *mf = item + ni, *pop = mf + ni;
    size_t off = (3 * ni * sizeof(float) + 7) & ~(size_t)7; /* doubles 8-aligned */
    double *u = (double *)((char *)work + off), *scratch = u + nf;
    memset(out, 0, ni * sizeof *out);
    memcpy(pop, m->pop, ni * sizeof *pop);
    scale(pop, ni);
    if (nh > 0 && w[2] > 0) {
        rec_score_item(m, h, nh, item);
        scale(item, ni);
    } else {
        memset(item, 0, ni * sizeof *item);
    }
    if (nh > 0 && w[3] > 0 && rec_fold_in(m, h, nh, u, scratch) == 0) {
        rec_score_mf(m, u, mf);
        scale(mf, ni);
    } else {
        memset(mf, 0, ni * sizeof *mf);
    }
    const float *src[4] = {NULL, pop, item, mf};
    for (int s = 1; s <= 3; s++) {
        float ws = (float)w[s];
        for (size_t j = 0; j < ni; j++) {
            float c = ws * src[s][j];
            out[j] += c;
            if (parts && parts[s])
                parts[s][j] = c;
        }
    }
}
