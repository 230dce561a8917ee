/*
 * serve.c - what serving shares across calls: the loaded model (reference-counted, swapped
 * atomically by ReloadModel: calls in flight keep the model they started with), GetModelInfo,
 * the consent look-up at privacyd with its Redis cache, and the per-guest cache generation
 * that invalidates cached lists.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/log.h"
#include "hm/peer.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "rec.h"

static pthread_mutex_t model_lock = PTHREAD_MUTEX_INITIALIZER;
static rec_loaded_t *current;

rec_loaded_t *rec_model_get(void)
{
    pthread_mutex_lock(&model_lock);
    rec_loaded_t *l = current;
    if (l)
        l->refs++;
    pthread_mutex_unlock(&model_lock);
    return l;
}

static void destroy(rec_loaded_t *l)
{
    rec_model_close(&l->m);
    free(l);
}

void rec_model_put(rec_loaded_t *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&model_lock);
    bool last = --l->refs == 0 && l->retired;
    pthread_mutex_unlock(&model_lock);
    if (last)
        destroy(l);
}

int rec_model_reload(const char *path, bool *changed, char *err, size_t errlen)
{
    rec_loaded_t *l = hm_xcalloc(1, sizeof *l);
    if (rec_model_open(path, &l->m, err, errlen) != 0) {
        free(l);
        return -1;
    }
    snprintf(l->path, sizeof l->path, "%s", path);
    l->loaded_at_us = hm_now_ms() * 1000;
    pthread_mutex_lock(&model_lock);
    rec_loaded_t *old = current;
    *changed = !old || strcmp(old->m.h->version, l->m.h->version) != 0;
    bool free_old = false;
    if (*changed) {
        current = l;
        if (old) {
            old->retired = true;
            free_old = old->refs == 0;
        }
    }
    pthread_mutex_unlock(&model_lock);
    if (!*changed) {
        destroy(l);
        return 0;
    }
    if (free_old)
        destroy(old);
    HM_INFO("model %s loaded from %s (%lld items, %u factors, %u neighbours)", l->m.h->version,
            path, (long long)l->m.h->nitems, l->m.h->nfactors, l->m.h->kneigh);
    return 0;
}

void rec_model_shutdown(void)
{
    pthread_mutex_lock(&model_lock);
    rec_loaded_t *old = current;
    current = NULL;
    bool free_old = false;
    if (old) {
        old->retired = true;
        free_old = old->refs == 0;
    }
    pthread_mutex_unlock(&model_lock);
    if (free_old)
        destroy(old);
}

/* ---- GetModelInfo / ReloadModel ---- */

static const hm_stmt_t st_online = {
    "rc_online",
    "SELECT strategy, model_version, count(*) FILTER (WHERE type = 1), count(*) FILTER (WHERE "
    "type = 2), count(*) FILTER (WHERE type = 4) FROM rc_feedback GROUP BY 1, 2 ORDER BY 1, 2",
    0};

