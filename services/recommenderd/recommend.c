/*
 * recommend.c - Recommend: candidates from the strategies (popularity from rc_popularity,
 * item-item and matrix factorization from the loaded model, content from the guest's
 * affinities, graph from co-purchasers and COMPLEMENTS edges), blended with the configured
 * weights (each strategy scaled to a maximum of 1), filtered (hidden, consumed, dismissed,
 * excluded, category, price, app, venue, dietary restrictions), re-ranked for diversity (MMR)
 * and cut to the limit with a reason per item. Every served list is kept (rc_recommendations)
 * and published (recommendation.generated) in one transaction; lists are cached in Redis per
 * guest generation and request.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/auth.h"
#include "hm/log.h"
#include "hm/peer.h"
#include "hospitality/events/v1/recommender_events.pb-c.h"
#include "hospitality/guest/v1/guest.pb-c.h"
#include "recommend.h"

#define S(x)  HOSPITALITY__COMMON__V1__RECOMMENDATION_STRATEGY__RECOMMENDATION_STRATEGY_##x
#define NP(x) HOSPITALITY__RECOMMENDER__V1__NON_PERSONALIZED_REASON__NON_PERSONALIZED_REASON_##x
#define POOL  300

/* ---- the candidate table ---- */

static size_t hash_str(const char *s)
{
    return (size_t)rec_fnv1a(s, strlen(s));
}

void cands_init(cands_t *c, hm_arena_t *a, size_t cap)
{
    c->a = a;
    c->cap = cap;
    c->n = 0;
    c->v = hm_arena_zalloc(a, cap * sizeof *c->v);
    c->slots = 2 * cap;
    c->index = hm_arena_alloc(a, c->slots * sizeof *c->index);
    for (size_t i = 0; i < c->slots; i++)
        c->index[i] = -1;
}

cand_t *cands_get(cands_t *c, const char *id)
{
    size_t h = hash_str(id) % c->slots;
    while (c->index[h] >= 0) {
        if (strcmp(c->v[c->index[h]].id, id) == 0)
            return &c->v[c->index[h]];
        h = (h + 1) % c->slots;
    }
    if (c->n >= c->cap)
        return NULL;
    cand_t *x = &c->v[c->n];
    x->id = hm_arena_strdup(c->a, id);
    c->index[h] = (long)c->n++;
    return x;
}

cand_t *cands_find(const cands_t *c, const char *id)
{
    size_t h = hash_str(id) % c->slots;
    while (c->index[h] >= 0) {
        if (strcmp(c->v[c->index[h]].id, id) == 0)
            return &c->v[c->index[h]];
        h = (h + 1) % c->slots;
    }
    return NULL;
}

/* Adds score s of strategy k with its reason source (kept when it is the strongest). */
void cand_add(cands_t *c, const char *id, int k, double s, const char *src, int src_kind)
{
    if (!(s > 0))
        return;
    cand_t *x = cands_get(c, id);
    if (!x)
        return;
    x->s[k] += s;
    if (s > x->src_w[k]) {
        x->src_w[k] = s;
        x->src[k] = src ? hm_arena_strdup(c->a, src) : NULL;
        x->src_kind[k] = src_kind;
    }
}

/* ---- strategies ---- */

static const hm_stmt_t st_history = {
    "rc_history",
    "SELECT item_id, sum(weight), bool_or(type IN (6, 7, 8)), (array_agg(type ORDER BY weight "
    "DESC))[1], max(occurred_at) FROM rc_events WHERE guest_id = $1::uuid AND item_id <> '' "
    "GROUP BY item_id ORDER BY max(occurred_at) DESC LIMIT 300",
    1};
static const hm_stmt_t st_dismissed = {
    "rc_dismissed",
    "SELECT DISTINCT item_id FROM rc_feedback WHERE guest_id = $1::uuid AND type = 3", 1};
static const hm_stmt_t st_has_affinity = {
    "rc_has_affinity", "SELECT EXISTS (SELECT 1 FROM rc_affinity WHERE guest_id = $1::uuid)", 1};

int load_history(hm_call_t *call, const char *guest, history_t *h)
{
    memset(h, 0, sizeof *h);
    const char *p[1] = {guest};
    PGresult *r, *d, *af;
    int rc;
    if ((rc = hm_db_exec_arena(call->db, &call->arena, &st_history, p, NULL, NULL, &r)) != 0 ||
        (rc = hm_db_exec_arena(call->db, &call->arena, &st_dismissed, p, NULL, NULL, &d)) != 0 ||
        (rc = hm_db_exec_arena(call->db, &call->arena, &st_has_affinity, p, NULL, NULL, &af)) != 0)
        return rc;
    h->n = (size_t)PQntuples(r);
    h->items = hm_arena_alloc(&call->arena, (h->n + 1) * sizeof *h->items);
    for (size_t i = 0; i < h->n; i++) {
        h->items[i].id = hm_arena_strdup(&call->arena, rec_str(r, (int)i, 0));
        h->items[i].w = rec_f64(r, (int)i, 1);
        h->items[i].consumed = strcmp(rec_str(r, (int)i, 2), "t") == 0;
        h->items[i].type = (int)rec_i64(r, (int)i, 3);
    }
    h->ndismissed = (size_t)PQntuples(d);
    h->dismissed = hm_arena_alloc(&call->arena, (h->ndismissed + 1) * sizeof(char *));
    for (size_t i = 0; i < h->ndismissed; i++)
        h->dismissed[i] = hm_arena_strdup(&call->arena, rec_str(d, (int)i, 0));
    h->has_affinity = strcmp(rec_str(af, 0, 0), "t") == 0;
    return 0;
}

static const hm_stmt_t st_popular = {
    "rc_popular",
    "SELECT p.item_id, exp(p.ln_score - (SELECT max(ln_score) FROM rc_popularity)), i.category "
    "FROM rc_popularity p JOIN rc_items i USING (item_id) WHERE NOT i.hidden AND "
    "(cardinality($1::text[]) = 0 OR i.category = ANY($1::text[])) AND ($2::smallint = 0 OR "
    "i.app = $2::smallint) ORDER BY p.ln_score DESC LIMIT $3::int",
    3};

int strat_popularity(hm_call_t *call, cands_t *c, const char *cats, int app, int limit)
{
    const char *p[3] = {cats, rec_p64(&call->arena, app), rec_p64(&call->arena, limit)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_popular, p, NULL, NULL, &r);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++)
        cand_add(c, rec_str(r, i, 0), S(POPULARITY), rec_f64(r, i, 1), rec_str(r, i, 2), 0);
    return rc;
}

