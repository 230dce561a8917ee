/*
 * apps.c - per-app profiles and identity sync (seed 003): GetAppProfile, UpdateAppProfile,
 * SyncAppProfiles and the background task that retries pending and failed syncs.
 *
 * Each app (web, marketplace, booking, gamification) has its own field names for some unified
 * profile fields (the map below) plus fields and preferences of its own. A unified change
 * marks every app profile PENDING; a sync writes the mapped values into the app profile, or
 * records a FAILED attempt with the reason (a value the app cannot hold, such as a name
 * longer than the marketplace's nickname limit) and retries with exponential backoff. A change
 * of a mapped app field flows the other way into the unified profile (a new version).
 * user.profile.synced is published for every attempt. App fields are encrypted at rest (they
 * mirror personal data).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/id.h"
#include "hospitality/events/v1/external_events.pb-c.h"
#include "store.h"

typedef Hospitality__Guest__V1__AppProfile app_t;

#define APP(x) HOSPITALITY__COMMON__V1__APP__APP_##x

static const struct field_map {
    int app;
    const char *field, *unified;
    size_t max;
} fmap[] = {
    {APP(WEB), "display_name", "name", 200},
    {APP(WEB), "email", "email", 320},
    {APP(WEB), "language", "language", 35},
    {APP(WEB), "time_zone", "time_zone", 64},
    {APP(WEB), "avatar_url", "avatar_url", 2048},
    {APP(MARKETPLACE), "nickname", "name", 24},
    {APP(MARKETPLACE), "contact_email", "email", 320},
    {APP(MARKETPLACE), "country", "location.country_code", 2},
    {APP(BOOKING), "guest_name", "name", 100},
    {APP(BOOKING), "contact_email", "email", 320},
    {APP(BOOKING), "contact_phone", "phone", 20},
    {APP(GAMIFICATION), "display_name", "name", 32},
    {APP(GAMIFICATION), "show_on_leaderboards", "privacy_settings.show_on_leaderboards", 5},
};
#define NMAP (sizeof fmap / sizeof *fmap)

static const char *unified_value(const Hospitality__Guest__V1__Profile *p, const char *u)
{
    if (!strcmp(u, "name"))
        return p->name;
    if (!strcmp(u, "email"))
        return p->email;
    if (!strcmp(u, "phone"))
        return p->phone;
    if (!strcmp(u, "language"))
        return p->language;
    if (!strcmp(u, "time_zone"))
        return p->time_zone;
    if (!strcmp(u, "avatar_url"))
        return p->avatar_url;
    if (!strcmp(u, "location.country_code"))
        return p->location ? p->location->country_code : "";
    if (!strcmp(u, "privacy_settings.show_on_leaderboards"))
        return p->privacy_settings && p->privacy_settings->show_on_leaderboards ? "true" : "false";
    return "";
}

static const struct field_map *mapped(int app, const char *field)
{
    for (size_t i = 0; i < NMAP; i++)
        if (fmap[i].app == app && strcmp(fmap[i].field, field) == 0)
            return &fmap[i];
    return NULL;
}

#define AP_COLS                                                                                    \
    "app_user_id, fields_enc, preferences::text, version, sync_status, synced_profile_version, "   \
    "(extract(epoch FROM last_synced_at) * 1e6)::bigint, last_error, failed_attempts, "            \
    "(extract(epoch FROM next_attempt_at) * 1e6)::bigint, (extract(epoch FROM created_at) * "      \
    "1e6)::bigint, (extract(epoch FROM updated_at) * 1e6)::bigint"

static const hm_stmt_t st_get = {
    "ga_get", "SELECT " AP_COLS " FROM guest_app_profiles WHERE guest_id = $1 AND app = $2", 2};
static const hm_stmt_t st_get_fu = {
    "ga_get_fu",
    "SELECT " AP_COLS " FROM guest_app_profiles WHERE guest_id = $1 AND app = $2 FOR UPDATE", 2};
static const hm_stmt_t st_apps_of = {
    "ga_apps_of", "SELECT app FROM guest_app_profiles WHERE guest_id = $1 ORDER BY app", 1};
static const hm_stmt_t st_upsert = {
    "ga_upsert",
    "INSERT INTO guest_app_profiles AS a (guest_id, app, app_user_id, fields_enc, preferences, "
    "version, sync_status, synced_profile_version, last_synced_at, last_error, failed_attempts, "
    "next_attempt_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::smallint, $8, CASE WHEN "
    "$7::smallint = 1 THEN "
    "clock_timestamp() END, $9, $10, clock_timestamp() + make_interval(secs => $11::float8)) ON "
    "CONFLICT (guest_id, app) DO UPDATE SET app_user_id = excluded.app_user_id, fields_enc = "
    "excluded.fields_enc, preferences = excluded.preferences, version = excluded.version, "
    "sync_status = excluded.sync_status, synced_profile_version = "
    "excluded.synced_profile_version, last_synced_at = coalesce(excluded.last_synced_at, "
    "a.last_synced_at), last_error = excluded.last_error, failed_attempts = "
    "excluded.failed_attempts, next_attempt_at = excluded.next_attempt_at, updated_at = "
    "clock_timestamp()",
    11};

static char *aad(hm_arena_t *a, const char *guest, int app)
{
    return hm_arena_printf(a, "app:%s:%d", guest, app);
}

static void *map_entries(hm_arena_t *a, json_t *o, size_t *n)
{
    *n = 0;
    Hospitality__Guest__V1__AppProfile__FieldsEntry **v =
        hm_arena_alloc(a, sizeof(void *) * (json_object_size(o) + 1));
    const char *k;
    json_t *x;
    json_object_foreach(o, k, x)
    {
        Hospitality__Guest__V1__AppProfile__FieldsEntry *e = hm_arena_alloc(a, sizeof *e);
        hospitality__guest__v1__app_profile__fields_entry__init(e);
        e->key = hm_arena_strdup(a, k);
        e->value = hm_arena_strdup(a, gd_jsv(x));
        v[(*n)++] = e;
    }
    return v;
}

/* A loaded app profile: the message, plus its fields and preferences as JSON (owned). */
typedef struct ap {
    app_t *msg;
    json_t *fields, *prefs;
} ap_t;

