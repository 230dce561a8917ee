/*
 * profile.c - guest profile RPCs: CreateGuest, GetProfile, GetMyProfile, UpdateProfile and
 * ListProfileHistory. Requests are validated field by field (the status names the field),
 * personal data goes to the store in plaintext and is encrypted there; every change is a new
 * version kept (encrypted) in the history, and staff reads of personal data are audited.
 */
#include <ctype.h>
#include <string.h>

#include "guestd.h"
#include "hm/auth.h"
#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "store.h"

#define MAX_NAME     200
#define MAX_URL      2048
#define MAX_BIO      2000
#define MAX_KEY      128
#define MAX_LANGUAGE 35
#define MAX_TZ       64

/* A string field: valid UTF-8 and at most `max` code points. */
static bool check_text(hm_call_t *call, const char *field, const char *v, size_t max,
                       hm_status_t *st)
{
    if (!hm_utf8_valid(v)) {
        *st = hm_call_invalid(call, field, "not valid UTF-8");
        return false;
    }
    if (hm_utf8_len(v) > max) {
        *st = hm_call_invalid(call, field, "longer than %zu characters", max);
        return false;
    }
    return true;
}

/* ASCII tokens such as language tags and time zone names. */
static bool check_token(hm_call_t *call, const char *field, const char *v, size_t max,
                        const char *extra, hm_status_t *st)
{
    size_t n = strlen(v);
    bool ok = n <= max;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || strchr(extra, v[i]) != NULL;
    if (!ok)
        *st = hm_call_invalid(call, field, "not a valid value");
    return ok;
}

static bool check_enum(hm_call_t *call, const char *field, int v, const ProtobufCEnumDescriptor *d,
                       hm_status_t *st)
{
    if (protobuf_c_enum_descriptor_get_value(d, v))
        return true;
    *st = hm_call_invalid(call, field, "unknown value %d", v);
    return false;
}

/* Validates a CreateGuest profile into `g`; false with *st set on the first bad field. */
bool guest_validate_new(hm_call_t *call, const Hospitality__Guest__V1__Profile *p, guest_new_t *g,
                        hm_status_t *st)
{
    static const Hospitality__Guest__V1__Profile empty = HOSPITALITY__GUEST__V1__PROFILE__INIT;
    if (!p)
        p = &empty;
    if (!check_text(call, "profile.name", p->name, MAX_NAME, st) ||
        !check_text(call, "profile.avatar_url", p->avatar_url, MAX_URL, st) ||
        !check_text(call, "profile.bio", p->bio, MAX_BIO, st) ||
        !check_token(call, "profile.language", p->language, MAX_LANGUAGE, "-", st) ||
        !check_token(call, "profile.time_zone", p->time_zone, MAX_TZ, "_/+-", st) ||
        !check_enum(call, "profile.theme", p->theme, &hospitality__guest__v1__theme__descriptor,
                    st) ||
        !check_enum(call, "profile.origin_app", p->origin_app,
                    &hospitality__common__v1__app__descriptor, st))
        return false;
    g->name = p->name;
    g->avatar_url = p->avatar_url;
    g->bio = p->bio;
    g->language = p->language;
    g->time_zone = p->time_zone;
    g->theme = p->theme;
    g->origin_app = p->origin_app;

    char *norm;
    g->email = "";
    if (*p->email) {
        if (!check_text(call, "profile.email", p->email, 320, st))
            return false;
        if (hm_crypto_normalize_email(&call->arena, p->email, &norm) != 0) {
            *st = hm_call_invalid(call, "profile.email", "not a valid email address");
            return false;
        }
        g->email = norm;
    }
    g->phone = "";
    if (*p->phone) {
        if (hm_crypto_normalize_phone(&call->arena, p->phone, &norm) != 0 || norm[0] != '+') {
            *st = hm_call_invalid(call, "profile.phone",
                                  "not a phone number in international form (+<country><number>)");
            return false;
        }
        g->phone = norm;
    }

    g->city = g->region = g->country = "";
    g->has_point = false;
    if (p->location) {
        const Hospitality__Guest__V1__Location *l = p->location;
        if (!check_text(call, "profile.location.city", l->city, 100, st) ||
            !check_text(call, "profile.location.region", l->region, 100, st))
            return false;
        size_t cn = strlen(l->country_code);
        if (cn != 0 && (cn != 2 || !isupper((unsigned char)l->country_code[0]) ||
                        !isupper((unsigned char)l->country_code[1]))) {
            *st = hm_call_invalid(call, "profile.location.country_code",
                                  "must be an ISO 3166-1 alpha-2 code such as \"AT\"");
            return false;
        }
        if (l->point) {
            if (!(l->point->latitude >= -90 && l->point->latitude <= 90) ||
                !(l->point->longitude >= -180 && l->point->longitude <= 180)) {
                *st = hm_call_invalid(call, "profile.location.point",
                                      "latitude must be within [-90, 90] and longitude within "
                                      "[-180, 180]");
                return false;
            }
            g->has_point = true;
            g->latitude = l->point->latitude;
            g->longitude = l->point->longitude;
        }
        g->city = l->city;
        g->region = l->region;
        g->country = l->country_code;
    }
    g->visibility = 0;
    g->show_on_leaderboards = false;
    if (p->privacy_settings) {
        if (!check_enum(call, "profile.privacy_settings.visibility",
                        p->privacy_settings->visibility,
                        &hospitality__guest__v1__profile_visibility__descriptor, st))
            return false;
        g->visibility = p->privacy_settings->visibility;
        g->show_on_leaderboards = p->privacy_settings->show_on_leaderboards;
    }
    g->status = (*g->email || *g->phone)
                    ? HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE
                    : HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
    return true;
}

