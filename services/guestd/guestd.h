/*
 * guestd.h - guestd's handlers, one group per .c file, listed in main.c's method table, and the
 * helpers they share.
 */
#ifndef GUESTD_H
#define GUESTD_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "hm/crypto.h"
#include "hm/db.h"
#include "hm/server.h"
#include "hospitality/guest/v1/guest.pb-c.h"

#define GD_HANDLER(fn)                                                                             \
    hm_status_t fn(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)

/* Where store functions run: an RPC's connection and arena, or a task's. */
typedef struct gd_env {
    hm_db_t *db;
    hm_arena_t *arena;
    hm_crypto_t *crypto;
    hm_call_t *call; /* NULL outside RPCs (tasks, consumer) */
} gd_env_t;

static inline gd_env_t gd_env(hm_call_t *call)
{
    gd_env_t e = {call->db, &call->arena, call->crypto, call};
    return e;
}

/* The daemon's state: a keyring for work outside calls (tasks). */
typedef struct gd_app {
    hm_crypto_t *crypto;
} gd_app_t;

/* A JSON string's value, "" for anything else. */
static inline const char *gd_jsv(const json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

/* ---- util.c: SQL and value helpers ---- */
/* Runs `stmt` with its nparams (at most GD_MAX_PARAMS) string parameters from the varargs
 * (NULL = SQL NULL). */
#define GD_MAX_PARAMS 32
int gd_q(const gd_env_t *e, const hm_stmt_t *stmt, PGresult **out, ...);
const char *gd_str(const PGresult *r, int row, int col); /* "" for NULL, arena-independent */
int64_t gd_i64(const PGresult *r, int row, int col);
double gd_f64(const PGresult *r, int row, int col);
bool gd_bool(const PGresult *r, int row, int col);
/* A timestamp column given as epoch microseconds (bigint); NULL → NULL. */
Google__Protobuf__Timestamp *gd_ts(hm_arena_t *a, const PGresult *r, int row, int col);
const char *gd_i64p(hm_arena_t *a, int64_t v);
/* An epoch-microseconds parameter for to_timestamp($n::float8 / 1e6). */
const char *gd_usp(hm_arena_t *a, int64_t us);
/* Validation helpers: false with *st set. */
bool gd_check_guest(hm_call_t *call, const char *field, const char *id, hm_status_t *st);
bool gd_check_text(hm_call_t *call, const char *field, const char *v, size_t max, hm_status_t *st);
bool gd_check_enum(hm_call_t *call, const char *field, int v, const ProtobufCEnumDescriptor *d,
                   hm_status_t *st);
/* Paging: offset tokens. */
bool gd_page(hm_call_t *call, const Hospitality__Common__V1__PageRequest *p, int *size,
             long *offset, hm_status_t *st);
Hospitality__Common__V1__PageResponse *gd_page_resp(hm_arena_t *a, int got, int size, long offset);
/* The actor of the call (type + id) for history rows. */
int gd_actor_type(const hm_call_t *call);
const char *gd_actor_id(const hm_call_t *call);
Hospitality__Common__V1__Actor *gd_actor(hm_arena_t *a, int type, const char *id);
/* Status for a guest that does not exist / is merged. */
hm_status_t gd_not_found(hm_call_t *call, const char *guest_id);
/* Maps HM_E* of a store call to a status, with ABORTED for version conflicts. */
hm_status_t gd_fail(hm_call_t *call, int rc, const char *what);

/* ---- profile.c ---- */
GD_HANDLER(guest_create_guest);
GD_HANDLER(guest_get_profile);
GD_HANDLER(guest_get_my_profile);
GD_HANDLER(guest_update_profile);
GD_HANDLER(guest_list_profile_history);
/* Applies `mask` of `src` onto `p` (validated); sets *changed (arena) and *n. */
bool guest_apply_profile_mask(hm_call_t *call, Hospitality__Guest__V1__Profile *p,
                              const Hospitality__Guest__V1__Profile *src, char **paths,
                              size_t npaths, const char *prefix, hm_status_t *st);
/* Writes profile `p` (already changed) as version p->version+1 in the open transaction, with
 * history and guest.profile.updated; marks app profiles for sync. */
int guest_save_profile(const gd_env_t *e, Hospitality__Guest__V1__Profile *p, char *const *changed,
                       size_t nchanged, int actor_type, const char *actor_id);

/* ---- identity.c ---- */
GD_HANDLER(guest_resolve_identity);
GD_HANDLER(guest_link_identity);
GD_HANDLER(guest_merge_guests);
GD_HANDLER(guest_explain_identity);
/* Adds identifiers to a new guest in the open transaction (CreateGuest). */
int guest_add_identifiers(const gd_env_t *e, const char *guest_id,
                          Hospitality__Guest__V1__Identifier *const *ids, size_t n,
                          const char *rule);

/* ---- apps.c ---- */
GD_HANDLER(guest_get_app_profile);
GD_HANDLER(guest_update_app_profile);
GD_HANDLER(guest_sync_app_profiles);
int guest_task_app_sync(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* ---- prefs.c ---- */
GD_HANDLER(guest_get_preferences);
GD_HANDLER(guest_update_preferences);
GD_HANDLER(guest_list_preference_history);
/* Effective preferences of a guest now (context). */
int guest_effective_prefs(const gd_env_t *e, const char *guest_id, const char *venue,
                          Hospitality__Guest__V1__ExplicitPreferences **eff,
                          Hospitality__Guest__V1__PreferenceProvenance ***prov, size_t *nprov,
                          int64_t *version);
/* The same as of `at` (epoch seconds as text; NULL = now). */
int guest_effective_at(const gd_env_t *e, const char *guest_id, const char *venue, const char *at,
                       Hospitality__Guest__V1__ExplicitPreferences **eff,
                       Hospitality__Guest__V1__PreferenceProvenance ***prov, size_t *nprov,
                       int64_t *version);

/* ---- interactions.c ---- */
GD_HANDLER(guest_record_interaction);
GD_HANDLER(guest_record_interactions);
GD_HANDLER(guest_list_interactions);
int guest_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                       const ProtobufCMessage *payload, void *app);
int guest_task_retention(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* ---- context.c ---- */
GD_HANDLER(guest_get_segments);
GD_HANDLER(guest_get_behavior_signals);
GD_HANDLER(guest_get_personalization_context);
int guest_task_segments(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* ---- subject.c ---- */
GD_HANDLER(guest_export_subject);
GD_HANDLER(guest_erase_subject);

/* ---- ingest.c ---- */
GD_HANDLER(guest_publish_events);

#endif