static void ap_free(ap_t *p)
{
    json_decref(p->fields);
    json_decref(p->prefs);
    p->fields = p->prefs = NULL;
}

static int ap_load(const gd_env_t *e, const char *guest, int app, bool lock, ap_t *out)
{
    hm_arena_t *a = e->arena;
    PGresult *r;
    int rc = gd_q(e, lock ? &st_get_fu : &st_get, &r, guest, gd_i64p(a, app));
    if (rc)
        return rc;
    out->fields = out->prefs = NULL;
    if (PQntuples(r) == 0)
        return HM_ENOTFOUND;
    unsigned char *f;
    size_t fn;
    if ((rc = gd_open(e, r, 0, 1, aad(a, guest, app), &f, &fn)) != 0)
        return rc;
    out->fields = f ? json_loadb((const char *)f, fn, 0, NULL) : NULL;
    if (!out->fields)
        out->fields = json_object();
    out->prefs = json_loads(gd_str(r, 0, 2), 0, NULL);
    if (!out->prefs)
        out->prefs = json_object();
    app_t *m = hm_arena_alloc(a, sizeof *m);
    hospitality__guest__v1__app_profile__init(m);
    m->guest_id = hm_arena_strdup(a, guest);
    m->app = (Hospitality__Common__V1__App)app;
    m->app_user_id = hm_arena_strdup(a, gd_str(r, 0, 0));
    m->version = gd_i64(r, 0, 3);
    m->sync_status = (Hospitality__Guest__V1__SyncStatus)gd_i64(r, 0, 4);
    m->synced_profile_version = gd_i64(r, 0, 5);
    m->last_synced_at = gd_ts(a, r, 0, 6);
    m->last_error = hm_arena_strdup(a, gd_str(r, 0, 7));
    m->failed_attempts = (int32_t)gd_i64(r, 0, 8);
    if (m->sync_status == HOSPITALITY__GUEST__V1__SYNC_STATUS__SYNC_STATUS_FAILED)
        m->next_attempt_at = gd_ts(a, r, 0, 9);
    m->created_at = gd_ts(a, r, 0, 10);
    m->updated_at = gd_ts(a, r, 0, 11);
    out->msg = m;
    return 0;
}

