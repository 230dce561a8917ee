/*
 * prefs.c - versioned preferences: GetPreferences (now or as of a time, with inheritance),
 * UpdatePreferences (whole or by field mask, optimistic version check) and
 * ListPreferenceHistory.
 *
 * Explicit preferences are stored as a flat JSON object keyed by field path of
 * ExplicitPreferences ("dietary_restrictions", "notification_settings.email_enabled",
 * "other.budget"), so that versions, defaults (platform, brand, venue), inheritance with
 * provenance and merges are plain SQL over keys (migration 003). This file maps the proto to
 * and from that form and validates values.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/id.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "store.h"

typedef Hospitality__Guest__V1__ExplicitPreferences prefs_t;

static const char *const diets[] = {
    "vegetarian",   "vegan",       "pescatarian", "gluten_free", "dairy_free",
    "lactose_free", "halal",       "kosher",      "nut_allergy", "shellfish_allergy",
    "egg_allergy",  "soy_allergy", "low_sodium",  "diabetic",
};

static const char *const bool_keys[] = {
    "notification_settings.email_enabled", "notification_settings.sms_enabled",
    "notification_settings.push_enabled", "notification_settings.in_app_enabled"};
static const char *const time_keys[] = {"notification_settings.quiet_hours_start",
                                        "notification_settings.quiet_hours_end"};

static bool snake(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static bool check_list(hm_call_t *call, const char *field, char **v, size_t n, bool diet,
                       hm_status_t *st)
{
    if (n > 50) {
        *st = hm_call_invalid(call, field, "at most 50 values");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const char *f = hm_arena_printf(&call->arena, "%s[%zu]", field, i);
        if (diet) {
            bool ok = false;
            for (size_t k = 0; k < sizeof diets / sizeof *diets; k++)
                ok = ok || strcmp(v[i], diets[k]) == 0;
            if (!ok) {
                *st = hm_call_invalid(call, f,
                                      "\"%s\" is not a known dietary restriction (vegetarian, "
                                      "vegan, gluten_free, halal, kosher, nut_allergy, ...)",
                                      v[i]);
                return false;
            }
        } else if (!snake(v[i], 64)) {
            *st = hm_call_invalid(call, f, "must be lower_snake_case, 1..64 characters");
            return false;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(v[i], v[k]) == 0) {
                *st = hm_call_invalid(call, f, "\"%s\" is listed twice", v[i]);
                return false;
            }
    }
    return true;
}

static bool check_time(hm_call_t *call, const char *field,
                       const Hospitality__Common__V1__TimeOfDay *t, hm_status_t *st)
{
    if (t && (t->hours < 0 || t->hours > 23 || t->minutes < 0 || t->minutes > 59)) {
        *st = hm_call_invalid(call, field, "hours must be 0..23 and minutes 0..59");
        return false;
    }
    return true;
}

static bool validate(hm_call_t *call, const prefs_t *p, hm_status_t *st)
{
    if (!check_list(call, "explicit_preferences.dietary_restrictions", p->dietary_restrictions,
                    p->n_dietary_restrictions, true, st) ||
        !check_list(call, "explicit_preferences.favorite_categories", p->favorite_categories,
                    p->n_favorite_categories, false, st) ||
        !check_list(call, "explicit_preferences.seating_preferences", p->seating_preferences,
                    p->n_seating_preferences, false, st))
        return false;
    if (*p->language && !hm_str_is_token(p->language, strlen(p->language), 35)) {
        *st = hm_call_invalid(call, "explicit_preferences.language", "not a BCP 47 tag");
        return false;
    }
    if (p->notification_settings &&
        (!check_time(call, "explicit_preferences.notification_settings.quiet_hours_start",
                     p->notification_settings->quiet_hours_start, st) ||
         !check_time(call, "explicit_preferences.notification_settings.quiet_hours_end",
                     p->notification_settings->quiet_hours_end, st)))
        return false;
    if (p->n_other > 50) {
        *st = hm_call_invalid(call, "explicit_preferences.other", "at most 50 entries");
        return false;
    }
    for (size_t i = 0; i < p->n_other; i++) {
        if (!snake(p->other[i]->key, 64)) {
            *st = hm_call_invalid(call, "explicit_preferences.other",
                                  "key \"%s\" must be lower_snake_case, 1..64 characters",
                                  p->other[i]->key);
            return false;
        }
        if (!gd_check_text(call, "explicit_preferences.other", p->other[i]->value, 500, st))
            return false;
    }
    return true;
}

static json_t *str_array(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

/* The flat form of every field `p` sets. */
static json_t *to_flat(const prefs_t *p)
{
    json_t *o = json_object();
    if (p->n_dietary_restrictions)
        json_object_set_new(o, "dietary_restrictions",
                            str_array(p->dietary_restrictions, p->n_dietary_restrictions));
    if (p->n_favorite_categories)
        json_object_set_new(o, "favorite_categories",
                            str_array(p->favorite_categories, p->n_favorite_categories));
    if (p->n_seating_preferences)
        json_object_set_new(o, "seating_preferences",
                            str_array(p->seating_preferences, p->n_seating_preferences));
    if (*p->language)
        json_object_set_new(o, "language", json_string(p->language));
    const Hospitality__Guest__V1__NotificationSettings *n = p->notification_settings;
    if (n) {
        const Google__Protobuf__BoolValue *b[4] = {n->email_enabled, n->sms_enabled,
                                                   n->push_enabled, n->in_app_enabled};
        for (int i = 0; i < 4; i++)
            if (b[i])
                json_object_set_new(o, bool_keys[i], json_boolean(b[i]->value));
        const Hospitality__Common__V1__TimeOfDay *t[2] = {n->quiet_hours_start, n->quiet_hours_end};
        for (int i = 0; i < 2; i++)
            if (t[i]) {
                char buf[8];
                snprintf(buf, sizeof buf, "%02d:%02d", t[i]->hours, t[i]->minutes);
                json_object_set_new(o, time_keys[i], json_string(buf));
            }
    }
    for (size_t i = 0; i < p->n_other; i++) {
        char key[80];
        snprintf(key, sizeof key, "other.%s", p->other[i]->key);
        json_object_set_new(o, key, json_string(p->other[i]->value));
    }
    return o;
}

