/*
 * store.c - guestd's SQL (see store.h). One prepared statement per query; rows are mapped to
 * hospitality.guest.v1.Profile in the call's arena, decrypting personal fields with an AAD
 * that binds each value to its guest and column.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/crypto.h"
#include "hm/db.h"
#include "hm/id.h"
#include "hm/log.h"

#define GUEST_COLS                                                                                 \
    "guest_id, status, version, name_enc, email_enc, phone_enc, location_city, "                   \
    "location_region, location_country, location_point_enc, theme, visibility, "                   \
    "show_on_leaderboards, avatar_url, bio, language, time_zone, origin_app, "                     \
    "(extract(epoch FROM created_at) * 1000000)::bigint, "                                         \
    "(extract(epoch FROM updated_at) * 1000000)::bigint"

enum {
    C_ID,
    C_STATUS,
    C_VERSION,
    C_NAME,
    C_EMAIL,
    C_PHONE,
    C_CITY,
    C_REGION,
    C_COUNTRY,
    C_POINT,
    C_THEME,
    C_VISIBILITY,
    C_SHOW_LB,
    C_AVATAR,
    C_BIO,
    C_LANGUAGE,
    C_TZ,
    C_ORIGIN,
    C_CREATED,
    C_UPDATED
};

static const hm_stmt_t insert_guest = {
    "guest_insert",
    "INSERT INTO guests (guest_id, status, name_enc, email_enc, email_index, phone_enc, "
    "phone_index, location_city, location_region, location_country, location_point_enc, theme, "
    "visibility, show_on_leaderboards, avatar_url, bio, language, time_zone, origin_app, "
    "idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
    "$16, $17, $18, $19, $20) RETURNING " GUEST_COLS,
    20,
};

static const hm_stmt_t select_guest = {"guest_select",
                                       "SELECT " GUEST_COLS " FROM guests WHERE guest_id = $1", 1};

static const hm_stmt_t select_guest_by_key = {
    "guest_select_by_key", "SELECT " GUEST_COLS " FROM guests WHERE idempotency_key = $1", 1};

static const char *aad(hm_call_t *call, const char *field, const char *guest_id)
{
    return hm_arena_printf(&call->arena, "guest:%s:%s", field, guest_id);
}

/* Encrypts a non-empty value into a binary parameter; empty values become SQL NULL. */
static int seal(hm_call_t *call, const char *field, const char *guest_id, const char *plain,
                const char **param, int *len)
{
    *param = NULL;
    *len = 0;
    if (!plain || !*plain)
        return 0;
    unsigned char *blob;
    size_t n;
    int rc = hm_crypto_encrypt(call->crypto, &call->arena, plain, strlen(plain),
                               aad(call, field, guest_id), &blob, &n);
    if (rc == 0) {
        *param = (const char *)blob;
        *len = (int)n;
    }
    return rc;
}

static int blind(hm_call_t *call, const char *domain, const char *value, const char **param)
{
    *param = NULL;
    if (!value || !*value)
        return 0;
    char *out = hm_arena_alloc(&call->arena, 65);
    char *input = hm_arena_printf(&call->arena, "%s:%s", domain, value);
    int rc = hm_crypto_blind_index(call->crypto, input, out);
    if (rc == 0)
        *param = out;
    return rc;
}