static void ap_fill_maps(hm_arena_t *a, ap_t *p)
{
    p->msg->fields = map_entries(a, p->fields, &p->msg->n_fields);
    p->msg->preferences = map_entries(a, p->prefs, &p->msg->n_preferences);
}

/* Writes the app profile (its msg scalars, fields and prefs). */
static int ap_save(const gd_env_t *e, ap_t *p, int64_t backoff_s)
{
    hm_arena_t *a = e->arena;
    char *fs = json_dumps(p->fields, JSON_COMPACT | JSON_SORT_KEYS);
    char *ps = json_dumps(p->prefs, JSON_COMPACT | JSON_SORT_KEYS);
    const char *params[11] = {p->msg->guest_id,
                              gd_i64p(a, p->msg->app),
                              p->msg->app_user_id,
                              NULL,
                              hm_arena_strdup(a, ps ? ps : "{}"),
                              gd_i64p(a, p->msg->version),
                              gd_i64p(a, p->msg->sync_status),
                              gd_i64p(a, p->msg->synced_profile_version),
                              p->msg->last_error,
                              gd_i64p(a, p->msg->failed_attempts),
                              gd_i64p(a, backoff_s)};
    int lengths[11] = {0}, formats[11] = {0, 0, 0, 1};
    int rc = gd_seal(e, aad(a, p->msg->guest_id, p->msg->app), fs ? fs : "{}",
                     strlen(fs ? fs : "{}"), &params[3], &lengths[3]);
    free(fs);
    free(ps);
    if (rc)
        return rc;
    PGresult *r;
    return hm_db_exec_arena(e->db, a, &st_upsert, params, lengths, formats, &r);
}

static int publish_synced(const gd_env_t *e, const ap_t *p, int64_t profile_version, bool ok)
{
    Hospitality__Events__V1__UserProfileSynced ev =
        HOSPITALITY__EVENTS__V1__USER_PROFILE_SYNCED__INIT;
    ev.guest_id = p->msg->guest_id;
    ev.app = p->msg->app;
    ev.app_user_id = p->msg->app_user_id;
    ev.profile_version = profile_version;
    ev.app_profile_version = p->msg->version;
    ev.succeeded = ok;
    return e->call
               ? hm_call_publish(e->call, e->db, "user.profile.synced", ev.guest_id, &ev.base)
               : hm_publish(e->db, e->arena, "user.profile.synced", ev.guest_id, NULL, &ev.base);
}

/* Pushes the unified profile into one app profile (locked): SYNCED or FAILED. With `bump`,
 * a change of the app's fields makes a new app profile version. */
static int push(const gd_env_t *e, const Hospitality__Guest__V1__Profile *u, ap_t *p, bool bump)
{
    hm_arena_t *a = e->arena;
    const char *err = NULL;
    bool changed = false;
    for (size_t i = 0; i < NMAP && !err; i++) {
        if (fmap[i].app != (int)p->msg->app)
            continue;
        const char *v = unified_value(u, fmap[i].unified);
        if (hm_utf8_len(v) > fmap[i].max) {
            err = hm_arena_printf(a, "%s: the unified %s has %zu characters, the app allows %zu",
                                  fmap[i].field, fmap[i].unified, hm_utf8_len(v), fmap[i].max);
            break;
        }
        json_t *cur = json_object_get(p->fields, fmap[i].field);
        if (!cur || strcmp(gd_jsv(cur), v) != 0) {
            json_object_set_new(p->fields, fmap[i].field, json_string(v));
            changed = true;
        }
    }
    int64_t backoff = 0;
    if (err) {
        p->msg->sync_status = HOSPITALITY__GUEST__V1__SYNC_STATUS__SYNC_STATUS_FAILED;
        p->msg->failed_attempts++;
        p->msg->last_error = (char *)err;
        backoff = p->msg->failed_attempts >= 12 ? 3600 : 1LL << p->msg->failed_attempts;
    } else {
        if (changed && bump)
            p->msg->version++;
        p->msg->sync_status = HOSPITALITY__GUEST__V1__SYNC_STATUS__SYNC_STATUS_SYNCED;
        p->msg->synced_profile_version = u->version;
        p->msg->failed_attempts = 0;
        p->msg->last_error = "";
    }
    int rc = ap_save(e, p, backoff);
    if (rc == 0)
        rc = publish_synced(e, p, u->version, err == NULL);
    return rc;
}