static char **arena_strs(hm_arena_t *a, json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    char **v = hm_arena_alloc(a, sizeof(char *) * (*n + 1));
    for (size_t i = 0; i < *n; i++)
        v[i] = hm_arena_strdup(a, gd_jsv(json_array_get(arr, i)));
    return v;
}

/* The proto from a flat object (arena). */
static prefs_t *from_flat(hm_arena_t *a, json_t *o)
{
    prefs_t *p = hm_arena_alloc(a, sizeof *p);
    hospitality__guest__v1__explicit_preferences__init(p);
    json_t *v;
    if ((v = json_object_get(o, "dietary_restrictions")))
        p->dietary_restrictions = arena_strs(a, v, &p->n_dietary_restrictions);
    if ((v = json_object_get(o, "favorite_categories")))
        p->favorite_categories = arena_strs(a, v, &p->n_favorite_categories);
    if ((v = json_object_get(o, "seating_preferences")))
        p->seating_preferences = arena_strs(a, v, &p->n_seating_preferences);
    if ((v = json_object_get(o, "language")) && json_is_string(v))
        p->language = hm_arena_strdup(a, json_string_value(v));
    Hospitality__Guest__V1__NotificationSettings *n = NULL;
    for (int i = 0; i < 6; i++) {
        const char *k = i < 4 ? bool_keys[i] : time_keys[i - 4];
        if (!(v = json_object_get(o, k)))
            continue;
        if (!n) {
            n = hm_arena_alloc(a, sizeof *n);
            hospitality__guest__v1__notification_settings__init(n);
        }
        if (i < 4) {
            Google__Protobuf__BoolValue *b = hm_arena_alloc(a, sizeof *b);
            google__protobuf__bool_value__init(b);
            b->value = json_is_true(v);
            Google__Protobuf__BoolValue **slot[4] = {&n->email_enabled, &n->sms_enabled,
                                                     &n->push_enabled, &n->in_app_enabled};
            *slot[i] = b;
        } else {
            Hospitality__Common__V1__TimeOfDay *t = hm_arena_alloc(a, sizeof *t);
            hospitality__common__v1__time_of_day__init(t);
            if (json_is_string(v))
                sscanf(json_string_value(v), "%d:%d", &t->hours, &t->minutes);
            if (i == 4)
                n->quiet_hours_start = t;
            else
                n->quiet_hours_end = t;
        }
    }
    p->notification_settings = n;
    const char *k;
    size_t cnt = 0;
    json_object_foreach(o, k, v) cnt += strncmp(k, "other.", 6) == 0;
    if (cnt) {
        p->other = hm_arena_alloc(a, sizeof(void *) * cnt);
        json_object_foreach(o, k, v)
        {
            if (strncmp(k, "other.", 6) != 0)
                continue;
            Hospitality__Guest__V1__ExplicitPreferences__OtherEntry *e =
                hm_arena_alloc(a, sizeof *e);
            hospitality__guest__v1__explicit_preferences__other_entry__init(e);
            e->key = hm_arena_strdup(a, k + 6);
            e->value = hm_arena_strdup(a, gd_jsv(v));
            p->other[p->n_other++] = e;
        }
    }
    return p;
}

