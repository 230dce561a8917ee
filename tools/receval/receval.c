/*
 * receval - offline evaluation of recommenderd's models on MovieLens latest-small (the 2016
 * snapshot in Debian's r-cran-dslabs; tools/receval/receval.sh extracts it with R at run time,
 * the data is never committed).
 *
 *   receval --data ml.csv [--protocol random|temporal|both] [--validation] [--boot N]
 *           [--seed S] [--write-model PATH] [--ease-lambda L] [--factors F] [--als-lambda L]
 *           [--als-alpha A] [--iterations N] [--w-pop W] [--w-item W] [--w-mf W] [--k K]
 *
 * Every rating is an interaction (implicit feedback). Protocols: per-user random 80/20 split
 * with a fixed seed, and per-user temporal leave-last-out; full ranking over every item the
 * user has not interacted with in training. Metrics @10 with 95% bootstrap intervals over
 * users. Methods: Pop and ItemKNN (cosine, k = 100) baselines, EASE and iALS alone, and the
 * production blend, each trained by tools/rectrain's code into an hmrec/1 file and scored by
 * services/recommenderd/model.c (the daemon's scoring). --validation evaluates on a split of
 * the training part only (for tuning without touching the test data).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "train.h"

typedef struct raw {
    long user, movie;
    int64_t t;
} raw_t;

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static long find(const long *v, long n, long key)
{
    long lo = 0, hi = n - 1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        if (v[mid] == key)
            return mid;
        if (v[mid] < key)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

typedef struct dataset {
    rt_triplet_t *t;
    size_t n;
    int nusers, nitems;
    char **ids; /* sorted */
} dataset_t;

/* Reads the CSV written by receval.sh: "userId","movieId","rating","timestamp",... */
static int load(const char *path, dataset_t *ds)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "receval: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 17, n = 0;
    raw_t *r = malloc(cap * sizeof *r);
    char line[4096];
    if (!fgets(line, sizeof line, fp)) {
        fclose(fp);
        free(r);
        return -1;
    }
    while (fgets(line, sizeof line, fp)) {
        long u, m;
        double rating;
        long long ts;
        if (sscanf(line, "%ld,%ld,%lf,%lld", &u, &m, &rating, &ts) != 4)
            continue;
        if (n == cap)
            r = realloc(r, (cap *= 2) * sizeof *r);
        r[n++] = (raw_t){u, m, ts};
    }
    fclose(fp);
    long *users = malloc(n * sizeof *users), *movies = malloc(n * sizeof *movies);
    for (size_t x = 0; x < n; x++) {
        users[x] = r[x].user;
        movies[x] = r[x].movie;
    }
    qsort(users, n, sizeof *users, cmp_long);
    qsort(movies, n, sizeof *movies, cmp_long);
    long nu = 0, nm = 0;
    for (size_t x = 0; x < n; x++) {
        if (!nu || users[nu - 1] != users[x])
            users[nu++] = users[x];
        if (!nm || movies[nm - 1] != movies[x])
            movies[nm++] = movies[x];
    }
    /* item ids "ml:<movieId>" sorted as strings; index = rank */
    char **ids = malloc((size_t)nm * sizeof *ids);
    for (long x = 0; x < nm; x++) {
        ids[x] = malloc(32);
        snprintf(ids[x], 32, "ml:%ld", movies[x]);
    }
    qsort(ids, (size_t)nm, sizeof *ids, cmp_str);
    long *bymovie = malloc((size_t)nm * sizeof *bymovie); /* movie rank -> string rank */
    for (long x = 0; x < nm; x++)
        bymovie[find(movies, nm, atol(ids[x] + 3))] = x;
    ds->t = malloc(n * sizeof *ds->t);
    for (size_t x = 0; x < n; x++)
        ds->t[x] = (rt_triplet_t){(int)find(users, nu, r[x].user),
                                  (int)bymovie[find(movies, nm, r[x].movie)], 1.0f, r[x].t};
    ds->n = n;
    ds->nusers = (int)nu;
    ds->nitems = (int)nm;
    ds->ids = ids;
    free(r);
    free(users);
    free(movies);
    free(bymovie);
    return 0;
}