GD_HANDLER(guest_get_app_profile)
{
    const Hospitality__Guest__V1__GetAppProfileRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (req->app == 0 ||
        !gd_check_enum(call, "app", req->app, &hospitality__common__v1__app__descriptor, &st))
        return req->app == 0 ? hm_call_invalid(call, "app", "required") : st;
    gd_env_t e = gd_env(call);
    ap_t p;
    int rc = ap_load(&e, req->guest_id, req->app, false, &p);
    if (rc == HM_ENOTFOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND",
                             "guest %s has no profile in app %d", req->guest_id, req->app);
    if (rc)
        return hm_call_fail(call, rc, "load app profile");
    ap_fill_maps(&call->arena, &p);
    ap_free(&p);
    Hospitality__Guest__V1__GetAppProfileResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__get_app_profile_response__init(resp);
    resp->app_profile = p.msg;
    *out = &resp->base;
    return HM_STATUS_OK;
}

typedef struct ua_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__UpdateAppProfileRequest *req;
    app_t *result;
    hm_status_t st;
    bool failed;
} ua_tx_t;

static bool fail(ua_tx_t *t, hm_status_t st)
{
    t->failed = true;
    t->st = st;
    return false;
}

static int ua_fn(hm_db_t *db, void *arg)
{
    ua_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    const Hospitality__Guest__V1__UpdateAppProfileRequest *req = t->req;
    guest_profile_t *u;
    int rc = guest_store_lock(&e, req->guest_id, &u);
    if (rc == HM_ENOTFOUND)
        return fail(t, gd_not_found(call, req->guest_id)), rc;
    if (rc)
        return rc;
    if (u->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        u->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED)
        return fail(t, hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                                     "guest %s is merged or erased", req->guest_id)),
               HM_EPRECOND;
    ap_t p;
    rc = ap_load(&e, req->guest_id, req->app, true, &p);
    if (rc == HM_ENOTFOUND) {
        p.msg = hm_arena_alloc(a, sizeof *p.msg);
        hospitality__guest__v1__app_profile__init(p.msg);
        p.msg->guest_id = req->guest_id;
        p.msg->app = req->app;
        p.msg->version = 0;
        p.fields = json_object();
        p.prefs = json_object();
    } else if (rc)
        return rc;
    if (req->expected_version != p.msg->version) {
        ap_free(&p);
        return fail(t, hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                                     "expected_version %lld is not the current version %lld%s",
                                     (long long)req->expected_version, (long long)p.msg->version,
                                     p.msg->version == 0 ? " (0: the app profile does not exist "
                                                           "yet)"
                                                         : "")),
               HM_ECONFLICT;
    }
    /* Apply the mask; collect unified fields that mapped app fields change. */
    const app_t *src = req->app_profile;
    char *uchanged[16];
    size_t nu = 0;
    Hospitality__Guest__V1__Profile nu_p = *u;
    Hospitality__Guest__V1__Location loc;
    Hospitality__Guest__V1__PrivacySettings ps;
    if (u->location)
        loc = *u->location, nu_p.location = &loc;
    if (u->privacy_settings)
        ps = *u->privacy_settings, nu_p.privacy_settings = &ps;
    for (size_t i = 0; i < req->update_mask->n_paths; i++) {
        const char *path = req->update_mask->paths[i];
        if (!strcmp(path, "app_user_id")) {
            p.msg->app_user_id = src ? src->app_user_id : "";
            continue;
        }
        bool isf = !strncmp(path, "fields.", 7), isp = !strncmp(path, "preferences.", 12);
        if (!isf && !isp) {
            ap_free(&p);
            return fail(t, hm_call_invalid(call, "update_mask",
                                           "\"%s\" is not app_user_id, fields.<name> or "
                                           "preferences.<name>",
                                           path)),
                   HM_EINVAL;
        }
        const char *k = path + (isf ? 7 : 12);
        const char *v = NULL;
        size_t n = src ? (isf ? src->n_fields : src->n_preferences) : 0;
        for (size_t j = 0; j < n; j++) {
            const Hospitality__Guest__V1__AppProfile__FieldsEntry *en =
                isf ? src->fields[j] : (const void *)src->preferences[j];
            if (!strcmp(en->key, k))
                v = en->value;
        }
        if (strlen(k) == 0 || strlen(k) > 64 || (v && hm_utf8_len(v) > 500) ||
            (v && !hm_utf8_valid(v))) {
            ap_free(&p);
            return fail(t, hm_call_invalid(call, "update_mask",
                                           "\"%s\": names are 1..64 characters and values at "
                                           "most 500",
                                           path)),
                   HM_EINVAL;
        }
        json_t *o = isf ? p.fields : p.prefs;
        if (v)
            json_object_set_new(o, k, json_string(v));
        else
            json_object_del(o, k);
        const struct field_map *m = isf ? mapped(req->app, k) : NULL;
        if (m && nu < 16) {
            const char *val = v ? v : "";
            if (hm_utf8_len(val) > m->max) {
                ap_free(&p);
                return fail(t,
                            hm_call_invalid(call, hm_arena_printf(a, "app_profile.fields[%s]", k),
                                            "at most %zu characters in this app", m->max)),
                       HM_EINVAL;
            }
            if (!strcmp(m->unified, "name"))
                nu_p.name = (char *)val;
            else if (!strcmp(m->unified, "email"))
                nu_p.email = (char *)val;
            else if (!strcmp(m->unified, "phone"))
                nu_p.phone = (char *)val;
            else if (!strcmp(m->unified, "language"))
                nu_p.language = (char *)val;
            else if (!strcmp(m->unified, "time_zone"))
                nu_p.time_zone = (char *)val;
            else if (!strcmp(m->unified, "avatar_url"))
                nu_p.avatar_url = (char *)val;
            else if (!strcmp(m->unified, "location.country_code") && nu_p.location)
                nu_p.location->country_code = (char *)val;
            else if (!strcmp(m->unified, "privacy_settings.show_on_leaderboards") &&
                     nu_p.privacy_settings)
                nu_p.privacy_settings->show_on_leaderboards = !strcmp(val, "true");
            uchanged[nu++] = (char *)m->unified;
        }
    }
    p.msg->version = req->expected_version + 1;
    if (nu > 0) {
        /* Mapped fields flow into the unified profile (validated there) ... */
        if (!guest_apply_profile_mask(call, u, &nu_p, uchanged, nu, "update_mask", &t->st)) {
            ap_free(&p);
            t->failed = true;
            return HM_EINVAL;
        }
        rc = guest_save_profile(&e, u, uchanged, nu, gd_actor_type(call), gd_actor_id(call));
        if (rc == HM_EEXIST) {
            ap_free(&p);
            return fail(t, hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                                         "the email or phone belongs to another guest")),
                   rc;
        }
        if (rc) {
            ap_free(&p);
            return rc;
        }
    }
    /* ... and this app is in sync with the result (normalized values written back). */
    rc = push(&e, u, &p, false);
    if (rc == 0) {
        ap_t again;
        if ((rc = ap_load(&e, req->guest_id, req->app, false, &again)) == 0) {
            ap_fill_maps(a, &again);
            t->result = again.msg;
            ap_free(&again);
        }
    }
    ap_free(&p);
    return rc;
}