static json_t *parse(const char *text)
{
    json_t *o = text && *text ? json_loads(text, 0, NULL) : NULL;
    return o ? o : json_object();
}

static char *dump(hm_arena_t *a, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    char *r = hm_arena_strdup(a, s ? s : "{}");
    free(s);
    return r;
}

/* Mask paths a client may name: the flat keys, their parents and "other.<key>". */
static bool mask_path_ok(const char *p)
{
    static const char *const ok[] = {"dietary_restrictions",  "favorite_categories",
                                     "seating_preferences",   "language",
                                     "notification_settings", "other"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        if (strcmp(p, ok[i]) == 0)
            return true;
    for (int i = 0; i < 4; i++)
        if (strcmp(p, bool_keys[i]) == 0)
            return true;
    for (int i = 0; i < 2; i++)
        if (strcmp(p, time_keys[i]) == 0)
            return true;
    return strncmp(p, "other.", 6) == 0 && snake(p + 6, 64);
}

static bool under(const char *key, const char *path)
{
    size_t n = strlen(path);
    return strcmp(key, path) == 0 || (strncmp(key, path, n) == 0 && key[n] == '.');
}

/* ---- PreferenceSet loading ---- */

static const hm_stmt_t st_guest_exists = {"gp_guest",
                                          "SELECT status FROM guests WHERE guest_id = $1", 1};
static const hm_stmt_t st_lock_guest = {
    "gp_lock", "SELECT status FROM guests WHERE guest_id = $1 FOR UPDATE", 1};
static const hm_stmt_t st_at = {
    "gp_at",
    "SELECT version, prefs::text, (extract(epoch FROM changed_at) * 1e6)::bigint FROM "
    "guest_preferences WHERE guest_id = $1 AND changed_at <= coalesce(to_timestamp($2::float8), "
    "'infinity') ORDER BY version DESC LIMIT 1",
    2};
static const hm_stmt_t st_implicit = {
    "gp_implicit",
    "SELECT key, value, confidence, source, (extract(epoch FROM updated_at) * 1e6)::bigint FROM "
    "guest_implicit_preferences WHERE guest_id = $1 ORDER BY confidence DESC, key, value",
    1};
static const hm_stmt_t st_effective = {
    "gp_effective",
    "SELECT key, value::text, origin, origin_id FROM gd_effective($1, $2, "
    "coalesce(to_timestamp($3::float8), 'infinity'))",
    3};
static const hm_stmt_t st_put = {
    "gp_put", "SELECT gd_put_preferences($1, $2::jsonb, $3, $4::smallint, $5)", 5};
static const hm_stmt_t st_version_row = {
    "gp_version_row",
    "SELECT changed_fields::text, prefs::text FROM guest_preferences WHERE guest_id = $1 AND "
    "version = $2",
    2};

static int guest_status(const gd_env_t *e, const hm_stmt_t *stmt, const char *guest)
{
    PGresult *r;
    int rc = gd_q(e, stmt, &r, guest);
    if (rc)
        return rc;
    return PQntuples(r) == 1 ? (int)gd_i64(r, 0, 0) : HM_ENOTFOUND;
}

static int load_implicit(const gd_env_t *e, const char *guest,
                         Hospitality__Guest__V1__ImplicitPreference ***out, size_t *n)
{
    PGresult *r;
    int rc = gd_q(e, &st_implicit, &r, guest);
    if (rc)
        return rc;
    *n = 0;
    *out = hm_arena_alloc(e->arena, sizeof(void *) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++) {
        Hospitality__Guest__V1__ImplicitPreference *p = hm_arena_alloc(e->arena, sizeof *p);
        hospitality__guest__v1__implicit_preference__init(p);
        p->key = hm_arena_strdup(e->arena, gd_str(r, i, 0));
        p->value = hm_arena_strdup(e->arena, gd_str(r, i, 1));
        p->confidence = gd_f64(r, i, 2);
        p->source = hm_arena_strdup(e->arena, gd_str(r, i, 3));
        p->updated_at = gd_ts(e->arena, r, i, 4);
        (*out)[(*n)++] = p;
    }
    return 0;
}

static const char *epoch_param(hm_arena_t *a, const Google__Protobuf__Timestamp *t)
{
    return t ? gd_usp(a, hm_timestamp_to_us(t)) : NULL;
}

int guest_effective_prefs(const gd_env_t *e, const char *guest_id, const char *venue, prefs_t **eff,
                          Hospitality__Guest__V1__PreferenceProvenance ***prov, size_t *nprov,
                          int64_t *version)
{
    return guest_effective_at(e, guest_id, venue, NULL, eff, prov, nprov, version);
}

int guest_effective_at(const gd_env_t *e, const char *guest_id, const char *venue, const char *at,
                       prefs_t **eff, Hospitality__Guest__V1__PreferenceProvenance ***prov,
                       size_t *nprov, int64_t *version)
{
    PGresult *r;
    int rc = gd_q(e, &st_effective, &r, guest_id, venue ? venue : "", at);
    if (rc)
        return rc;
    json_t *o = json_object();
    if (prov) {
        *nprov = 0;
        *prov = hm_arena_alloc(e->arena, sizeof(void *) * (size_t)(PQntuples(r) + 1));
    }
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *v = json_loads(gd_str(r, i, 1), JSON_DECODE_ANY, NULL);
        if (v)
            json_object_set_new(o, gd_str(r, i, 0), v);
        if (prov) {
            Hospitality__Guest__V1__PreferenceProvenance *p = hm_arena_alloc(e->arena, sizeof *p);
            hospitality__guest__v1__preference_provenance__init(p);
            p->field = hm_arena_strdup(e->arena, gd_str(r, i, 0));
            p->origin = (Hospitality__Guest__V1__PreferenceOrigin)gd_i64(r, i, 2);
            p->origin_id = hm_arena_strdup(e->arena, gd_str(r, i, 3));
            (*prov)[(*nprov)++] = p;
        }
    }
    *eff = from_flat(e->arena, o);
    json_decref(o);
    if (version) {
        if ((rc = gd_q(e, &st_at, &r, guest_id, at)) != 0)
            return rc;
        *version = PQntuples(r) ? gd_i64(r, 0, 0) : 0;
    }
    return 0;
}