/* Decrypts a bytea column; "" for SQL NULL. */
static int open_col(hm_call_t *call, const PGresult *res, int col, const char *field,
                    const char *guest_id, char **out)
{
    *out = "";
    size_t n;
    unsigned char *blob;
    int rc = hm_db_get_bytea(res, 0, col, &call->arena, &blob, &n);
    if (rc == HM_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    unsigned char *plain;
    size_t pn;
    rc = hm_crypto_decrypt(call->crypto, &call->arena, blob, n, aad(call, field, guest_id), &plain,
                           &pn);
    if (rc) {
        HM_ERROR("cannot decrypt %s of guest %s", field, guest_id);
        return rc;
    }
    *out = (char *)plain;
    return 0;
}

static char *text(hm_call_t *call, const PGresult *res, int col)
{
    const char *v = hm_db_get(res, 0, col);
    return hm_arena_strdup(&call->arena, v ? v : "");
}

static int64_t int_col(const PGresult *res, int col)
{
    int64_t v = 0;
    hm_db_get_int64(res, 0, col, &v);
    return v;
}

static int to_profile(hm_call_t *call, const PGresult *res, guest_profile_t **out)
{
    hm_arena_t *a = &call->arena;
    guest_profile_t *p = hm_arena_alloc(a, sizeof(*p));
    hospitality__guest__v1__profile__init(p);
    p->guest_id = text(call, res, C_ID);
    p->status = (Hospitality__Guest__V1__GuestStatus)int_col(res, C_STATUS);
    p->version = int_col(res, C_VERSION);
    int rc = open_col(call, res, C_NAME, "name", p->guest_id, &p->name);
    if (!rc)
        rc = open_col(call, res, C_EMAIL, "email", p->guest_id, &p->email);
    if (!rc)
        rc = open_col(call, res, C_PHONE, "phone", p->guest_id, &p->phone);
    char *point = "";
    if (!rc)
        rc = open_col(call, res, C_POINT, "point", p->guest_id, &point);
    if (rc)
        return rc;
    Hospitality__Guest__V1__Location *loc = hm_arena_alloc(a, sizeof(*loc));
    hospitality__guest__v1__location__init(loc);
    loc->city = text(call, res, C_CITY);
    loc->region = text(call, res, C_REGION);
    loc->country_code = text(call, res, C_COUNTRY);
    if (*point) {
        loc->point = hm_arena_alloc(a, sizeof(*loc->point));
        hospitality__common__v1__geo_point__init(loc->point);
        if (sscanf(point, "%lf,%lf", &loc->point->latitude, &loc->point->longitude) != 2)
            return HM_EINTERNAL;
    }
    p->location = loc;
    p->theme = (Hospitality__Guest__V1__Theme)int_col(res, C_THEME);
    p->privacy_settings = hm_arena_alloc(a, sizeof(*p->privacy_settings));
    hospitality__guest__v1__privacy_settings__init(p->privacy_settings);
    p->privacy_settings->visibility =
        (Hospitality__Guest__V1__ProfileVisibility)int_col(res, C_VISIBILITY);
    bool show = false;
    hm_db_get_bool(res, 0, C_SHOW_LB, &show);
    p->privacy_settings->show_on_leaderboards = show;
    p->avatar_url = text(call, res, C_AVATAR);
    p->bio = text(call, res, C_BIO);
    p->language = text(call, res, C_LANGUAGE);
    p->time_zone = text(call, res, C_TZ);
    p->origin_app = (Hospitality__Common__V1__App)int_col(res, C_ORIGIN);
    p->created_at = hm_timestamp_from_us(a, int_col(res, C_CREATED));
    p->updated_at = hm_timestamp_from_us(a, int_col(res, C_UPDATED));
    *out = p;
    return 0;
}

int guest_store_insert(hm_call_t *call, const guest_new_t *g, guest_profile_t **out,
                       const char **conflict)
{
    hm_arena_t *a = &call->arena;
    const char *params[20] = {0};
    int lengths[20] = {0}, formats[20] = {0};
    const char *point =
        g->has_point ? hm_arena_printf(a, "%.7f,%.7f", g->latitude, g->longitude) : NULL;
    params[0] = g->guest_id;
    params[1] = hm_db_param_int64(a, g->status);
    int rc = seal(call, "name", g->guest_id, g->name, &params[2], &lengths[2]);
    if (!rc)
        rc = seal(call, "email", g->guest_id, g->email, &params[3], &lengths[3]);
    if (!rc)
        rc = blind(call, "email", g->email, &params[4]);
    if (!rc)
        rc = seal(call, "phone", g->guest_id, g->phone, &params[5], &lengths[5]);
    if (!rc)
        rc = blind(call, "phone", g->phone, &params[6]);
    if (!rc)
        rc = seal(call, "point", g->guest_id, point, &params[10], &lengths[10]);
    if (rc)
        return rc;
    formats[2] = formats[3] = formats[5] = formats[10] = 1;
    params[7] = g->city;
    params[8] = g->region;
    params[9] = g->country;
    params[11] = hm_db_param_int64(a, g->theme);
    params[12] = hm_db_param_int64(a, g->visibility);
    params[13] = hm_db_param_bool(g->show_on_leaderboards);
    params[14] = g->avatar_url;
    params[15] = g->bio;
    params[16] = g->language;
    params[17] = g->time_zone;
    params[18] = hm_db_param_int64(a, g->origin_app);
    params[19] = g->idempotency_key;
    PGresult *res;
    rc = hm_db_exec_arena(call->db, a, &insert_guest, params, lengths, formats, &res);
    if (rc == HM_EEXIST) {
        const char *c = hm_db_last_constraint(call->db);
        *conflict = strstr(c, "idempotency") ? "idempotency_key"
                    : strstr(c, "phone")     ? "phone"
                                             : "email";
        return rc;
    }
    if (rc)
        return rc;
    return to_profile(call, res, out);
}

static int get_one(hm_call_t *call, const hm_stmt_t *stmt, const char *arg, guest_profile_t **out)
{
    PGresult *res;
    const char *params[1] = {arg};
    int rc = hm_db_exec_arena(call->db, &call->arena, stmt, params, NULL, NULL, &res);
    if (rc)
        return rc;
    if (PQntuples(res) == 0)
        return HM_ENOTFOUND;
    return to_profile(call, res, out);
}

int guest_store_get(hm_call_t *call, const char *guest_id, guest_profile_t **out)
{
    return get_one(call, &select_guest, guest_id, out);
}

int guest_store_get_by_idempotency_key(hm_call_t *call, const char *key, guest_profile_t **out)
{
    return get_one(call, &select_guest_by_key, key, out);
}