Hospitality__Recommender__V1__ModelInfo *rec_model_info(hm_call_t *call, rec_loaded_t *l)
{
    hm_arena_t *a = &call->arena;
    Hospitality__Recommender__V1__ModelInfo *mi = hm_arena_alloc(a, sizeof *mi);
    hospitality__recommender__v1__model_info__init(mi);
    mi->blend_weights = hm_arena_alloc(a, REC_NW * sizeof(void *));
    const double *w = rec_weights;
    if (l) {
        const rec_header_t *h = l->m.h;
        mi->model_version = hm_arena_strdup(a, h->version);
        mi->model_path = hm_arena_strdup(a, l->path);
        mi->format = hm_arena_printf(a, "hmrec/%u", h->format);
        mi->trained_at = hm_timestamp_from_us(a, h->trained_at_us);
        mi->loaded_at = hm_timestamp_from_us(a, l->loaded_at_us);
        mi->training_users = h->nusers;
        mi->training_items = h->nitems;
        mi->training_interactions = h->ninteractions;
        mi->offline_metrics = hm_arena_alloc(a, (h->nmetrics + 1) * sizeof(void *));
        for (uint32_t i = 0; i < h->nmetrics; i++) {
            Hospitality__Recommender__V1__OfflineMetric *om = hm_arena_alloc(a, sizeof *om);
            hospitality__recommender__v1__offline_metric__init(om);
            om->name = hm_arena_strndup(a, l->m.metrics[i].name, sizeof l->m.metrics[i].name);
            om->protocol =
                hm_arena_strndup(a, l->m.metrics[i].protocol, sizeof l->m.metrics[i].protocol);
            om->value = l->m.metrics[i].value;
            om->ci_low = l->m.metrics[i].lo;
            om->ci_high = l->m.metrics[i].hi;
            mi->offline_metrics[mi->n_offline_metrics++] = om;
        }
    } else {
        mi->model_version = "none";
        mi->format = "";
    }
    for (int s = 1; s < REC_NW; s++) {
        if (w[s] <= 0)
            continue;
        Hospitality__Recommender__V1__StrategyWeight *sw = hm_arena_alloc(a, sizeof *sw);
        hospitality__recommender__v1__strategy_weight__init(sw);
        sw->strategy = s;
        sw->weight = w[s];
        mi->blend_weights[mi->n_blend_weights++] = sw;
    }
    PGresult *r;
    if (call->db && hm_db_exec_arena(call->db, a, &st_online, NULL, NULL, NULL, &r) == 0) {
        mi->online_stats = hm_arena_alloc(a, ((size_t)PQntuples(r) + 1) * sizeof(void *));
        for (int i = 0; i < PQntuples(r); i++) {
            Hospitality__Recommender__V1__StrategyStats *ss = hm_arena_alloc(a, sizeof *ss);
            hospitality__recommender__v1__strategy_stats__init(ss);
            ss->strategy = (int)rec_i64(r, i, 0);
            ss->model_version = hm_arena_strdup(a, rec_str(r, i, 1));
            ss->stats = hm_arena_alloc(a, sizeof *ss->stats);
            hospitality__recommender__v1__conversion_stats__init(ss->stats);
            ss->stats->impressions = rec_i64(r, i, 2);
            ss->stats->clicks = rec_i64(r, i, 3);
            ss->stats->conversions = rec_i64(r, i, 4);
            if (ss->stats->impressions > 0) {
                ss->click_through_rate = (double)ss->stats->clicks / (double)ss->stats->impressions;
                ss->stats->conversion_rate =
                    (double)ss->stats->conversions / (double)ss->stats->impressions;
            }
            mi->online_stats[mi->n_online_stats++] = ss;
        }
    }
    return mi;
}

REC_HANDLER(rec_get_model_info)
{
    (void)in;
    rec_loaded_t *l = rec_model_get();
    Hospitality__Recommender__V1__GetModelInfoResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__get_model_info_response__init(resp);
    resp->model = rec_model_info(call, l);
    rec_model_put(l);
    *out = &resp->base;
    return HM_STATUS_OK;
}