static Hospitality__Guest__V1__PreferenceSet *
pref_set(hm_arena_t *a, const char *guest, int64_t version, const char *json, int64_t at_us)
{
    Hospitality__Guest__V1__PreferenceSet *s = hm_arena_alloc(a, sizeof *s);
    hospitality__guest__v1__preference_set__init(s);
    s->guest_id = hm_arena_strdup(a, guest);
    s->version = version;
    json_t *o = parse(json);
    s->explicit_preferences = from_flat(a, o);
    json_decref(o);
    if (at_us)
        s->updated_at = hm_timestamp_from_us(a, at_us);
    return s;
}

GD_HANDLER(guest_get_preferences)
{
    const Hospitality__Guest__V1__GetPreferencesRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_check_text(call, "venue_id", req->venue_id, 128, &st))
        return st;
    gd_env_t e = gd_env(call);
    int rc = guest_status(&e, &st_guest_exists, req->guest_id);
    if (rc == HM_ENOTFOUND)
        return gd_not_found(call, req->guest_id);
    if (rc < 0)
        return hm_call_fail(call, rc, "load preferences");
    const char *at = epoch_param(&call->arena, req->as_of);
    PGresult *r;
    if ((rc = gd_q(&e, &st_at, &r, req->guest_id, at)) != 0)
        return hm_call_fail(call, rc, "load preferences");
    Hospitality__Guest__V1__GetPreferencesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__get_preferences_response__init(resp);
    resp->preferences = PQntuples(r) ? pref_set(&call->arena, req->guest_id, gd_i64(r, 0, 0),
                                                gd_str(r, 0, 1), gd_i64(r, 0, 2))
                                     : pref_set(&call->arena, req->guest_id, 0, "{}", 0);
    if ((rc = load_implicit(&e, req->guest_id, &resp->preferences->implicit_preferences,
                            &resp->preferences->n_implicit_preferences)) != 0 ||
        (rc = guest_effective_at(&e, req->guest_id, req->venue_id, at, &resp->effective,
                                 &resp->provenance, &resp->n_provenance, NULL)) != 0)
        return hm_call_fail(call, rc, "load preferences");
    *out = &resp->base;
    return HM_STATUS_OK;
}