/* Item-item from the model: each candidate remembers the history item that contributed most. */
static void strat_item_model(hm_call_t *call, const rec_model_t *m, const history_t *h, cands_t *c)
{
    size_t ni = (size_t)m->h->nitems, k = m->h->kneigh;
    if (k == 0 || h->n == 0)
        return;
    float *score = hm_arena_zalloc(&call->arena, ni * sizeof *score);
    float *best = hm_arena_zalloc(&call->arena, ni * sizeof *best);
    int *from = hm_arena_alloc(&call->arena, ni * sizeof *from);
    for (size_t x = 0; x < h->n; x++) {
        long idx = rec_model_item(m, h->items[x].id);
        if (idx < 0)
            continue;
        const rec_neigh_t *nb = m->neigh + (size_t)idx * k;
        for (size_t j = 0; j < k && nb[j].idx != UINT32_MAX; j++) {
            float v = (float)h->items[x].w * nb[j].w;
            score[nb[j].idx] += v;
            if (v > best[nb[j].idx]) {
                best[nb[j].idx] = v;
                from[nb[j].idx] = (int)x;
            }
        }
    }
    /* the POOL best by a partial selection: threshold from a sorted copy of the positives */
    size_t npos = 0;
    float *pos = hm_arena_alloc(&call->arena, ni * sizeof *pos);
    for (size_t j = 0; j < ni; j++)
        if (score[j] > 0)
            pos[npos++] = score[j];
    if (npos == 0)
        return;
    float thr = 0;
    if (npos > POOL) {
        qsort(pos, npos, sizeof *pos, cmp_float_desc);
        thr = pos[POOL - 1];
    }
    for (size_t j = 0; j < ni; j++)
        if (score[j] > 0 && score[j] >= thr) {
            cand_t *x = cands_get(c, rec_model_id(m, j));
            if (!x)
                break;
            x->s[S(ITEM_ITEM)] += score[j];
            x->src[S(ITEM_ITEM)] = h->items[from[j]].id;
            x->src_kind[S(ITEM_ITEM)] = h->items[from[j]].type;
            x->src_w[S(ITEM_ITEM)] = best[j];
        }
}

static const hm_stmt_t st_related = {
    "rc_related",
    "SELECT r.related_id, sum(r.weight * h.w), (array_agg(r.item_id ORDER BY r.weight * h.w "
    "DESC))[1] FROM rc_item_relations r JOIN unnest($1::text[], $2::float8[]) AS h(id, w) ON "
    "r.item_id = h.id WHERE r.type = $3::smallint GROUP BY r.related_id ORDER BY 2 DESC LIMIT 300",
    3};

/* History items and weights as Postgres arrays. */
static void history_arrays(hm_arena_t *a, const history_t *h, size_t max, const char **ids,
                           const char **ws)
{
    size_t n = h->n < max ? h->n : max;
    char **v = hm_arena_alloc(a, (n + 1) * sizeof *v);
    char *w = hm_arena_alloc(a, n * 26 + 3), *p = w;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        v[i] = (char *)h->items[i].id;
        p += sprintf(p, "%s%.6g", i ? "," : "", h->items[i].w);
    }
    *p++ = '}';
    *p = 0;
    *ids = rec_text_array(a, v, n);
    *ws = w;
}

/* Item-item without a model: the catalogue's SIMILAR_TO edges from the history. */
static int strat_item_relations(hm_call_t *call, const history_t *h, cands_t *c, int rel, int k)
{
    if (h->n == 0)
        return 0;
    const char *ids, *ws;
    history_arrays(&call->arena, h, 100, &ids, &ws);
    const char *p[3] = {ids, ws, rec_p64(&call->arena, rel)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_related, p, NULL, NULL, &r);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *src = rec_str(r, i, 2);
        int kind = 0;
        for (size_t x = 0; x < h->n; x++)
            if (strcmp(h->items[x].id, src) == 0)
                kind = h->items[x].type;
        cand_add(c, rec_str(r, i, 0), k, rec_f64(r, i, 1), src, kind);
    }
    return rc;
}

static void strat_mf(hm_call_t *call, const rec_model_t *m, const history_t *h, cands_t *c)
{
    size_t nf = m->h->nfactors, ni = (size_t)m->h->nitems;
    if (nf == 0 || h->n == 0)
        return;
    rec_hist_t *hh = hm_arena_alloc(&call->arena, h->n * sizeof *hh);
    size_t nh = 0;
    for (size_t x = 0; x < h->n; x++) {
        long idx = rec_model_item(m, h->items[x].id);
        if (idx >= 0)
            hh[nh++] = (rec_hist_t){(uint32_t)idx, (float)h->items[x].w};
    }
    if (nh == 0)
        return;
    double *u = hm_arena_alloc(&call->arena, nf * sizeof *u);
    double *work = hm_arena_alloc(&call->arena, (nf * nf + nf) * sizeof *work);
    if (rec_fold_in(m, hh, nh, u, work) != 0)
        return;
    float *score = hm_arena_alloc(&call->arena, ni * sizeof *score);
    rec_score_mf(m, u, score);
    float *pos = hm_arena_alloc(&call->arena, ni * sizeof *pos);
    size_t npos = 0;
    for (size_t j = 0; j < ni; j++)
        if (score[j] > 0)
            pos[npos++] = score[j];
    float thr = 0;
    if (npos > POOL) {
        qsort(pos, npos, sizeof *pos, cmp_float_desc);
        thr = pos[POOL - 1];
    }
    for (size_t j = 0; j < ni; j++)
        if (score[j] > 0 && score[j] >= thr)
            cand_add(c, rec_model_id(m, j), S(MATRIX_FACTORIZATION), score[j], NULL, 0);
}

/* Content: items matching the guest's strongest affinities (category, tags, attributes). */
static const hm_stmt_t st_content = {
    "rc_content",
    "WITH a AS (SELECT key, score * exp(-extract(epoch FROM now() - updated_at) / $2::float8) s "
    "FROM rc_affinity WHERE guest_id = $1::uuid ORDER BY 2 DESC LIMIT 20) SELECT k.item_id, "
    "sum(a.s), (array_agg(a.key ORDER BY a.s DESC))[1] FROM a CROSS JOIN LATERAL (SELECT item_id "
    "FROM rc_item_keys WHERE key = a.key LIMIT 150) k GROUP BY k.item_id ORDER BY 2 DESC, 1 "
    "LIMIT 300",
    2};

static int strat_content(hm_call_t *call, const char *guest, cands_t *c)
{
    double tau = (double)rec_cfg.half_life_ms / 1000.0 / log(2.0);
    const char *p[2] = {guest, rec_pf(&call->arena, tau)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_content, p, NULL, NULL, &r);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *key = rec_str(r, i, 2), *colon = strchr(key, ':');
        cand_add(c, rec_str(r, i, 0), S(CONTENT), rec_f64(r, i, 1), colon ? colon + 1 : key, 0);
    }
    return rc;
}