typedef struct method {
    const char *name;
    int file; /* 0: cosine file, 1: production file */
    double w[REC_NW];
} method_t;

static void print_row(const char *name, const rt_result_t *r)
{
    printf("%-22s", name);
    for (int q = 0; q < RT_NMET; q++)
        if (q == RT_COV)
            printf("  %.4f", r->value[q]);
        else
            printf("  %.4f [%.4f, %.4f]", r->value[q], r->lo[q], r->hi[q]);
    printf("\n");
}

int main(int argc, char **argv)
{
    const char *data = NULL, *protocol = "both", *write_model = NULL;
    int validation = 0, boot = 1000;
    unsigned seed = 20261125;
    rt_opts_t o;
    rt_opts_default(&o);
    for (int a = 1; a < argc; a++) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
#define OPT(flag) (strcmp(argv[a], flag) == 0 && v && (a++, 1))
        if (OPT("--data"))
            data = v;
        else if (OPT("--protocol"))
            protocol = v;
        else if (strcmp(argv[a], "--validation") == 0)
            validation = 1;
        else if (OPT("--boot"))
            boot = atoi(v);
        else if (OPT("--seed"))
            seed = (unsigned)strtoul(v, NULL, 10);
        else if (OPT("--write-model"))
            write_model = v;
        else if (OPT("--ease-lambda"))
            o.ease_lambda = atof(v);
        else if (OPT("--k"))
            o.kneigh = atoi(v);
        else if (OPT("--factors"))
            o.factors = atoi(v);
        else if (OPT("--als-lambda"))
            o.als_lambda = atof(v);
        else if (OPT("--als-alpha"))
            o.als_alpha = atof(v);
        else if (OPT("--iterations"))
            o.iterations = atoi(v);
        else if (OPT("--w-pop"))
            o.weights[1] = atof(v);
        else if (OPT("--w-item"))
            o.weights[2] = atof(v);
        else if (OPT("--w-mf"))
            o.weights[3] = atof(v);
        else if (strcmp(argv[a], "-v") == 0)
            o.verbose++;
        else {
            fprintf(stderr, "usage: receval --data ml.csv [--protocol random|temporal|both] "
                            "[--validation] [--boot N] [--seed S] [--write-model PATH] "
                            "[--ease-lambda L] [--k K] [--factors F] [--als-lambda L] "
                            "[--als-alpha A] [--iterations N] [--w-pop W] [--w-item W] "
                            "[--w-mf W] [-v]\n");
            return 2;
        }
#undef OPT
    }
    if (!data) {
        fprintf(stderr, "receval: --data is required (tools/receval/receval.sh extracts it)\n");
        return 2;
    }
    dataset_t ds;
    if (load(data, &ds) != 0)
        return 1;
    printf("data: %zu interactions, %d users, %d items (%s)\n", ds.n, ds.nusers, ds.nitems, data);
    char dir[] = "/tmp/receval.XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char fcos[64], fprod[64];
    snprintf(fcos, sizeof fcos, "%s/cosine.hmrec", dir);
    snprintf(fprod, sizeof fprod, "%s/blend.hmrec", dir);
    const method_t methods[] = {
        {"Pop", 1, {0, 1, 0, 0, 0, 0, 0, 0}},
        {"ItemKNN (cosine,k=100)", 0, {0, 0, 1, 0, 0, 0, 0, 0}},
        {"EASE", 1, {0, 0, 1, 0, 0, 0, 0, 0}},
        {"iALS", 1, {0, 0, 0, 1, 0, 0, 0, 0}},
        {"Blend (production)", 1, {0, 0, 0, 0, 0, 0, 0, 0}},
    };
    int nmethods = sizeof methods / sizeof methods[0];
    rec_metric_t metrics[2 * RT_NMET];
    int nmetrics = 0, status = 0;
    for (int p = 0; p < 2; p++) {
        const char *pname = p == 0 ? "random_80_20" : "temporal_leave_last_out";
        if (strcmp(protocol, "both") != 0 && strcmp(protocol, p == 0 ? "random" : "temporal") != 0)
            continue;
        rt_split_t s;
        if (p == 0)
            rt_split_random(ds.t, ds.n, ds.nusers, 0.2, seed, &s);
        else
            rt_split_last(ds.t, ds.n, ds.nusers, &s);
        if (validation) { /* evaluate inside the training part: split it again */
            rt_split_t inner;
            if (p == 0)
                rt_split_random(s.train, s.ntrain, ds.nusers, 0.2, seed + 1, &inner);
            else
                rt_split_last(s.train, s.ntrain, ds.nusers, &inner);
            rt_split_free(&s);
            s = inner;
            pname = p == 0 ? "validation_random_80_20" : "validation_leave_last_out";
        }
        rt_data_t train;
        rt_data_build(&train, ds.nusers, ds.nitems, s.train, s.ntrain);
        time_t t0 = time(NULL);
        rt_opts_t oc = o;
        oc.item_model = "cosine";
        oc.kneigh = 100;
        oc.factors = 0;
        if (rt_train_write(&train, ds.ids, &oc, NULL, 0, fcos) != 0 ||
            rt_train_write(&train, ds.ids, &o, NULL, 0, fprod) != 0)
            return 1;
        printf("\nprotocol %s: %zu train, %zu test interactions (trained in %lds)\n", pname,
               s.ntrain, s.ntest, (long)(time(NULL) - t0));
        printf("%-22s", "method");
        for (int q = 0; q < RT_NMET; q++)
            printf("  %-24s", rt_metric_names[q]);
        printf("\n");
        rt_result_t res[8];
        for (int m = 0; m < nmethods; m++) {
            const double *w = m == nmethods - 1 ? o.weights : methods[m].w;
            if (rt_evaluate(methods[m].file ? fprod : fcos, w, &train, &s, boot, seed + 7,
                            &res[m]) != 0)
                return 1;
            print_row(methods[m].name, &res[m]);
        }
        double knn = res[1].value[RT_NDCG10], blend = res[nmethods - 1].value[RT_NDCG10];
        double gain = knn > 0 ? (blend / knn - 1) * 100 : 0;
        printf("blend vs ItemKNN NDCG@10: %.4f vs %.4f = %+.1f%% (%d users)\n", blend, knn, gain,
               res[nmethods - 1].users);
        if (p == 0 && !validation) {
            printf("target (>= +10%% on random_80_20): %s\n", gain >= 10 ? "MET" : "MISSED");
            if (gain < 10)
                status = 3;
        }
        for (int q = 0; q < RT_NMET && nmetrics < 2 * RT_NMET; q++) {
            rec_metric_t *mt = &metrics[nmetrics++];
            memset(mt, 0, sizeof *mt);
            snprintf(mt->name, sizeof mt->name, "%s", rt_metric_names[q]);
            snprintf(mt->protocol, sizeof mt->protocol, "%s", pname);
            mt->value = res[nmethods - 1].value[q];
            mt->lo = res[nmethods - 1].lo[q];
            mt->hi = res[nmethods - 1].hi[q];
        }
        rt_data_free(&train);
        rt_split_free(&s);
    }
    if (write_model) { /* the production model on all data, with the metrics above */
        rt_data_t all;
        rt_data_build(&all, ds.nusers, ds.nitems, ds.t, ds.n);
        if (rt_train_write(&all, ds.ids, &o, metrics, nmetrics, write_model) != 0)
            return 1;
        printf("\nwrote %s\n", write_model);
        rt_data_free(&all);
    }
    unlink(fcos);
    unlink(fprod);
    rmdir(dir);
    for (int i = 0; i < ds.nitems; i++)
        free(ds.ids[i]);
    free(ds.ids);
    free(ds.t);
    return status;
}