REC_HANDLER(rec_reload_model)
{
    const Hospitality__Recommender__V1__ReloadModelRequest *req = (const void *)in;
    const char *path = req->model_path && req->model_path[0] ? req->model_path : rec_cfg.model_path;
    if (!path || !path[0])
        return hm_call_invalid(call, "model_path", "no model path given or configured");
    if (strlen(path) >= 500 || !hm_utf8_valid(path))
        return hm_call_invalid(call, "model_path", "path too long");
    rec_loaded_t *before = rec_model_get();
    Hospitality__Recommender__V1__ReloadModelResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__recommender__v1__reload_model_response__init(resp);
    resp->previous = rec_model_info(call, before);
    rec_model_put(before);
    char err[600];
    bool changed = false;
    if (rec_model_reload(path, &changed, err, sizeof err) != 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "MODEL_INVALID", "%s", err);
    rec_loaded_t *now = rec_model_get();
    resp->current = rec_model_info(call, now);
    rec_model_put(now);
    resp->changed = changed;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- consent and cache ---- */

int rec_consent(hm_call_t *call, const char *guest)
{
    const char *key = hm_cache_key(&call->arena, "recommenderd", "consent", guest);
    char *val;
    size_t len;
    if (hm_cache_get(call->cache, &call->arena, key, &val, &len) == 0 && len == 1)
        return val[0] == 'g' ? 1 : val[0] == 'u' ? -1 : 0;
    Hospitality__Privacy__V1__GetConsentRequest req =
        HOSPITALITY__PRIVACY__V1__GET_CONSENT_REQUEST__INIT;
    int purpose = HOSPITALITY__COMMON__V1__CONSENT_PURPOSE__CONSENT_PURPOSE_PERSONALIZATION;
    req.guest_id = (char *)guest;
    req.n_purposes = 1;
    req.purposes = (void *)&purpose;
    ProtobufCMessage *resp = NULL;
    hm_peer_opts_t opts = {.timeout_ms = 300, .max_attempts = 1};
    hm_status_t st = hm_peer_call(
        call, &call->arena, "privacyd", "/hospitality.privacy.v1.PrivacyService/GetConsent",
        &req.base, &hospitality__privacy__v1__get_consent_response__descriptor, &opts, &resp);
    int v = -1;
    if (st.code == HM_CODE_OK && resp) {
        const Hospitality__Privacy__V1__GetConsentResponse *r = (const void *)resp;
        v = 0;
        for (size_t i = 0; i < r->n_consents; i++)
            if ((int)r->consents[i]->purpose == purpose &&
                r->consents[i]->status ==
                    HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_GRANTED)
                v = 1;
    }
    /* an unknown answer is cached briefly too, so that a privacyd outage does not cost every
     * call a timeout; it is never treated as consent */
    hm_cache_set(call->cache, key,
                 v == 1   ? "g"
                 : v == 0 ? "d"
                          : "u",
                 1,
                 v < 0 ? (rec_cfg.consent_ttl_ms < 5000 ? rec_cfg.consent_ttl_ms : 5000)
                       : rec_cfg.consent_ttl_ms);
    return v;
}

const char *rec_cache_gen(hm_cache_t *cache, hm_arena_t *arena, const char *guest)
{
    char *val;
    size_t len;
    const char *key = hm_cache_key(arena, "recommenderd", "gen", guest);
    if (hm_cache_get(cache, arena, key, &val, &len) == 0)
        return val;
    /* a random generation: lists cached under an earlier (dropped) one never match again */
    unsigned char rnd[8];
    hm_random_bytes(rnd, sizeof rnd);
    char hex[17];
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    hm_cache_command(cache, arena, "SET %s %s NX PX 86400000", key, hex);
    if (hm_cache_get(cache, arena, key, &val, &len) == 0)
        return val;
    return NULL; /* Redis unavailable: nothing is cached */
}

void rec_forget_cache(hm_cache_t *cache, hm_arena_t *arena, const char *guest)
{
    const char *keys[3] = {hm_cache_key(arena, "recommenderd", "consent", guest),
                           hm_cache_key(arena, "recommenderd", "features", guest),
                           hm_cache_key(arena, "recommenderd", "gen", guest)};
    /* dropping the generation orphans every cached list of the guest (they expire alone) */
    hm_cache_del(cache, keys, 3);
}

static __thread hm_cache_t *thread_cache;

static void drop_thread_cache(void *p)
{
    hm_cache_destroy(p);
}

static pthread_key_t tc_key;
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;
static void tc_init(void)
{
    pthread_key_create(&tc_key, drop_thread_cache);
}

hm_cache_t *rec_thread_cache(void)
{
    if (!thread_cache) {
        pthread_once(&tc_once, tc_init);
        const hm_common_config_t *c = hm_config();
        thread_cache = hm_cache_create(c ? c->redis_addr : NULL, c ? c->redis_timeout_ms : 200);
        pthread_setspecific(tc_key, thread_cache);
    }
    return thread_cache;
}
