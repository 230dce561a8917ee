/*
 * rec.h - recommenderd's internals shared by its files.
 *
 * Files: main.c (configuration, method tables, consumer, tasks), track.c (tracking, ingestion,
 * catalogue, features, the event consumer), recommend.c (Recommend, similar items, cross-sell,
 * history, graph, offers, feedback), serve.c (the loaded model: reload, GetModelInfo, the
 * consent look-up and the result cache), subject.c (DataSubjectService), model.c (the model
 * file and scoring shared with tools/rectrain and tools/receval).
 */
#ifndef REC_H
#define REC_H

#include <stdbool.h>
#include <stdint.h>

#include "hm/cache.h"
#include "hm/db.h"
#include "hm/id.h"
#include "hm/server.h"
#include "hospitality/recommender/v1/recommender.pb-c.h"
#include "model.h"

typedef struct rec_config {
    const char *model_path; /* HM_REC_MODEL: model file loaded at start and by ReloadModel */
    const char *weights;    /* HM_REC_WEIGHTS: "popularity=0.2,item_item=1,..." */
    long long diversity;    /* HM_REC_DIVERSITY: MMR lambda in percent */
    int64_t cache_ttl_ms;   /* HM_REC_CACHE_TTL: served lists cached per guest and request */
    int64_t consent_ttl_ms; /* HM_REC_CONSENT_TTL: privacyd's answer cached */
    int64_t half_life_ms;   /* HM_REC_HALF_LIFE: decay of popularity and affinities */
    /* marketing (marketing.c, board.c) */
    const char *mkt_unsubscribe_key; /* HM_MKT_UNSUBSCRIBE_KEY: 64 hex, signs unsubscribe links */
    const char *mkt_site_url;        /* HM_MKT_SITE_URL: base of links in email */
    const char *mkt_sender_name;     /* HM_MKT_SENDER_NAME: {{hotel_name}} */
    const char *asset_dir;           /* HM_REC_ASSET_DIR: catalogue image_file root ("": none) */
} rec_config_t;

extern rec_config_t rec_cfg;
/* Blend weights by strategy number (POPULARITY 1 .. GRAPH 5), parsed from rec_cfg.weights. */
extern double rec_weights[REC_NW];

/* A reference to the model serving now (NULL fields when none is loaded). */
typedef struct rec_loaded {
    rec_model_t m;
    char path[512];
    int64_t loaded_at_us;
    int refs; /* under the swap lock */
    bool retired;
} rec_loaded_t;

/* Takes a reference on the current model (NULL when none); release it with rec_model_put. */
rec_loaded_t *rec_model_get(void);
void rec_model_put(rec_loaded_t *l);
/* Loads `path` and swaps it in; 0 or -1 with err. *changed false when the same version was
 * already loaded. */
int rec_model_reload(const char *path, bool *changed, char *err, size_t errlen);
void rec_model_shutdown(void);
Hospitality__Recommender__V1__ModelInfo *rec_model_info(hm_call_t *call, rec_loaded_t *l);

/* Consent to personalization: 1 granted, 0 not granted, -1 unknown (privacyd unreachable).
 * Cached in Redis for consent_ttl. */
int rec_consent(hm_call_t *call, const char *guest);
/* Drops a guest's cached consent, served lists and features (consumer, erasure). */
void rec_forget_cache(hm_cache_t *cache, hm_arena_t *arena, const char *guest);
/* The guest's cache generation (part of every cached list's key; rec_forget_cache drops
 * it); NULL when Redis is unavailable. */
const char *rec_cache_gen(hm_cache_t *cache, hm_arena_t *arena, const char *guest);
/* A Redis handle for the consumer thread (created on first use). */
hm_cache_t *rec_thread_cache(void);

/* Stores one validated event (and updates popularity and features) in the open
 * transaction. *dup set when the event id was stored before. 0 or HM_E*. */
int rec_store_event(hm_db_t *db, hm_arena_t *a, const Hospitality__Recommender__V1__TrackedEvent *e,
                    const char *source, bool *dup);
/* The same for a batch, with row locks taken in a fixed order (items, then guests). */
int rec_store_events(hm_db_t *db, hm_arena_t *a,
                     Hospitality__Recommender__V1__TrackedEvent *const *ev, size_t n,
                     const char *source, bool *dup);
/* Validates an event: NULL, or the reason with *field set. */
const char *rec_validate_event(const Hospitality__Recommender__V1__TrackedEvent *e,
                               const char **field);

/* Served personal lists queued for writing (recommend.c): writes them now (wait: block until
 * any other flush is done; else skip when one runs). 0 or HM_E*. */
int rec_history_flush(hm_call_t *call, hm_db_t *db, hm_arena_t *arena, bool wait);
int rec_task_flush(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
void rec_history_shutdown(void);

/* Small helpers. */
static inline const char *rec_str(const PGresult *r, int row, int col)
{
    const char *v = hm_db_get(r, row, col);
    return v ? v : "";
}
int64_t rec_i64(const PGresult *r, int row, int col);
double rec_f64(const PGresult *r, int row, int col);
const char *rec_p64(hm_arena_t *a, int64_t v);
const char *rec_pf(hm_arena_t *a, double v);
bool rec_valid_item_id(const char *s);
/* A Postgres text[] literal of n strings, in the arena. */
const char *rec_text_array(hm_arena_t *a, char *const *v, size_t n);
/* Splits a Postgres text[] output value into the arena. */
char **rec_parse_array(hm_arena_t *a, const char *s, size_t *n);
const char *rec_strategy_name(int s);

#define REC_HANDLER(fn)                                                                            \
    hm_status_t fn(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
REC_HANDLER(rec_track_watch);
REC_HANDLER(rec_track_search);
REC_HANDLER(rec_track_rating);
REC_HANDLER(rec_track_favorite);
REC_HANDLER(rec_track_events);
REC_HANDLER(rec_ingest_user_data);
REC_HANDLER(rec_upsert_items);
REC_HANDLER(rec_get_item);
REC_HANDLER(rec_get_features);
REC_HANDLER(rec_refresh_features);
REC_HANDLER(rec_recommend);
REC_HANDLER(rec_recommend_similar);
REC_HANDLER(rec_recommend_cross_sell);
REC_HANDLER(rec_list_history);
REC_HANDLER(rec_get_user_graph);
REC_HANDLER(rec_upsert_offer);
REC_HANDLER(rec_list_offers);
REC_HANDLER(rec_submit_feedback);
REC_HANDLER(rec_get_model_info);
REC_HANDLER(rec_reload_model);
REC_HANDLER(rec_export_subject);
REC_HANDLER(rec_erase_subject);

int rec_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                     const ProtobufCMessage *payload, void *app);

#endif
