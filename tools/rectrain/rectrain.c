/*
 * rectrain - trains recommenderd's model into a versioned hmrec/1 file (model.h) that the
 * daemon memory-maps (HM_REC_MODEL, ReloadModel).
 *
 *   rectrain --out PATH [--db CONNINFO | --csv FILE] [--version V] [--evaluate]
 *            [--ease-lambda L] [--k K] [--factors F] [--als-lambda L] [--als-alpha A]
 *            [--iterations N] [--w-pop W] [--w-item W] [--w-mf W] [--item-model ease|cosine] [-v]
 *
 * --db (default $HM_DATABASE_URL) reads recommenderd's interactions (rc_events with a positive
 * weight, summed per guest and item, erased guests excluded) and its catalogue (every item
 * gets an id in the file). --csv reads "guest,item,weight" lines instead. --evaluate trains
 * once more on a per-guest random 80/20 split (fixed seed) and embeds the blend's metrics @10
 * (GetModelInfo's offline metrics). The file is written to a temporary name and renamed.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

typedef struct strtab {
    char **v;
    size_t n, cap;
} strtab_t;

static void push(strtab_t *t, const char *s)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->v = realloc(t->v, t->cap * sizeof *t->v);
    }
    t->v[t->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void uniq(strtab_t *t)
{
    qsort(t->v, t->n, sizeof *t->v, cmp_str);
    size_t m = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (m && strcmp(t->v[m - 1], t->v[i]) == 0)
            free(t->v[i]);
        else
            t->v[m++] = t->v[i];
    }
    t->n = m;
}

static long lookup(const strtab_t *t, const char *s)
{
    char *const *p = bsearch(&s, t->v, t->n, sizeof *t->v, cmp_str);
    return p ? (long)(p - t->v) : -1;
}

typedef struct rows {
    char **user, **item;
    float *w;
    size_t n, cap;
} rows_t;

static void add_row(rows_t *r, const char *u, const char *i, float w)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 4096;
        r->user = realloc(r->user, r->cap * sizeof *r->user);
        r->item = realloc(r->item, r->cap * sizeof *r->item);
        r->w = realloc(r->w, r->cap * sizeof *r->w);
    }
    r->user[r->n] = strdup(u);
    r->item[r->n] = strdup(i);
    r->w[r->n++] = w;
}

static int from_db(const char *conninfo, rows_t *rows, strtab_t *items)
{
    PGconn *c = PQconnectdb(conninfo ? conninfo : "");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "rectrain: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(
        c, "SELECT guest_id::text, item_id, sum(weight) FROM rc_events e WHERE "
           "item_id <> '' AND weight > 0 AND NOT EXISTS (SELECT 1 FROM "
           "rc_erased_guests x WHERE x.guest_hash = encode(sha256(convert_to(e.guest_id::text, "
           "'UTF8')), 'hex')) GROUP BY 1, 2");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "rectrain: %s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++)
        add_row(rows, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                (float)strtod(PQgetvalue(r, i, 2), NULL));
    PQclear(r);
    r = PQexec(c, "SELECT item_id FROM rc_items");
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        for (int i = 0; i < PQntuples(r); i++)
            push(items, PQgetvalue(r, i, 0));
    PQclear(r);
    PQfinish(c);
    return 0;
}

static int from_csv(const char *path, rows_t *rows)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "rectrain: cannot open %s\n", path);
        return -1;
    }
    char line[1024], u[256], it[256];
    float w;
    while (fgets(line, sizeof line, fp))
        if (sscanf(line, "%255[^,],%255[^,],%f", u, it, &w) == 3 && w > 0)
            add_row(rows, u, it, w);
    fclose(fp);
    return 0;
}

int main(int argc, char **argv)
{
    const char *out = NULL, *db = getenv("HM_DATABASE_URL"), *csv = NULL;
    int evaluate = 0;
    rt_opts_t o;
    rt_opts_default(&o);
    for (int a = 1; a < argc; a++) {
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
#define OPT(flag) (strcmp(argv[a], flag) == 0 && v && (a++, 1))
        if (OPT("--out"))
            out = v;
        else if (OPT("--db"))
            db = v;
        else if (OPT("--csv"))
            csv = v;
        else if (OPT("--version"))
            o.version = v;
        else if (strcmp(argv[a], "--evaluate") == 0)
            evaluate = 1;
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
        else if (OPT("--item-model"))
            o.item_model = v;
        else if (strcmp(argv[a], "-v") == 0)
            o.verbose++;
        else {
            fprintf(stderr, "usage: rectrain --out PATH [--db CONNINFO | --csv FILE] "
                            "[--version V] [--evaluate] [--ease-lambda L] [--k K] [--factors F] "
                            "[--als-lambda L] [--als-alpha A] [--iterations N] [--w-pop W] "
                            "[--w-item W] [--w-mf W] [--item-model ease|cosine] [-v]\n");
            return 2;
        }
#undef OPT
    }
    if (!out || (strcmp(o.item_model, "ease") != 0 && strcmp(o.item_model, "cosine") != 0)) {
        fprintf(stderr, "rectrain: --out is required; --item-model is ease or cosine\n");
        return 2;
    }
    rows_t rows = {0};
    strtab_t users = {0}, items = {0};
    if ((csv ? from_csv(csv, &rows) : from_db(db, &rows, &items)) != 0)
        return 1;
    for (size_t i = 0; i < rows.n; i++) {
        push(&users, rows.user[i]);
        push(&items, rows.item[i]);
    }
    uniq(&users);
    uniq(&items);
    for (size_t i = 0; i < items.n; i++)
        if (strlen(items.v[i]) >= REC_ID_LEN) {
            fprintf(stderr, "rectrain: item id too long: %s\n", items.v[i]);
            return 1;
        }
    rt_triplet_t *t = calloc(rows.n + 1, sizeof *t);
    for (size_t i = 0; i < rows.n; i++)
        t[i] = (rt_triplet_t){(int)lookup(&users, rows.user[i]), (int)lookup(&items, rows.item[i]),
                              rows.w[i], (int64_t)i};
    rec_metric_t metrics[RT_NMET];
    int nmetrics = 0;
    if (evaluate && rows.n > 0) {
        rt_split_t s;
        rt_split_random(t, rows.n, (int)users.n, 0.2, o.seed, &s);
        rt_data_t d;
        rt_data_build(&d, (int)users.n, (int)items.n, s.train, s.ntrain);
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.eval", out);
        rt_result_t res;
        if (rt_train_write(&d, items.v, &o, NULL, 0, tmp) != 0 ||
            rt_evaluate(tmp, o.weights, &d, &s, 200, o.seed, &res) != 0)
            return 1;
        remove(tmp);
        for (int q = 0; q < RT_NMET; q++) {
            snprintf(metrics[q].name, sizeof metrics[q].name, "%s", rt_metric_names[q]);
            snprintf(metrics[q].protocol, sizeof metrics[q].protocol, "random_80_20");
            metrics[q].value = res.value[q];
            metrics[q].lo = res.lo[q];
            metrics[q].hi = res.hi[q];
        }
        nmetrics = RT_NMET;
        if (o.verbose)
            fprintf(stderr, "rectrain: held-out ndcg@10 %.4f over %d users\n", res.value[RT_NDCG10],
                    res.users);
        rt_data_free(&d);
        rt_split_free(&s);
    }
    rt_data_t d;
    rt_data_build(&d, (int)users.n, (int)items.n, t, rows.n);
    int rc = rt_train_write(&d, items.v, &o, metrics, nmetrics, out);
    rt_data_free(&d);
    free(t);
    for (size_t i = 0; i < rows.n; i++) {
        free(rows.user[i]);
        free(rows.item[i]);
    }
    free(rows.user);
    free(rows.item);
    free(rows.w);
    for (size_t i = 0; i < users.n; i++)
        free(users.v[i]);
    for (size_t i = 0; i < items.n; i++)
        free(items.v[i]);
    free(users.v);
    free(items.v);
    if (rc == 0)
        printf("%s\n", out);
    return rc == 0 ? 0 : 1;
}