static const hm_stmt_t st_audit = {
    "guest_pii_audit",
    "INSERT INTO pii_access_log (guest_id, actor_type, actor_id, method, request_id) VALUES ($1, "
    "$2, $3, $4, $5)",
    5};

/* Staff and admin reads of a guest's personal data are audited (guests reading themselves and
 * services acting for them are not). */
static int audit_read(hm_call_t *call, const char *guest_id)
{
    int t = gd_actor_type(call);
    if (t != HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_STAFF &&
        t != HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_ADMIN)
        return 0;
    gd_env_t e = gd_env(call);
    const char *method = strrchr(call->method->name, '/');
    return gd_q(&e, &st_audit, NULL, guest_id, gd_i64p(&call->arena, t), gd_actor_id(call),
                method ? method + 1 : call->method->name, call->request_id ? call->request_id : "");
}

int guest_insert(const gd_env_t *e, guest_new_t *g, Hospitality__Guest__V1__Identifier *const *ids,
                 size_t nids, guest_profile_t **p, const char **conflict)
{
    hm_uuid_v4(g->guest_id);
    int rc = guest_store_insert(e, g, p, conflict);
    if (rc)
        return rc;
    /* The profile's email and phone are identifiers too, then the request's. */
    Hospitality__Guest__V1__Identifier *own[2], idv[2];
    size_t nown = 0;
    if (*g->email) {
        hospitality__guest__v1__identifier__init(&idv[nown]);
        idv[nown].type = HOSPITALITY__GUEST__V1__IDENTIFIER_TYPE__IDENTIFIER_TYPE_EMAIL;
        idv[nown].value = (char *)g->email;
        own[nown] = &idv[nown];
        nown++;
    }
    if (*g->phone) {
        hospitality__guest__v1__identifier__init(&idv[nown]);
        idv[nown].type = HOSPITALITY__GUEST__V1__IDENTIFIER_TYPE__IDENTIFIER_TYPE_PHONE;
        idv[nown].value = (char *)g->phone;
        own[nown] = &idv[nown];
        nown++;
    }
    if ((rc = guest_add_identifiers(e, (*p)->guest_id, own, nown, "profile")) != 0 ||
        (rc = guest_add_identifiers(e, (*p)->guest_id, ids, nids, "created_with")) != 0)
        return rc;
    char *all = "*";
    if ((rc = guest_store_snapshot(e, *p, &all, 1, gd_actor_type(e->call), gd_actor_id(e->call))) !=
        0)
        return rc;
    Hospitality__Events__V1__GuestProfileCreated ev =
        HOSPITALITY__EVENTS__V1__GUEST_PROFILE_CREATED__INIT;
    ev.guest_id = (*p)->guest_id;
    ev.anonymous = (*p)->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
    ev.app = (*p)->origin_app;
    ev.version = (*p)->version;
    return hm_call_publish(e->call, e->db, "guest.profile.created", (*p)->guest_id, &ev.base);
}

typedef struct create_tx {
    hm_call_t *call;
    guest_new_t *g;
    const Hospitality__Guest__V1__CreateGuestRequest *req;
    guest_profile_t *p;
    const char *conflict;
} create_tx_t;