typedef struct up_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__UpdatePreferencesRequest *req;
    json_t *next;
    int64_t version;
    hm_status_t st;
    bool failed;
} up_tx_t;

static bool has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

static int up_fn(hm_db_t *db, void *arg)
{
    up_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    const Hospitality__Guest__V1__UpdatePreferencesRequest *req = t->req;
    int rc = guest_status(&e, &st_lock_guest, req->guest_id);
    if (rc == HM_ENOTFOUND) {
        t->failed = true;
        t->st = gd_not_found(call, req->guest_id);
        return rc;
    }
    if (rc < 0)
        return rc;
    if (rc == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        rc == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s is %s and read-only", req->guest_id,
                              rc == 3 ? "merged" : "erased");
        return HM_EPRECOND;
    }
    PGresult *r;
    if ((rc = gd_q(&e, &st_at, &r, req->guest_id, NULL)) != 0)
        return rc;
    json_t *cur = parse(PQntuples(r) ? gd_str(r, 0, 1) : "{}");
    json_t *incoming = to_flat(req->explicit_preferences);
    json_t *next;
    if (!req->update_mask || req->update_mask->n_paths == 0) {
        next = incoming;
        json_incref(next);
    } else {
        next = json_deep_copy(cur);
        const char *k;
        json_t *v;
        void *tmp;
        for (size_t i = 0; i < req->update_mask->n_paths; i++) {
            const char *path = req->update_mask->paths[i];
            json_object_foreach_safe(cur, tmp, k, v) if (under(k, path)) json_object_del(next, k);
            json_object_foreach(incoming, k, v) if (under(k, path)) json_object_set(next, k, v);
        }
    }
    bool existed = PQntuples(r) == 1;
    bool same = strcmp(dump(a, cur), dump(a, next)) == 0;
    json_decref(incoming);
    t->next = next;
    /* Favourite categories added and removed, for their own events. */
    json_t *oc = json_object_get(cur, "favorite_categories"),
           *nc = json_object_get(next, "favorite_categories");
    size_t no = 0, nn = 0;
    char **ov = oc ? arena_strs(a, oc, &no) : NULL, **nv = nc ? arena_strs(a, nc, &nn) : NULL;
    json_decref(cur);
    if ((rc = gd_q(&e, &st_put, &r, req->guest_id, dump(a, next), gd_i64p(a, req->expected_version),
                   gd_i64p(a, gd_actor_type(call)), gd_actor_id(call))) != 0)
        return rc;
    t->version = gd_i64(r, 0, 0);
    if (existed && same)
        return 0; /* nothing changed: no new version, no events */
    if ((rc = gd_q(&e, &st_version_row, &r, req->guest_id, gd_i64p(a, t->version))) != 0)
        return rc;
    Hospitality__Events__V1__GuestPreferencesUpdated ev =
        HOSPITALITY__EVENTS__V1__GUEST_PREFERENCES_UPDATED__INIT;
    ev.guest_id = req->guest_id;
    ev.version = t->version;
    gd_parse_text_array(a, PQntuples(r) ? gd_str(r, 0, 0) : "{}", &ev.changed_fields,
                        &ev.n_changed_fields);
    if ((rc = hm_call_publish(call, db, "guest.preferences.updated", req->guest_id, &ev.base)) != 0)
        return rc;
    for (size_t i = 0; i < nn; i++)
        if (!has(ov, no, nv[i])) {
            Hospitality__Events__V1__GuestPreferencesCategoryAdded ca =
                HOSPITALITY__EVENTS__V1__GUEST_PREFERENCES_CATEGORY_ADDED__INIT;
            ca.guest_id = req->guest_id;
            ca.category = nv[i];
            ca.version = t->version;
            if ((rc = hm_call_publish(call, db, "guest.preferences.category.added", req->guest_id,
                                      &ca.base)) != 0)
                return rc;
        }
    for (size_t i = 0; i < no; i++)
        if (!has(nv, nn, ov[i])) {
            Hospitality__Events__V1__GuestPreferencesCategoryRemoved cr =
                HOSPITALITY__EVENTS__V1__GUEST_PREFERENCES_CATEGORY_REMOVED__INIT;
            cr.guest_id = req->guest_id;
            cr.category = ov[i];
            cr.version = t->version;
            if ((rc = hm_call_publish(call, db, "guest.preferences.category.removed", req->guest_id,
                                      &cr.base)) != 0)
                return rc;
        }
    return 0;
}