GD_HANDLER(guest_update_app_profile)
{
    const Hospitality__Guest__V1__UpdateAppProfileRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (req->app == 0 ||
        !gd_check_enum(call, "app", req->app, &hospitality__common__v1__app__descriptor, &st))
        return req->app == 0 ? hm_call_invalid(call, "app", "required") : st;
    if (!req->update_mask || req->update_mask->n_paths == 0)
        return hm_call_invalid(call, "update_mask", "name the fields to change");
    if (req->app_profile &&
        !gd_check_text(call, "app_profile.app_user_id", req->app_profile->app_user_id, 128, &st))
        return st;
    ua_tx_t t = {call, req, NULL, HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, ua_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "update app profile");
    Hospitality__Guest__V1__UpdateAppProfileResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__update_app_profile_response__init(resp);
    resp->app_profile = t.result;
    *out = &resp->base;
    return HM_STATUS_OK;
}

typedef struct sy_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__SyncAppProfilesRequest *req;
    Hospitality__Guest__V1__AppSyncResult **results;
    size_t n;
    guest_profile_t *profile;
    hm_status_t st;
    bool failed;
} sy_tx_t;

static int sy_fn(hm_db_t *db, void *arg)
{
    sy_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    const Hospitality__Guest__V1__SyncAppProfilesRequest *req = t->req;
    t->n = 0;
    int rc = guest_store_lock(&e, req->guest_id, &t->profile);
    if (rc == HM_ENOTFOUND) {
        t->failed = true;
        t->st = gd_not_found(call, req->guest_id);
        return rc;
    }
    if (rc)
        return rc;
    if (req->direction == HOSPITALITY__GUEST__V1__SYNC_DIRECTION__SYNC_DIRECTION_FROM_APP) {
        ap_t src;
        rc = ap_load(&e, req->guest_id, req->source_app, true, &src);
        if (rc == HM_ENOTFOUND) {
            t->failed = true;
            t->st = hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND",
                                  "source_app: guest %s has no profile in app %d", req->guest_id,
                                  req->source_app);
        }
        if (rc)
            return rc;
        Hospitality__Guest__V1__Profile np = *t->profile;
        char *changed[16];
        size_t nc = 0;
        for (size_t i = 0; i < NMAP; i++) {
            json_t *v;
            if (fmap[i].app != (int)req->source_app ||
                !(v = json_object_get(src.fields, fmap[i].field)))
                continue;
            const char *s = hm_arena_strdup(a, gd_jsv(v));
            if (strcmp(s, unified_value(t->profile, fmap[i].unified)) == 0)
                continue;
            if (!strcmp(fmap[i].unified, "name"))
                np.name = (char *)s;
            else if (!strcmp(fmap[i].unified, "email"))
                np.email = (char *)s;
            else if (!strcmp(fmap[i].unified, "phone"))
                np.phone = (char *)s;
            else if (!strcmp(fmap[i].unified, "language"))
                np.language = (char *)s;
            else if (!strcmp(fmap[i].unified, "time_zone"))
                np.time_zone = (char *)s;
            else if (!strcmp(fmap[i].unified, "avatar_url"))
                np.avatar_url = (char *)s;
            else
                continue; /* nested fields are not pulled */
            changed[nc++] = (char *)fmap[i].unified;
        }
        ap_free(&src);
        if (nc > 0) {
            if (!guest_apply_profile_mask(call, t->profile, &np, changed, nc, "source_app",
                                          &t->st)) {
                t->failed = true;
                return HM_EINVAL;
            }
            if ((rc = guest_save_profile(&e, t->profile, changed, nc, gd_actor_type(call),
                                         gd_actor_id(call))) != 0)
                return rc;
        }
    }
    /* Push to the apps named (or all the guest has). */
    int apps[8];
    size_t na = 0;
    if (req->n_apps > 0) {
        for (size_t i = 0; i < req->n_apps && na < 8; i++)
            apps[na++] = req->apps[i];
    } else {
        PGresult *r;
        if ((rc = gd_q(&e, &st_apps_of, &r, req->guest_id)) != 0)
            return rc;
        for (int i = 0; i < PQntuples(r) && na < 8; i++)
            apps[na++] = (int)gd_i64(r, i, 0);
    }
    t->results = hm_arena_alloc(a, sizeof(void *) * (na + 1));
    for (size_t i = 0; i < na; i++) {
        ap_t p;
        rc = ap_load(&e, req->guest_id, apps[i], true, &p);
        if (rc == HM_ENOTFOUND) {
            /* Syncing into an app the guest has no profile in creates one. */
            p.msg = hm_arena_alloc(a, sizeof *p.msg);
            hospitality__guest__v1__app_profile__init(p.msg);
            p.msg->guest_id = req->guest_id;
            p.msg->app = (Hospitality__Common__V1__App)apps[i];
            p.msg->version = 1;
            p.fields = json_object();
            p.prefs = json_object();
        } else if (rc)
            return rc;
        rc = push(&e, t->profile, &p, true);
        ap_free(&p);
        if (rc)
            return rc;
        ap_t now;
        if ((rc = ap_load(&e, req->guest_id, apps[i], false, &now)) != 0)
            return rc;
        ap_fill_maps(a, &now);
        ap_free(&now);
        Hospitality__Guest__V1__AppSyncResult *res = hm_arena_alloc(a, sizeof *res);
        hospitality__guest__v1__app_sync_result__init(res);
        res->app = (Hospitality__Common__V1__App)apps[i];
        res->sync_status = now.msg->sync_status;
        res->error = now.msg->last_error;
        res->app_profile = now.msg;
        t->results[t->n++] = res;
    }
    return 0;
}