static int create_fn(hm_db_t *db, void *arg)
{
    create_tx_t *t = arg;
    gd_env_t e = gd_env(t->call);
    e.db = db;
    return guest_insert(&e, t->g, t->req->identifiers, t->req->n_identifiers, &t->p, &t->conflict);
}

GD_HANDLER(guest_create_guest)
{
    const Hospitality__Guest__V1__CreateGuestRequest *req = (const void *)in;
    hm_status_t st;
    guest_new_t g;
    memset(&g, 0, sizeof(g));
    if (!guest_validate_new(call, req->profile, &g, &st))
        return st;
    g.idempotency_key = NULL;
    if (*req->idempotency_key) {
        if (!check_token(call, "idempotency_key", req->idempotency_key, MAX_KEY, "-_.:", &st))
            return st;
        g.idempotency_key = req->idempotency_key;
    }
    gd_env_t e = gd_env(call);
    guest_profile_t *p;
    int rc;
    /* A retry with the same key returns the guest the first attempt created. */
    if (g.idempotency_key) {
        rc = guest_store_get_by_idempotency_key(&e, g.idempotency_key, &p);
        if (rc == 0)
            goto done;
        if (rc != HM_ENOTFOUND)
            return hm_call_fail(call, rc, "create guest");
    }
    if (!guest_validate_identifiers(call, "identifiers", req->identifiers, req->n_identifiers, &st))
        return st;
    create_tx_t t = {call, &g, req, NULL, NULL};
    rc = hm_db_tx(call->db, create_fn, &t, HM_DB_READ_COMMITTED);
    const char *conflict = t.conflict;
    p = t.p;
    if (rc == HM_EEXIST && g.idempotency_key &&
        guest_store_get_by_idempotency_key(&e, g.idempotency_key, &p) == 0)
        goto done; /* a concurrent retry won the race */
    if (rc == HM_EEXIST) {
        if (!conflict) /* an identifier of the request */
            return hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                                 "identifiers: an identifier already belongs to another guest; "
                                 "use ResolveIdentity to find or merge");
        hm_status_t err =
            hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                          "profile.%s: a guest with this %s already exists", conflict, conflict);
        err.field = hm_arena_printf(&call->arena, "profile.%s", conflict);
        return err;
    }
    if (rc)
        return gd_fail(call, rc, "create guest");
done:;
    Hospitality__Guest__V1__CreateGuestResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hospitality__guest__v1__create_guest_response__init(r);
    r->profile = p;
    *out = &r->base;
    return HM_STATUS_OK;
}

static hm_status_t load_profile(hm_call_t *call, const char *guest_id, guest_profile_t **p)
{
    gd_env_t e = gd_env(call);
    int rc = guest_store_get(&e, guest_id, p);
    if (rc == HM_ENOTFOUND)
        return gd_not_found(call, guest_id);
    if (rc)
        return hm_call_fail(call, rc, "load guest");
    if ((rc = audit_read(call, guest_id)) != 0)
        return hm_call_fail(call, rc, "audit the read");
    return HM_STATUS_OK;
}

GD_HANDLER(guest_get_profile)
{
    const Hospitality__Guest__V1__GetProfileRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    Hospitality__Guest__V1__GetProfileResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hospitality__guest__v1__get_profile_response__init(r);
    st = load_profile(call, req->guest_id, &r->profile);
    *out = &r->base;
    return st;
}

GD_HANDLER(guest_get_my_profile)
{
    (void)in;
    const char *me = call->principal ? call->principal->subject : NULL;
    if (!me || !hm_uuid_valid(me))
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "the caller's token does not name a guest (sub must be a guest id)");
    Hospitality__Guest__V1__GetMyProfileResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hospitality__guest__v1__get_my_profile_response__init(r);
    hm_status_t st = load_profile(call, me, &r->profile);
    *out = &r->base;
    return st;
}

/* Profile fields a client may change (leaves and the messages that hold them). */
static const char *const mutable_paths[] = {
    "name",
    "email",
    "phone",
    "avatar_url",
    "bio",
    "location",
    "location.city",
    "location.region",
    "location.country_code",
    "location.point",
    "language",
    "time_zone",
    "theme",
    "privacy_settings",
    "privacy_settings.visibility",
    "privacy_settings.show_on_leaderboards",
};