GD_HANDLER(guest_update_preferences)
{
    const Hospitality__Guest__V1__UpdatePreferencesRequest *req = (const void *)in;
    hm_status_t st;
    static const prefs_t none = HOSPITALITY__GUEST__V1__EXPLICIT_PREFERENCES__INIT;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    Hospitality__Guest__V1__UpdatePreferencesRequest copy = *req;
    if (!copy.explicit_preferences)
        copy.explicit_preferences = (prefs_t *)&none;
    if (!validate(call, copy.explicit_preferences, &st))
        return st;
    if (req->expected_version < 0)
        return hm_call_invalid(call, "expected_version", "must not be negative");
    for (size_t i = 0; req->update_mask && i < req->update_mask->n_paths; i++)
        if (!mask_path_ok(req->update_mask->paths[i]))
            return hm_call_invalid(call, "update_mask",
                                   "\"%s\" is not a field of ExplicitPreferences",
                                   req->update_mask->paths[i]);
    up_tx_t t = {call, &copy, NULL, 0, HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, up_fn, &t, HM_DB_READ_COMMITTED);
    if (t.next)
        json_decref(t.next);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "update preferences");
    gd_env_t e = gd_env(call);
    PGresult *r;
    if ((rc = gd_q(&e, &st_at, &r, req->guest_id, NULL)) != 0)
        return hm_call_fail(call, rc, "load preferences");
    Hospitality__Guest__V1__UpdatePreferencesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__update_preferences_response__init(resp);
    resp->preferences =
        pref_set(&call->arena, req->guest_id, gd_i64(r, 0, 0), gd_str(r, 0, 1), gd_i64(r, 0, 2));
    if ((rc = load_implicit(&e, req->guest_id, &resp->preferences->implicit_preferences,
                            &resp->preferences->n_implicit_preferences)) != 0)
        return hm_call_fail(call, rc, "load preferences");
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_history = {
    "gp_history",
    "SELECT version, prefs::text, (extract(epoch FROM changed_at) * 1e6)::bigint, "
    "changed_fields::text, actor_type, actor_id FROM guest_preferences WHERE guest_id = $1 AND "
    "changed_at >= coalesce(to_timestamp($2::float8), '-infinity') AND changed_at < "
    "coalesce(to_timestamp($3::float8), 'infinity') ORDER BY version DESC LIMIT $4 OFFSET $5",
    5};