/* Graph: a weighted two-hop walk guest -> items -> co-purchasers -> their items, plus the
 * COMPLEMENTS edges of the guest's items. */
static const hm_stmt_t st_graph = {
    "rc_graph",
    "WITH mine AS (SELECT item_id, sum(weight) w FROM rc_events WHERE guest_id = $1::uuid AND "
    "type IN (6, 7, 8) AND item_id <> '' GROUP BY item_id ORDER BY 2 DESC LIMIT 50), peers AS "
    "(SELECT e.guest_id, sum(e.weight * m.w) s, (array_agg(m.item_id ORDER BY e.weight * m.w "
    "DESC))[1] via FROM mine m JOIN rc_events e ON e.item_id = m.item_id AND e.type IN (6, 7, 8) "
    "AND e.item_id <> '' WHERE e.guest_id <> $1::uuid GROUP BY e.guest_id ORDER BY 2 DESC LIMIT "
    "100), walk AS (SELECT e.item_id, sum(p.s * e.weight) s, (array_agg(p.via ORDER BY p.s "
    "DESC))[1] via FROM peers p JOIN rc_events e ON e.guest_id = p.guest_id AND e.type IN (6, 7, "
    "8) AND e.item_id <> '' GROUP BY e.item_id), comp AS (SELECT r.related_id item_id, "
    "sum(r.weight * m.w) * 5 s, (array_agg(r.item_id ORDER BY r.weight * m.w DESC))[1] via FROM "
    "rc_item_relations r JOIN mine m USING (item_id) WHERE r.type = 1 GROUP BY r.related_id) "
    "SELECT item_id, sum(s), (array_agg(via ORDER BY s DESC))[1] FROM (SELECT * FROM walk UNION "
    "ALL SELECT * FROM comp) x GROUP BY item_id ORDER BY 2 DESC, 1 LIMIT 300",
    1};

static int strat_graph(hm_call_t *call, const char *guest, const history_t *h, cands_t *c)
{
    const char *p[1] = {guest};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_graph, p, NULL, NULL, &r);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *via = rec_str(r, i, 2);
        int kind = 0;
        for (size_t x = 0; x < h->n; x++)
            if (strcmp(h->items[x].id, via) == 0)
                kind = h->items[x].type;
        cand_add(c, rec_str(r, i, 0), S(GRAPH), rec_f64(r, i, 1), via, kind);
    }
    return rc;
}

int cmp_float_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* ---- item metadata, filters, MMR ---- */

static const hm_stmt_t st_meta = {
    "rc_meta",
    "SELECT item_id, name, category, price_minor, currency, app, venue_id, hidden, "
    "dietary_labels, kind, tags FROM rc_items WHERE item_id = ANY($1::text[])",
    1};

int load_meta(hm_call_t *call, cands_t *c, char **extra, size_t nextra, cands_t *names)
{
    char **ids = hm_arena_alloc(&call->arena, (c->n + nextra + 1) * sizeof *ids);
    for (size_t i = 0; i < c->n; i++)
        ids[i] = (char *)c->v[i].id;
    for (size_t i = 0; i < nextra; i++)
        ids[c->n + i] = extra[i];
    const char *p[1] = {rec_text_array(&call->arena, ids, c->n + nextra)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_meta, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = rec_str(r, i, 0);
        cand_t *x = cands_find(c, id);
        if (names) {
            cand_t *nm = cands_get(names, id);
            if (nm)
                nm->name = hm_arena_strdup(&call->arena, rec_str(r, i, 1));
        }
        if (!x)
            continue;
        x->known = true;
        x->name = hm_arena_strdup(&call->arena, rec_str(r, i, 1));
        x->category = hm_arena_strdup(&call->arena, rec_str(r, i, 2));
        x->has_price = hm_db_get(r, i, 3) != NULL;
        x->price = rec_i64(r, i, 3);
        x->currency = hm_arena_strdup(&call->arena, rec_str(r, i, 4));
        x->app = (int)rec_i64(r, i, 5);
        x->venue = hm_arena_strdup(&call->arena, rec_str(r, i, 6));
        x->hidden = strcmp(rec_str(r, i, 7), "t") == 0;
        x->dietary = rec_parse_array(&call->arena, rec_str(r, i, 8), &x->ndietary);
        x->kind = (int)rec_i64(r, i, 9);
        x->tags = rec_parse_array(&call->arena, rec_str(r, i, 10), &x->ntags);
    }
    return 0;
}