GD_HANDLER(guest_sync_app_profiles)
{
    const Hospitality__Guest__V1__SyncAppProfilesRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_check_enum(call, "direction", req->direction,
                       &hospitality__guest__v1__sync_direction__descriptor, &st))
        return st;
    for (size_t i = 0; i < req->n_apps; i++)
        if (req->apps[i] == 0 || !protobuf_c_enum_descriptor_get_value(
                                     &hospitality__common__v1__app__descriptor, req->apps[i]))
            return hm_call_invalid(call, hm_arena_printf(&call->arena, "apps[%zu]", i),
                                   "not a known app");
    if (req->n_apps > 8)
        return hm_call_invalid(call, "apps", "at most 8 apps");
    if (req->direction == HOSPITALITY__GUEST__V1__SYNC_DIRECTION__SYNC_DIRECTION_FROM_APP &&
        (req->source_app == 0 || !protobuf_c_enum_descriptor_get_value(
                                     &hospitality__common__v1__app__descriptor, req->source_app)))
        return hm_call_invalid(call, "source_app", "FROM_APP needs the app to pull from");
    sy_tx_t t = {call, req, NULL, 0, NULL, HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, sy_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "sync app profiles");
    Hospitality__Guest__V1__SyncAppProfilesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__sync_app_profiles_response__init(resp);
    resp->results = t.results;
    resp->n_results = t.n;
    gd_env_t e = gd_env(call);
    if ((rc = guest_store_get(&e, req->guest_id, &resp->profile)) != 0)
        return hm_call_fail(call, rc, "load guest");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* The background sync: app profiles PENDING, or FAILED and due, a batch per run. */