bool guest_apply_profile_mask(hm_call_t *call, Hospitality__Guest__V1__Profile *p,
                              const Hospitality__Guest__V1__Profile *src, char **paths,
                              size_t npaths, const char *prefix, hm_status_t *st)
{
    static const Hospitality__Guest__V1__Profile empty = HOSPITALITY__GUEST__V1__PROFILE__INIT;
    static const Hospitality__Guest__V1__Location no_loc = HOSPITALITY__GUEST__V1__LOCATION__INIT;
    static const Hospitality__Guest__V1__PrivacySettings no_ps =
        HOSPITALITY__GUEST__V1__PRIVACY_SETTINGS__INIT;
    hm_arena_t *a = &call->arena;
    if (!src)
        src = &empty;
    if (!p->location) {
        p->location = hm_arena_alloc(a, sizeof *p->location);
        hospitality__guest__v1__location__init(p->location);
    }
    if (!p->privacy_settings) {
        p->privacy_settings = hm_arena_alloc(a, sizeof *p->privacy_settings);
        hospitality__guest__v1__privacy_settings__init(p->privacy_settings);
    }
    const Hospitality__Guest__V1__Location *sl = src->location ? src->location : &no_loc;
    const Hospitality__Guest__V1__PrivacySettings *sp =
        src->privacy_settings ? src->privacy_settings : &no_ps;
    for (size_t i = 0; i < npaths; i++) {
        const char *f = paths[i];
        bool known = false;
        for (size_t k = 0; k < sizeof mutable_paths / sizeof *mutable_paths; k++)
            known = known || strcmp(f, mutable_paths[k]) == 0;
        if (!known) {
            *st = hm_call_invalid(call, hm_arena_printf(a, "%s", prefix),
                                  "\"%s\" is not a field a client may change", f);
            return false;
        }
        if (!strcmp(f, "name"))
            p->name = src->name;
        else if (!strcmp(f, "email"))
            p->email = src->email;
        else if (!strcmp(f, "phone"))
            p->phone = src->phone;
        else if (!strcmp(f, "avatar_url"))
            p->avatar_url = src->avatar_url;
        else if (!strcmp(f, "bio"))
            p->bio = src->bio;
        else if (!strcmp(f, "location")) {
            *p->location = *sl;
        } else if (!strcmp(f, "location.city"))
            p->location->city = sl->city;
        else if (!strcmp(f, "location.region"))
            p->location->region = sl->region;
        else if (!strcmp(f, "location.country_code"))
            p->location->country_code = sl->country_code;
        else if (!strcmp(f, "location.point"))
            p->location->point = sl->point;
        else if (!strcmp(f, "language"))
            p->language = src->language;
        else if (!strcmp(f, "time_zone"))
            p->time_zone = src->time_zone;
        else if (!strcmp(f, "theme"))
            p->theme = src->theme;
        else if (!strcmp(f, "privacy_settings"))
            *p->privacy_settings = *sp;
        else if (!strcmp(f, "privacy_settings.visibility"))
            p->privacy_settings->visibility = sp->visibility;
        else if (!strcmp(f, "privacy_settings.show_on_leaderboards"))
            p->privacy_settings->show_on_leaderboards = sp->show_on_leaderboards;
    }
    /* Validate the result as a whole (also normalizes email and phone). */
    guest_new_t g;
    memset(&g, 0, sizeof g);
    if (!guest_validate_new(call, p, &g, st))
        return false;
    p->email = (char *)g.email;
    p->phone = (char *)g.phone;
    if (p->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS &&
        (*p->email || *p->phone))
        p->status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
    return true;
}

static const hm_stmt_t st_apps_pending = {
    "guest_apps_pending",
    "UPDATE guest_app_profiles SET sync_status = 2, next_attempt_at = clock_timestamp() WHERE "
    "guest_id = $1",
    1};

int guest_save_profile(const gd_env_t *e, Hospitality__Guest__V1__Profile *p, char *const *changed,
                       size_t nchanged, int actor_type, const char *actor_id)
{
    const char *conflict = NULL;
    int rc = guest_store_write(e, p, &conflict);
    if (rc)
        return rc;
    Hospitality__Guest__V1__Identifier id[2], *ids[2];
    size_t n = 0;
    for (size_t i = 0; i < nchanged; i++) {
        bool em = !strcmp(changed[i], "email"), ph = !strcmp(changed[i], "phone");
        if ((em && *p->email) || (ph && *p->phone)) {
            hospitality__guest__v1__identifier__init(&id[n]);
            id[n].type = em ? HOSPITALITY__GUEST__V1__IDENTIFIER_TYPE__IDENTIFIER_TYPE_EMAIL
                            : HOSPITALITY__GUEST__V1__IDENTIFIER_TYPE__IDENTIFIER_TYPE_PHONE;
            id[n].value = em ? p->email : p->phone;
            ids[n] = &id[n];
            n++;
        }
    }
    if ((rc = guest_add_identifiers(e, p->guest_id, ids, n, "profile")) != 0 ||
        (rc = guest_store_snapshot(e, p, changed, nchanged, actor_type, actor_id)) != 0 ||
        (rc = gd_q(e, &st_apps_pending, NULL, p->guest_id)) != 0)
        return rc;
    Hospitality__Events__V1__GuestProfileUpdated ev =
        HOSPITALITY__EVENTS__V1__GUEST_PROFILE_UPDATED__INIT;
    ev.guest_id = p->guest_id;
    ev.version = p->version;
    ev.changed_fields = (char **)changed;
    ev.n_changed_fields = nchanged;
    return e->call
               ? hm_call_publish(e->call, e->db, "guest.profile.updated", p->guest_id, &ev.base)
               : hm_publish(e->db, e->arena, "guest.profile.updated", p->guest_id, NULL, &ev.base);
}

