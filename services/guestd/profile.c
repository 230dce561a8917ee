/*
 * profile.c - guest profile RPCs: CreateGuest and GetProfile. Requests are validated field
 * by field (the status names the field), personal data goes to the store in plaintext and is
 * encrypted there.
 */
#include <ctype.h>
#include <string.h>

#include "guestd.h"
#include "hm/crypto.h"
#include "hm/id.h"
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
static bool validate_new(hm_call_t *call, const Hospitality__Guest__V1__Profile *p, guest_new_t *g,
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

static hm_status_t respond_profile(hm_call_t *call, guest_profile_t *p, ProtobufCMessage **out,
                                   bool create)
{
    if (create) {
        Hospitality__Guest__V1__CreateGuestResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
        hospitality__guest__v1__create_guest_response__init(r);
        r->profile = p;
        *out = &r->base;
    } else {
        Hospitality__Guest__V1__GetProfileResponse *r = hm_arena_alloc(&call->arena, sizeof(*r));
        hospitality__guest__v1__get_profile_response__init(r);
        r->profile = p;
        *out = &r->base;
    }
    return HM_STATUS_OK;
}

hm_status_t guest_create_guest(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Guest__V1__CreateGuestRequest *req = (const void *)in;
    hm_status_t st;
    guest_new_t g;
    memset(&g, 0, sizeof(g));
    if (!validate_new(call, req->profile, &g, &st))
        return st;
    if (req->n_identifiers > 0)
        return hm_call_error(call, HM_CODE_UNIMPLEMENTED, "UNIMPLEMENTED",
                             "identifiers: linking identifiers at creation is not available yet; "
                             "create the guest, then call LinkIdentity");
    g.idempotency_key = NULL;
    if (*req->idempotency_key) {
        if (!check_token(call, "idempotency_key", req->idempotency_key, MAX_KEY, "-_.:", &st))
            return st;
        g.idempotency_key = req->idempotency_key;
    }
    guest_profile_t *p;
    int rc;
    /* A retry with the same key returns the guest the first attempt created. */
    if (g.idempotency_key) {
        rc = guest_store_get_by_idempotency_key(call, g.idempotency_key, &p);
        if (rc == 0)
            return respond_profile(call, p, out, true);
        if (rc != HM_ENOTFOUND)
            return hm_call_fail(call, rc, "create guest");
    }
    hm_uuid_v4(g.guest_id);
    const char *conflict = NULL;
    rc = guest_store_insert(call, &g, &p, &conflict);
    if (rc == HM_EEXIST && g.idempotency_key &&
        guest_store_get_by_idempotency_key(call, g.idempotency_key, &p) == 0)
        return respond_profile(call, p, out, true); /* a concurrent retry won the race */
    if (rc == HM_EEXIST) {
        hm_status_t e =
            hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                          "profile.%s: a guest with this %s already exists", conflict, conflict);
        e.field = hm_arena_printf(&call->arena, "profile.%s", conflict);
        return e;
    }
    if (rc)
        return hm_call_fail(call, rc, "create guest");
    return respond_profile(call, p, out, true);
}

hm_status_t guest_get_profile(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
{
    const Hospitality__Guest__V1__GetProfileRequest *req = (const void *)in;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "must be a UUID");
    guest_profile_t *p;
    int rc = guest_store_get(call, req->guest_id, &p);
    if (rc == HM_ENOTFOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "guest %s not found",
                             req->guest_id);
    if (rc)
        return hm_call_fail(call, rc, "load guest");
    return respond_profile(call, p, out, false);
}