static const hm_stmt_t st_due = {
    "ga_due",
    "SELECT a.guest_id::text, a.app FROM guest_app_profiles a JOIN guests g USING (guest_id) "
    "WHERE a.sync_status <> 1 AND a.next_attempt_at <= clock_timestamp() AND g.status NOT IN (3, "
    "5) ORDER BY a.next_attempt_at LIMIT 50 FOR UPDATE OF a SKIP LOCKED",
    0};

typedef struct task_tx {
    gd_env_t e;
    int done;
} task_tx_t;

static int task_fn(hm_db_t *db, void *arg)
{
    task_tx_t *t = arg;
    t->e.db = db;
    PGresult *r;
    int rc = gd_q(&t->e, &st_due, &r);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *guest = hm_arena_strdup(t->e.arena, gd_str(r, i, 0));
        guest_profile_t *u;
        ap_t p;
        if ((rc = guest_store_get(&t->e, guest, &u)) != 0 ||
            (rc = ap_load(&t->e, guest, (int)gd_i64(r, i, 1), false, &p)) != 0)
            return rc;
        rc = push(&t->e, u, &p, true);
        ap_free(&p);
        if (rc)
            return rc;
        t->done++;
    }
    return 0;
}

int guest_task_app_sync(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    gd_app_t *g = app;
    if (!g || !g->crypto)
        return 0;
    task_tx_t t = {{db, arena, g->crypto, NULL}, 0};
    return hm_db_tx(db, task_fn, &t, HM_DB_READ_COMMITTED);
}

int guest_export_apps(const gd_env_t *e, const char *guest, void *json_array)
{
    PGresult *r;
    int rc = gd_q(e, &st_apps_of, &r, guest);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        ap_t p;
        if ((rc = ap_load(e, guest, (int)gd_i64(r, i, 0), false, &p)) != 0)
            return rc;
        json_t *o = json_object();
        json_object_set_new(o, "app", json_integer(p.msg->app));
        json_object_set_new(o, "app_user_id", json_string(p.msg->app_user_id));
        json_object_set_new(o, "fields", p.fields);
        json_object_set_new(o, "preferences", p.prefs);
        json_object_set_new(o, "version", json_integer(p.msg->version));
        json_object_set_new(o, "sync_status", json_integer(p.msg->sync_status));
        json_array_append_new(json_array, o);
    }
    return 0;
}