GD_HANDLER(guest_list_preference_history)
{
    const Hospitality__Guest__V1__ListPreferenceHistoryRequest *req = (const void *)in;
    hm_status_t st;
    int size;
    long offset;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_page(call, req->page, &size, &offset, &st))
        return st;
    gd_env_t e = gd_env(call);
    hm_arena_t *a = &call->arena;
    int rc = guest_status(&e, &st_guest_exists, req->guest_id);
    if (rc == HM_ENOTFOUND)
        return gd_not_found(call, req->guest_id);
    if (rc < 0)
        return hm_call_fail(call, rc, "load history");
    const Hospitality__Common__V1__TimeRange *tr = req->time_range;
    PGresult *r;
    if ((rc = gd_q(&e, &st_history, &r, req->guest_id, epoch_param(a, tr ? tr->start_time : NULL),
                   epoch_param(a, tr ? tr->end_time : NULL), gd_i64p(a, size + 1),
                   gd_i64p(a, offset))) != 0)
        return hm_call_fail(call, rc, "load history");
    Hospitality__Guest__V1__ListPreferenceHistoryResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__guest__v1__list_preference_history_response__init(resp);
    int rows = PQntuples(r);
    resp->versions = hm_arena_alloc(a, sizeof(void *) * (size_t)(rows + 1));
    for (int i = 0; i < rows && i < size; i++) {
        Hospitality__Guest__V1__PreferenceVersion *v = hm_arena_alloc(a, sizeof *v);
        hospitality__guest__v1__preference_version__init(v);
        v->preferences =
            pref_set(a, req->guest_id, gd_i64(r, i, 0), gd_str(r, i, 1), gd_i64(r, i, 2));
        v->changed_fields = hm_arena_alloc(a, sizeof *v->changed_fields);
        google__protobuf__field_mask__init(v->changed_fields);
        gd_parse_text_array(a, gd_str(r, i, 3), &v->changed_fields->paths,
                            &v->changed_fields->n_paths);
        v->changed_by = gd_actor(a, (int)gd_i64(r, i, 4), gd_str(r, i, 5));
        v->changed_at = gd_ts(a, r, i, 2);
        resp->versions[resp->n_versions++] = v;
    }
    resp->page = gd_page_resp(a, rows, size, offset);
    *out = &resp->base;
    return HM_STATUS_OK;
}