static bool in_list(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* Dietary restrictions apply to food: menu items and items carrying any dietary label. */
static bool diet_ok(const cand_t *x, char *const *restr, size_t n)
{
    if (n == 0 || (x->kind != HOSPITALITY__RECOMMENDER__V1__ITEM_KIND__ITEM_KIND_MENU_ITEM &&
                   x->ndietary == 0))
        return true;
    for (size_t i = 0; i < n; i++)
        if (!in_list(x->dietary, x->ndietary, restr[i]))
            return false;
    return true;
}

bool keep_item(const cand_t *x, const filter_t *f)
{
    if (!x->known || x->hidden || x->total <= 0)
        return false;
    if (f->history && !f->include_consumed)
        for (size_t i = 0; i < f->history->n; i++)
            if (f->history->items[i].consumed && strcmp(f->history->items[i].id, x->id) == 0)
                return false;
    if (f->history && in_list(f->history->dismissed, f->history->ndismissed, x->id))
        return false;
    if (in_list(f->exclude, f->nexclude, x->id))
        return false;
    if (f->ncats && !in_list(f->cats, f->ncats, x->category))
        return false;
    if (f->min_price && (!x->has_price || x->price < f->min_price->amount_minor ||
                         strcmp(x->currency, f->min_price->currency) != 0))
        return false;
    if (f->max_price && (!x->has_price || x->price > f->max_price->amount_minor ||
                         strcmp(x->currency, f->max_price->currency) != 0))
        return false;
    if (f->app && x->app != f->app)
        return false;
    if (f->venue && f->venue[0] && strcmp(x->venue, f->venue) != 0)
        return false;
    return diet_ok(x, f->diet, f->ndiet);
}

static double item_sim(const cand_t *a, const cand_t *b)
{
    double s = a->category[0] && strcmp(a->category, b->category) == 0 ? 0.7 : 0;
    if (a->ntags && b->ntags) {
        size_t common = 0;
        for (size_t i = 0; i < a->ntags; i++)
            common += in_list(b->tags, b->ntags, a->tags[i]);
        s += 0.3 * (double)common / (double)(a->ntags + b->ntags - common);
    }
    return s;
}

static int cmp_total(const void *x, const void *y)
{
    const cand_t *a = *(cand_t *const *)x, *b = *(cand_t *const *)y;
    if (a->total != b->total)
        return a->total < b->total ? 1 : -1;
    return strcmp(a->id, b->id);
}

size_t rank_mmr(hm_arena_t *a, cands_t *c, const filter_t *f, double lambda, size_t k,
                cand_t ***out)
{
    cand_t **pool = hm_arena_alloc(a, (c->n + 1) * sizeof *pool);
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        if (keep_item(&c->v[i], f))
            pool[n++] = &c->v[i];
    qsort(pool, n, sizeof *pool, cmp_total);
    if (n > 5 * k)
        n = 5 * k;
    cand_t **sel = hm_arena_alloc(a, (k + 1) * sizeof *sel);
    size_t ns = 0;
    double top = n ? pool[0]->total : 1;
    bool *used = hm_arena_zalloc(a, n + 1);
    while (ns < k && ns < n) {
        long best = -1;
        double bv = -1e300;
        for (size_t i = 0; i < n; i++) {
            if (used[i])
                continue;
            double maxsim = 0;
            for (size_t j = 0; j < ns && lambda > 0; j++) {
                double s = item_sim(pool[i], sel[j]);
                if (s > maxsim)
                    maxsim = s;
            }
            double v = (1 - lambda) * pool[i]->total / top - lambda * maxsim;
            if (v > bv) {
                bv = v;
                best = (long)i;
            }
        }
        used[best] = true;
        sel[ns++] = pool[best];
    }
    *out = sel;
    return ns;
}

static const char *verb(int type)
{
    switch (type) {
    case 2:
        return "watched";
    case 4:
        return "rated";
    case 5:
        return "saved";
    case 6:
        return "bought";
    case 7:
        return "booked";
    case 8:
        return "ordered";
    default:
        return "viewed";
    }
}

const char *item_name(const cands_t *names, const char *id)
{
    const cand_t *n = names ? cands_find(names, id) : NULL;
    return n && n->name && n->name[0] ? n->name : id;
}

const char *reason_for(hm_arena_t *a, const cand_t *x, int k, const cands_t *names)
{
    const char *src = x->src[k];
    switch (k) {
    case S(POPULARITY):
        return x->category[0] ? hm_arena_printf(a, "popular in %s", x->category)
                              : "popular right now";
    case S(ITEM_ITEM):
        return src ? hm_arena_printf(a, "because you %s %s", verb(x->src_kind[k]),
                                     item_name(names, src))
                   : "similar to items you liked";
    case S(MATRIX_FACTORIZATION):
        return "picked for your taste";
    case S(CONTENT):
        return src ? hm_arena_printf(a, "matches your interest in %s", src)
                   : "matches your interests";
    case S(GRAPH):
        return src ? hm_arena_printf(a, "guests who %s %s also chose this", verb(x->src_kind[k]),
                                     item_name(names, src))
                   : "chosen by guests like you";
    default:
        return "recommended";
    }
}

/* ---- guestd's personalization context (optional) ---- */

static void load_preferences(hm_call_t *call, const char *guest, const char *venue, filter_t *f)
{
    Hospitality__Guest__V1__GetPersonalizationContextRequest req =
        HOSPITALITY__GUEST__V1__GET_PERSONALIZATION_CONTEXT_REQUEST__INIT;
    req.guest_id = (char *)guest;
    req.venue_id = (char *)(venue ? venue : "");
    ProtobufCMessage *resp = NULL;
    hm_peer_opts_t opts = {.timeout_ms = 300, .max_attempts = 1};
    hm_status_t st = hm_peer_call(
        call, &call->arena, "guestd",
        "/hospitality.guest.v1.GuestService/GetPersonalizationContext", &req.base,
        &hospitality__guest__v1__get_personalization_context_response__descriptor, &opts, &resp);
    if (st.code != HM_CODE_OK || !resp)
        return; /* no explicit preferences known: no dietary filter, no boost */
    const Hospitality__Guest__V1__GetPersonalizationContextResponse *r = (const void *)resp;
    if (!r->context || !r->context->preferences)
        return;
    f->diet = r->context->preferences->dietary_restrictions;
    f->ndiet = r->context->preferences->n_dietary_restrictions;
    f->fav = r->context->preferences->favorite_categories;
    f->nfav = r->context->preferences->n_favorite_categories;
}

/* ---- history and publication ---- */

typedef struct save_tx {
    hm_call_t *call;
    const char *rec_id, *guest, *rules;
    int kind, strategy, app;
    bool personalized;
    const char *model_version;
    Hospitality__Recommender__V1__RecommendedItem **items;
    size_t n;
    const ProtobufCMessage *extra_event; /* cross-sell: published too */
    const char *extra_type;
} save_tx_t;

static const hm_stmt_t st_save = {
    "rc_save",
    "INSERT INTO rc_recommendations (recommendation_id, guest_id, kind, strategy, model_version, "
    "personalized, app, rules, record) VALUES ($1::uuid, $2::uuid, $3::smallint, $4::smallint, "
    "$5, $6::boolean, $7::smallint, $8::text[], $9)",
    9};

static const hm_stmt_t st_async_commit = {
    "rc_async_commit", "SELECT set_config('synchronous_commit', 'off', true)", 0};

static int save_fn(hm_db_t *db, void *arg)
{
    save_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    /* a served list and its event are analytics: this transaction does not wait for the WAL
     * flush (atomic still; a crash may lose the last few hundred milliseconds of them) */
    int rc0 = hm_db_exec(db, &st_async_commit, NULL, NULL, NULL, NULL);
    if (rc0 != 0)
        return rc0;
    Hospitality__Recommender__V1__RecommendationRecord rec =
        HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_RECORD__INIT;
    rec.recommendation_id = (char *)t->rec_id;
    rec.guest_id = (char *)(t->guest ? t->guest : "");
    rec.kind = t->kind;
    rec.strategy = t->strategy;
    rec.model_version = (char *)t->model_version;
    rec.items = t->items;
    rec.n_items = t->n;
    rec.personalized = t->personalized;
    rec.app = t->app;
    rec.served_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    size_t n = protobuf_c_message_get_packed_size(&rec.base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&rec.base, buf);
    const char *p[9] = {t->rec_id,           t->guest && t->guest[0] ? t->guest : NULL,
                        rec_p64(a, t->kind), rec_p64(a, t->strategy),
                        t->model_version,    hm_db_param_bool(t->personalized),
                        rec_p64(a, t->app),  t->rules ? t->rules : "{}",
                        (const char *)buf};
    int lens[9] = {0, 0, 0, 0, 0, 0, 0, 0, (int)n}, fmts[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    int rc = hm_db_exec(db, &st_save, p, lens, fmts, NULL);
    if (rc != 0)
        return rc;
    Hospitality__Events__V1__RecommendationGenerated ev =
        HOSPITALITY__EVENTS__V1__RECOMMENDATION_GENERATED__INIT;
    ev.recommendation_id = (char *)t->rec_id;
    ev.guest_id = (char *)(t->guest ? t->guest : "");
    ev.strategy = t->strategy;
    ev.model_version = (char *)t->model_version;
    ev.item_ids = hm_arena_alloc(a, (t->n + 1) * sizeof(char *));
    for (size_t i = 0; i < t->n; i++)
        ev.item_ids[ev.n_item_ids++] = t->items[i]->item_id;
    ev.personalized = t->personalized;
    ev.app = t->app;
    const char *subject = t->guest && t->guest[0] ? t->guest : NULL;
    if ((rc = hm_call_publish(t->call, db, "recommendation.generated", subject, &ev.base)) != 0)
        return rc;
    if (t->extra_event)
        rc = hm_call_publish(t->call, db, t->extra_type, subject, t->extra_event);
    return rc;
}

/*
 * Personal lists (Recommend, the hot path) are not written by the call that serves them: they
 * are queued in memory and written in batches (one transaction, list rows and their
 * recommendation.generated events together) by whichever call finds the queue 64 long or its
 * oldest entry 50 ms old, by the history-flush task, before any read of the history
 * (ListRecommendationHistory, SubmitFeedback, export, erasure) and at shutdown. A crash loses
 * at most that window, like the asynchronous commit of the other lists.
 */
typedef struct pending {
    struct pending *next;
    char *guest;
    uint8_t *record, *event;
    size_t record_len, event_len;
    char id[HM_UUID_LEN + 1];
    char version[64];
    int strategy, app;
    bool personalized;
    int64_t served_us;
} pending_t;

static pthread_mutex_t pend_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t flush_lock = PTHREAD_MUTEX_INITIALIZER;
static pending_t *pend_head, **pend_tail = &pend_head;
static size_t pend_n;
static int64_t pend_oldest_ms;

static void pending_free(pending_t *p)
{
    while (p) {
        pending_t *next = p->next;
        free(p->guest);
        free(p->record);
        free(p->event);
        free(p);
        p = next;
    }
}

static const hm_stmt_t st_save_pending = {
    "rc_save_pending",
    "INSERT INTO rc_recommendations (recommendation_id, guest_id, kind, strategy, model_version, "
    "personalized, app, record, served_at) SELECT $1::uuid, $2::uuid, 1, $3::smallint, $4, "
    "$5::boolean, $6::smallint, $7, to_timestamp($8::bigint / 1e6) WHERE NOT EXISTS (SELECT 1 "
    "FROM rc_erased_guests WHERE guest_hash = encode(sha256(convert_to($2::uuid::text, 'UTF8')), "
    "'hex')) "
    "RETURNING 1",
    8};

typedef struct flush_tx {
    hm_call_t *call;
    hm_arena_t *arena;
    pending_t *list;
} flush_tx_t;

static int flush_fn(hm_db_t *db, void *arg)
{
    flush_tx_t *t = arg;
    int rc = hm_db_exec(db, &st_async_commit, NULL, NULL, NULL, NULL);
    for (pending_t *p = t->list; rc == 0 && p; p = p->next) {
        const char *v[8] = {p->id,
                            p->guest,
                            rec_p64(t->arena, p->strategy),
                            p->version,
                            hm_db_param_bool(p->personalized),
                            rec_p64(t->arena, p->app),
                            (const char *)p->record,
                            rec_p64(t->arena, p->served_us)};
        int lens[8] = {0, 0, 0, 0, 0, 0, (int)p->record_len, 0};
        int fmts[8] = {0, 0, 0, 0, 0, 0, 1, 0};
        PGresult *r;
        if ((rc = hm_db_exec_arena(db, t->arena, &st_save_pending, v, lens, fmts, &r)) != 0)
            break;
        if (PQntuples(r) == 0)
            continue; /* erased meanwhile: neither the list nor its event */
        ProtobufCMessage *ev = protobuf_c_message_unpack(
            &hospitality__events__v1__recommendation_generated__descriptor, hm_arena_pb(t->arena),
            p->event_len, p->event);
        if (!ev)
            return HM_EINTERNAL;
        rc = t->call ? hm_call_publish(t->call, db, "recommendation.generated", p->guest, ev)
                     : hm_publish(db, t->arena, "recommendation.generated", p->guest, NULL, ev);
    }
    return rc;
}

int rec_history_flush(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, bool wait)
{
    if (wait)
        pthread_mutex_lock(&flush_lock);
    else if (pthread_mutex_trylock(&flush_lock) != 0)
        return 0; /* another call is flushing */
    pthread_mutex_lock(&pend_lock);
    pending_t *list = pend_head;
    pend_head = NULL;
    pend_tail = &pend_head;
    pend_n = 0;
    pthread_mutex_unlock(&pend_lock);
    int rc = 0;
    if (list) {
        flush_tx_t t = {call, arena, list};
        rc = hm_db_tx(db, flush_fn, &t, HM_DB_READ_COMMITTED);
        if (rc == 0) {
            pending_free(list);
        } else { /* back in front of what came meanwhile */
            pthread_mutex_lock(&pend_lock);
            pending_t **end = &list;
            size_t n = 0;
            while (*end) {
                end = &(*end)->next;
                n++;
            }
            *end = pend_head;
            if (!pend_head)
                pend_tail = end;
            pend_head = list;
            pend_n += n;
            pend_oldest_ms = hm_mono_ms();
            pthread_mutex_unlock(&pend_lock);
            HM_WARN("history flush failed (%d lists kept for the next attempt): %s", (int)n,
                    hm_err_name(rc));
        }
    }
    pthread_mutex_unlock(&flush_lock);
    return rc;
}

int rec_task_flush(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)app;
    return rec_history_flush(NULL, db, arena, true);
}

void rec_history_shutdown(void)
{
    const hm_common_config_t *c = hm_config();
    if (pend_n && c) {
        hm_db_t *db = hm_db_create(c->database_url, 10000);
        hm_arena_t a;
        hm_arena_init(&a, 65536);
        if (db && rec_history_flush(NULL, db, &a, true) != 0)
            HM_ERROR("history flush at shutdown failed: %zu served lists lost", pend_n);
        hm_arena_deinit(&a);
        hm_db_destroy(db);
    }
    pending_free(pend_head);
    pend_head = NULL;
    pend_tail = &pend_head;
    pend_n = 0;
}

static uint8_t *pack_malloc(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = hm_xmalloc(*len + 1);
    protobuf_c_message_pack(m, b);
    return b;
}

static int queue_list(hm_call_t *call, const char *rec_id, const char *guest, int strategy,
                      const char *model_version, bool personalized, int app,
                      Hospitality__Recommender__V1__RecommendedItem **items, size_t n)
{
    hm_arena_t *a = &call->arena;
    pending_t *p = hm_xcalloc(1, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", rec_id);
    snprintf(p->version, sizeof p->version, "%s", model_version);
    p->guest = hm_xstrdup(guest);
    p->strategy = strategy;
    p->app = app;
    p->personalized = personalized;
    Hospitality__Recommender__V1__RecommendationRecord rec =
        HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_RECORD__INIT;
    rec.recommendation_id = (char *)rec_id;
    rec.guest_id = (char *)guest;
    rec.kind = HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_PERSONAL;
    rec.strategy = strategy;
    rec.model_version = (char *)model_version;
    rec.items = items;
    rec.n_items = n;
    rec.personalized = personalized;
    rec.app = app;
    p->served_us = hm_now_ms() * 1000;
    rec.served_at = hm_timestamp_from_us(a, p->served_us);
    p->record = pack_malloc(&rec.base, &p->record_len);
    Hospitality__Events__V1__RecommendationGenerated ev =
        HOSPITALITY__EVENTS__V1__RECOMMENDATION_GENERATED__INIT;
    ev.recommendation_id = (char *)rec_id;
    ev.guest_id = (char *)guest;
    ev.strategy = strategy;
    ev.model_version = (char *)model_version;
    ev.item_ids = hm_arena_alloc(a, (n + 1) * sizeof(char *));
    for (size_t i = 0; i < n; i++)
        ev.item_ids[ev.n_item_ids++] = items[i]->item_id;
    ev.personalized = personalized;
    ev.app = app;
    p->event = pack_malloc(&ev.base, &p->event_len);
    pthread_mutex_lock(&pend_lock);
    if (!pend_head)
        pend_oldest_ms = hm_mono_ms();
    *pend_tail = p;
    pend_tail = &p->next;
    bool due = ++pend_n >= 64 || hm_mono_ms() - pend_oldest_ms >= 50;
    pthread_mutex_unlock(&pend_lock);
    if (due)
        rec_history_flush(call, call->db, a, false);
    return 0;
}

int save_list(hm_call_t *call, const char *rec_id, const char *guest, int kind, int strategy,
              const char *model_version, bool personalized, int app,
              Hospitality__Recommender__V1__RecommendedItem **items, size_t n, const char *rules,
              const char *extra_type, const ProtobufCMessage *extra)
{
    if (kind == HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_PERSONAL &&
        guest && guest[0] && !extra)
        return queue_list(call, rec_id, guest, strategy, model_version, personalized, app, items,
                          n);
    save_tx_t t = {call,         rec_id,        guest, rules, kind,  strategy,  app,
                   personalized, model_version, items, n,     extra, extra_type};
    return hm_db_tx(call->db, save_fn, &t, HM_DB_READ_COMMITTED);
}

char *new_id(hm_arena_t *a)
{
    char *id = hm_arena_alloc(a, HM_UUID_LEN + 1);
    hm_uuid_v7(id);
    return id;
}

/* ---- Recommend ---- */

static hm_status_t validate_common(hm_call_t *call, const char *guest, int32_t limit, int max)
{
    if (!hm_uuid_valid(guest))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (limit < 0 || limit > max)
        return hm_call_invalid(call, "limit", "limit must be within 0..%d", max);
    return HM_STATUS_OK;
}

static bool strs_valid(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!v[i][0] || strlen(v[i]) > 64 || !hm_utf8_valid(v[i]))
            return false;
    return true;
}

REC_HANDLER(rec_recommend)
{
    const Hospitality__Recommender__V1__RecommendRequest *req = (const void *)in;
    hm_status_t st = validate_common(call, req->guest_id, req->limit, 100);
    if (st.code != HM_CODE_OK)
        return st;
    if ((int)req->strategy < 0 || (int)req->strategy > S(HYBRID))
        return hm_call_invalid(call, "strategy", "strategy must be one of POPULARITY..HYBRID");
    if (req->n_categories > 50 || !strs_valid(req->categories, req->n_categories))
        return hm_call_invalid(call, "categories", "at most 50 categories of 1..64 bytes");
    if (req->n_exclude_item_ids > 500)
        return hm_call_invalid(call, "exclude_item_ids", "at most 500");
    for (size_t i = 0; i < req->n_exclude_item_ids; i++)
        if (!rec_valid_item_id(req->exclude_item_ids[i]))
            return hm_call_invalid(call, "exclude_item_ids", "bad item id at %zu", i);
    if (req->min_price &&
        (req->min_price->amount_minor < 0 || strlen(req->min_price->currency) != 3))
        return hm_call_invalid(call, "min_price", "an amount >= 0 and a 3-letter currency");
    if (req->max_price &&
        (req->max_price->amount_minor < 0 || strlen(req->max_price->currency) != 3))
        return hm_call_invalid(call, "max_price", "an amount >= 0 and a 3-letter currency");
    if (req->min_price && req->max_price &&
        (strcmp(req->min_price->currency, req->max_price->currency) != 0 ||
         req->min_price->amount_minor > req->max_price->amount_minor))
        return hm_call_invalid(call, "max_price", "max_price below min_price or another currency");
    if (req->diversity && !(req->diversity->value >= 0 && req->diversity->value <= 1))
        return hm_call_invalid(call, "diversity", "diversity must be within 0..1");
    if ((int)req->app < 0 || (int)req->app > HOSPITALITY__COMMON__V1__APP__APP_GAMIFICATION)
        return hm_call_invalid(call, "app", "unknown app");
    if (req->venue_id && strlen(req->venue_id) > 128)
        return hm_call_invalid(call, "venue_id", "at most 128 bytes");
    int limit = req->limit ? req->limit : 10;
    hm_arena_t *a = &call->arena;

    /* the cache: per guest generation and request */
    const char *ckey = NULL;
    if (rec_cfg.cache_ttl_ms > 0) {
        /* the guest's generation and the catalogue's: either change orphans the list */
        const char *gen = rec_cache_gen(call->cache, a, req->guest_id);
        const char *cgen = gen ? rec_cache_gen(call->cache, a, "catalogue") : NULL;
        if (gen && cgen) {
            size_t n = protobuf_c_message_get_packed_size(&req->base);
            uint8_t *buf = hm_arena_alloc(a, n + 1);
            protobuf_c_message_pack(&req->base, buf);
            ckey = hm_arena_printf(a, "hm:recommenderd:rec:%s:%s.%s:%016llx", req->guest_id, gen,
                                   cgen, (unsigned long long)rec_fnv1a(buf, n));
            char *val;
            size_t len;
            if (hm_cache_get(call->cache, a, ckey, &val, &len) == 0) {
                Hospitality__Recommender__V1__RecommendResponse *hit =
                    (void *)protobuf_c_message_unpack(
                        &hospitality__recommender__v1__recommend_response__descriptor,
                        hm_arena_pb(a), len, (uint8_t *)val);
                if (hit) {
                    hit->recommendation_id = new_id(a);
                    int rc = save_list(
                        call, hit->recommendation_id, req->guest_id,
                        HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_PERSONAL,
                        hit->strategy, hit->model_version, hit->personalized, req->app, hit->items,
                        hit->n_items, NULL, NULL, NULL);
                    if (rc != 0)
                        return hm_call_fail(call, rc, "record recommendation");
                    *out = &hit->base;
                    return HM_STATUS_OK;
                }
            }
        }
    }

    Hospitality__Recommender__V1__RecommendResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__recommend_response__init(resp);
    int consent = rec_consent(call, req->guest_id);
    history_t hist = {0};
    filter_t f = {.exclude = req->exclude_item_ids,
                  .nexclude = req->n_exclude_item_ids,
                  .cats = req->categories,
                  .ncats = req->n_categories,
                  .min_price = req->min_price,
                  .max_price = req->max_price,
                  .include_consumed = req->include_consumed,
                  .app = req->app,
                  .venue = req->venue_id};
    bool personal = consent == 1;
    if (personal) {
        int rc = load_history(call, req->guest_id, &hist);
        if (rc != 0)
            return hm_call_fail(call, rc, "load history");
        f.history = &hist;
        if (hist.n == 0 && !hist.has_affinity) {
            personal = false;
            resp->non_personalized_reason = NP(NO_HISTORY);
        } else {
            load_preferences(call, req->guest_id, req->venue_id, &f);
        }
    } else {
        resp->non_personalized_reason = consent == 0 ? NP(NO_CONSENT) : NP(DEPENDENCY_UNAVAILABLE);
    }

    double w[REC_NW] = {0};
    int strategy = req->strategy ? req->strategy : S(HYBRID);
    if (!personal)
        strategy = S(POPULARITY);
    if (strategy == S(HYBRID))
        memcpy(w, rec_weights, sizeof w);
    else
        w[strategy] = 1;

    rec_loaded_t *model = rec_model_get();
    resp->model_version = hm_arena_strdup(a, model ? model->m.h->version : "none");
    cands_t c;
    cands_init(&c, a, 2048);
    const char *cats = rec_text_array(a, req->categories, req->n_categories);
    int rc = 0;
    if (w[S(POPULARITY)] > 0)
        rc = strat_popularity(call, &c, cats, req->app, POOL);
    if (rc == 0 && w[S(ITEM_ITEM)] > 0) {
        if (model && model->m.h->kneigh)
            strat_item_model(call, &model->m, &hist, &c);
        else
            rc = strat_item_relations(call, &hist, &c, 2, S(ITEM_ITEM));
    }
    if (rc == 0 && w[S(MATRIX_FACTORIZATION)] > 0 && model)
        strat_mf(call, &model->m, &hist, &c);
    rec_model_put(model);
    if (rc == 0 && w[S(CONTENT)] > 0)
        rc = strat_content(call, req->guest_id, &c);
    if (rc == 0 && w[S(GRAPH)] > 0)
        rc = strat_graph(call, req->guest_id, &hist, &c);
    if (rc != 0)
        return hm_call_fail(call, rc, "score candidates");

    /* blend: each strategy scaled to max 1, weighted */
    double mx[REC_NW] = {0};
    for (size_t i = 0; i < c.n; i++)
        for (int k = 1; k < REC_NW; k++)
            if (c.v[i].s[k] > mx[k])
                mx[k] = c.v[i].s[k];
    for (size_t i = 0; i < c.n; i++) {
        cand_t *x = &c.v[i];
        double best = 0;
        for (int k = 1; k < REC_NW; k++) {
            double v = mx[k] > 0 ? w[k] * x->s[k] / mx[k] : 0;
            x->total += v;
            if (v > best) {
                best = v;
                x->top = k;
            }
        }
    }
    char **srcs = hm_arena_alloc(a, (hist.n + 1) * sizeof *srcs);
    for (size_t i = 0; i < hist.n; i++)
        srcs[i] = (char *)hist.items[i].id;
    cands_t names;
    cands_init(&names, a, c.n + hist.n + 1);
    if ((rc = load_meta(call, &c, srcs, hist.n, &names)) != 0)
        return hm_call_fail(call, rc, "load items");
    for (size_t i = 0; i < c.n; i++) /* favourite categories boost */
        if (in_list(f.fav, f.nfav, c.v[i].category))
            c.v[i].total *= 1.25;
    double lambda = req->diversity ? req->diversity->value : (double)rec_cfg.diversity / 100.0;
    cand_t **top;
    size_t n = rank_mmr(a, &c, &f, lambda, (size_t)limit, &top);

    resp->items = hm_arena_alloc(a, (n + 1) * sizeof *resp->items);
    for (size_t i = 0; i < n; i++) {
        Hospitality__Recommender__V1__RecommendedItem *it = hm_arena_alloc(a, sizeof *it);
        hospitality__recommender__v1__recommended_item__init(it);
        it->item_id = (char *)top[i]->id;
        it->score = top[i]->total;
        it->category = (char *)top[i]->category;
        it->strategy = top[i]->top;
        it->reason = (char *)reason_for(a, top[i], top[i]->top, &names);
        if (!personal && it->strategy == S(POPULARITY))
            it->strategy = S(POPULARITY);
        it->position = (int32_t)i;
        resp->items[resp->n_items++] = it;
    }
    resp->personalized = personal;
    resp->strategy = strategy;
    resp->generated_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    if (ckey) { /* cached without its id: every serving gets its own */
        size_t cn = protobuf_c_message_get_packed_size(&resp->base);
        uint8_t *buf = hm_arena_alloc(a, cn + 1);
        protobuf_c_message_pack(&resp->base, buf);
        hm_cache_set(call->cache, ckey, buf, cn, rec_cfg.cache_ttl_ms);
    }
    resp->recommendation_id = new_id(a);
    rc = save_list(call, resp->recommendation_id, req->guest_id,
                   HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_PERSONAL,
                   strategy, resp->model_version, personal, req->app, resp->items, resp->n_items,
                   NULL, NULL, NULL);
    if (rc != 0)
        return hm_call_fail(call, rc, "record recommendation");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- RecommendSimilarItems ---- */

static const hm_stmt_t st_copurchase = {
    "rc_copurchase",
    "WITH buyers AS (SELECT DISTINCT guest_id FROM rc_events WHERE item_id = $1 AND type IN (6, "
    "7, 8) LIMIT 500) SELECT e.item_id, count(DISTINCT e.guest_id)::float8 / (SELECT "
    "greatest(count(*), 1) FROM buyers) FROM rc_events e JOIN buyers USING (guest_id) WHERE "
    "e.type IN (6, 7, 8) AND e.item_id <> $1 AND e.item_id <> '' GROUP BY e.item_id ORDER BY 2 "
    "DESC, 1 LIMIT 300",
    1};
static const hm_stmt_t st_same_cat = {
    "rc_same_cat",
    "SELECT i.item_id, 0.1 * coalesce(exp(p.ln_score - max(p.ln_score) OVER ()), 0.01) FROM "
    "rc_items i LEFT JOIN rc_popularity p USING (item_id) WHERE i.category = (SELECT category "
    "FROM rc_items WHERE item_id = $1) AND i.category <> '' AND i.item_id <> $1 AND NOT i.hidden "
    "ORDER BY p.ln_score DESC NULLS LAST, i.item_id LIMIT 300",
    1};

REC_HANDLER(rec_recommend_similar)
{
    const Hospitality__Recommender__V1__RecommendSimilarItemsRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!rec_valid_item_id(req->item_id))
        return hm_call_invalid(call, "item_id", "bad item id");
    if (req->limit < 0 || req->limit > 100)
        return hm_call_invalid(call, "limit", "limit must be within 0..100");
    if ((int)req->relation < 0 || (int)req->relation > 2)
        return hm_call_invalid(call, "relation", "SIMILAR_TO or COMPLEMENTS");
    if (req->guest_id[0] && !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID when set");
    if (call->principal &&
        (call->principal->roles & (HM_ROLE_STAFF | HM_ROLE_ADMIN | HM_ROLE_SERVICE)) == 0 &&
        req->guest_id[0] && strcmp(call->principal->subject, req->guest_id) != 0)
        return hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                             "a guest may only ask for itself");
    if (req->n_categories > 50 || !strs_valid(req->categories, req->n_categories))
        return hm_call_invalid(call, "categories", "at most 50 categories of 1..64 bytes");
    int limit = req->limit ? req->limit : 10;
    bool comp = (int)req->relation ==
                HOSPITALITY__RECOMMENDER__V1__ITEM_RELATION_TYPE__ITEM_RELATION_TYPE_COMPLEMENTS;
    const char *p[1] = {req->item_id};
    PGresult *r;
    int rc = hm_db_exec_arena(
        call->db, a, &st_meta,
        (const char *[]){rec_text_array(a, (char *[]){(char *)req->item_id}, 1)}, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "load item");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no item %s", req->item_id);
    const char *src_name = hm_arena_strdup(a, rec_str(r, 0, 1));
    cands_t c;
    cands_init(&c, a, 1024);
    history_t one = {.n = 1};
    history_item_t hi = {.id = req->item_id, .w = 1, .type = 0};
    one.items = &hi;
    rec_loaded_t *model = rec_model_get();
    const char *version = hm_arena_strdup(a, model ? model->m.h->version : "none");
    int k = comp ? S(GRAPH) : S(ITEM_ITEM);
    if (!comp && model && model->m.h->kneigh)
        strat_item_model(call, &model->m, &one, &c);
    rec_model_put(model);
    rc = strat_item_relations(call, &one, &c, comp ? 1 : 2, k);
    if (rc == 0 && comp) { /* co-purchases: the graph's PURCHASED edges two hops away */
        PGresult *cp;
        rc = hm_db_exec_arena(call->db, a, &st_copurchase, p, NULL, NULL, &cp);
        for (int i = 0; rc == 0 && i < PQntuples(cp); i++)
            cand_add(&c, rec_str(cp, i, 0), k, 0.5 * rec_f64(cp, i, 1), req->item_id, 0);
    } else if (rc == 0) { /* content: the same category, by popularity */
        PGresult *sc;
        rc = hm_db_exec_arena(call->db, a, &st_same_cat, p, NULL, NULL, &sc);
        for (int i = 0; rc == 0 && i < PQntuples(sc); i++)
            cand_add(&c, rec_str(sc, i, 0), S(CONTENT), rec_f64(sc, i, 1), NULL, 0);
    }
    if (rc != 0)
        return hm_call_fail(call, rc, "score candidates");
    history_t hist = {0};
    filter_t f = {.cats = req->categories, .ncats = req->n_categories};
    if (req->guest_id[0] && rec_consent(call, req->guest_id) == 1) {
        if ((rc = load_history(call, req->guest_id, &hist)) != 0)
            return hm_call_fail(call, rc, "load history");
        f.history = &hist;
        load_preferences(call, req->guest_id, NULL, &f);
    }
    for (size_t i = 0; i < c.n; i++) {
        cand_t *x = &c.v[i];
        for (int s = 1; s < REC_NW; s++)
            if (x->s[s] > x->total) {
                x->total = x->s[s];
                x->top = s;
            }
        if (strcmp(x->id, req->item_id) == 0)
            x->total = 0;
    }
    if ((rc = load_meta(call, &c, NULL, 0, NULL)) != 0)
        return hm_call_fail(call, rc, "load items");
    cand_t **top;
    size_t n = rank_mmr(a, &c, &f, 0, (size_t)limit, &top);
    Hospitality__Recommender__V1__RecommendSimilarItemsResponse *resp =
        hm_arena_alloc(a, sizeof *resp);
    hospitality__recommender__v1__recommend_similar_items_response__init(resp);
    resp->items = hm_arena_alloc(a, (n + 1) * sizeof *resp->items);
    for (size_t i = 0; i < n; i++) {
        Hospitality__Recommender__V1__RecommendedItem *it = hm_arena_alloc(a, sizeof *it);
        hospitality__recommender__v1__recommended_item__init(it);
        it->item_id = (char *)top[i]->id;
        it->score = top[i]->total;
        it->category = (char *)top[i]->category;
        it->strategy = top[i]->top;
        it->reason = comp ? hm_arena_printf(a, "goes well with %s", src_name)
                          : hm_arena_printf(a, "similar to %s", src_name);
        it->position = (int32_t)i;
        resp->items[resp->n_items++] = it;
    }
    resp->model_version = (char *)version;
    resp->recommendation_id = new_id(a);
    rc = save_list(
        call, resp->recommendation_id, req->guest_id,
        HOSPITALITY__RECOMMENDER__V1__RECOMMENDATION_KIND__RECOMMENDATION_KIND_SIMILAR_ITEMS,
        comp ? S(GRAPH) : S(ITEM_ITEM), version, f.history != NULL, 0, resp->items, resp->n_items,
        NULL, NULL, NULL);
    if (rc != 0)
        return hm_call_fail(call, rc, "record recommendation");
    *out = &resp->base;
    return HM_STATUS_OK;
}