typedef struct update_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__UpdateProfileRequest *req;
    guest_profile_t *p;
    hm_status_t st;
    bool invalid;
} update_tx_t;

static int update_fn(hm_db_t *db, void *arg)
{
    update_tx_t *t = arg;
    hm_call_t *call = t->call;
    gd_env_t e = gd_env(call);
    e.db = db;
    int rc = guest_store_lock(&e, t->req->guest_id, &t->p);
    if (rc)
        return rc;
    if (t->p->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        t->p->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
        t->invalid = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s is %s%s%s and read-only", t->p->guest_id,
                              *t->p->merged_into_guest_id ? "merged into " : "erased",
                              t->p->merged_into_guest_id, "");
        return HM_EPRECOND;
    }
    if (t->req->expected_version != t->p->version) {
        t->invalid = true;
        t->st = hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                              "expected_version %lld is not the current version %lld",
                              (long long)t->req->expected_version, (long long)t->p->version);
        return HM_ECONFLICT;
    }
    if (!guest_apply_profile_mask(call, t->p, t->req->profile, t->req->update_mask->paths,
                                  t->req->update_mask->n_paths, "update_mask", &t->st)) {
        t->invalid = true;
        return HM_EINVAL;
    }
    rc = guest_save_profile(&e, t->p, t->req->update_mask->paths, t->req->update_mask->n_paths,
                            gd_actor_type(call), gd_actor_id(call));
    if (rc == HM_EEXIST) {
        t->invalid = true;
        t->st = hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                              "profile: the email or phone already belongs to another guest");
    }
    return rc;
}

GD_HANDLER(guest_update_profile)
{
    const Hospitality__Guest__V1__UpdateProfileRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (!req->update_mask || req->update_mask->n_paths == 0)
        return hm_call_invalid(call, "update_mask", "name the fields to change");
    if (req->expected_version <= 0)
        return hm_call_invalid(call, "expected_version",
                               "must be the version the change is "
                               "based on (>= 1)");
    update_tx_t t = {call, req, NULL, HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, update_fn, &t, HM_DB_READ_COMMITTED);
    if (t.invalid)
        return t.st;
    if (rc == HM_ENOTFOUND)
        return gd_not_found(call, req->guest_id);
    if (rc)
        return gd_fail(call, rc, "update profile");
    Hospitality__Guest__V1__UpdateProfileResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
    hospitality__guest__v1__update_profile_response__init(r);
    r->profile = t.p;
    *out = &r->base;
    return HM_STATUS_OK;
}

GD_HANDLER(guest_list_profile_history)
{
    const Hospitality__Guest__V1__ListProfileHistoryRequest *req = (const void *)in;
    hm_status_t st;
    int size;
    long offset;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_page(call, req->page, &size, &offset, &st))
        return st;
    gd_env_t e = gd_env(call);
    guest_profile_t *p;
    if ((st = load_profile(call, req->guest_id, &p)).code != HM_CODE_OK)
        return st;
    Hospitality__Guest__V1__ListProfileHistoryResponse *r = hm_arena_alloc(&call->arena, sizeof *r);
    hospitality__guest__v1__list_profile_history_response__init(r);
    int rc = guest_store_history(&e, req->guest_id, size + 1, offset, &r->versions, &r->n_versions);
    if (rc)
        return hm_call_fail(call, rc, "load history");
    r->page = gd_page_resp(&call->arena, (int)r->n_versions, size, offset);
    if (r->n_versions > (size_t)size)
        r->n_versions = (size_t)size;
    *out = &r->base;
    return HM_STATUS_OK;
}
