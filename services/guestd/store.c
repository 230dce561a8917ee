/*
 * store.c - guestd's SQL (see store.h). One prepared statement per query; rows are mapped to
 * hospitality.guest.v1.Profile in the call's arena, decrypting personal fields with an AAD
 * that binds each value to its guest and column.
 */
#include "store.h"

#include "hm/pb.h"

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
    "(extract(epoch FROM updated_at) * 1000000)::bigint, merged_into"

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
    C_UPDATED,
    C_MERGED
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

static const char *aad(const gd_env_t *e, const char *field, const char *guest_id)
{
    return hm_arena_printf(e->arena, "guest:%s:%s", field, guest_id);
}

int gd_seal(const gd_env_t *e, const char *aad_s, const void *plain, size_t n, const char **param,
            int *len)
{
    *param = NULL;
    *len = 0;
    if (!plain || n == 0)
        return 0;
    unsigned char *blob;
    size_t bn;
    int rc = hm_crypto_encrypt(e->crypto, e->arena, plain, n, aad_s, &blob, &bn);
    if (rc == 0) {
        *param = (const char *)blob;
        *len = (int)bn;
    }
    return rc;
}

int gd_open(const gd_env_t *e, const PGresult *res, int row, int col, const char *aad_s,
            unsigned char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    unsigned char *blob;
    size_t bn;
    int rc = hm_db_get_bytea(res, row, col, e->arena, &blob, &bn);
    if (rc == HM_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    rc = hm_crypto_decrypt(e->crypto, e->arena, blob, bn, aad_s, out, n);
    if (rc)
        HM_ERROR("cannot decrypt a value (%s)", aad_s);
    return rc;
}

/* Encrypts a non-empty string into a binary parameter; empty values become SQL NULL. */
static int seal(const gd_env_t *e, const char *field, const char *guest_id, const char *plain,
                const char **param, int *len)
{
    return gd_seal(e, aad(e, field, guest_id), plain, plain ? strlen(plain) : 0, param, len);
}

const char *gd_blind(const gd_env_t *e, const char *domain, const char *value)
{
    if (!value || !*value)
        return NULL;
    char *out = hm_arena_alloc(e->arena, 65);
    char *input = hm_arena_printf(e->arena, "%s:%s", domain, value);
    return hm_crypto_blind_index(e->crypto, input, out) == 0 ? out : NULL;
}

static int blind(const gd_env_t *e, const char *domain, const char *value, const char **param)
{
    *param = NULL;
    if (!value || !*value)
        return 0;
    *param = gd_blind(e, domain, value);
    return *param ? 0 : HM_ECRYPTO;
}

/* Decrypts a bytea column into a string; "" for SQL NULL. */
static int open_col(const gd_env_t *e, const PGresult *res, int col, const char *field,
                    const char *guest_id, char **out)
{
    unsigned char *plain;
    size_t n;
    int rc = gd_open(e, res, 0, col, aad(e, field, guest_id), &plain, &n);
    *out = rc == 0 && plain ? (char *)plain : "";
    return rc;
}

static char *text(const gd_env_t *e, const PGresult *res, int col)
{
    const char *v = hm_db_get(res, 0, col);
    return hm_arena_strdup(e->arena, v ? v : "");
}

static int64_t int_col(const PGresult *res, int col)
{
    int64_t v = 0;
    hm_db_get_int64(res, 0, col, &v);
    return v;
}

static int to_profile(const gd_env_t *e, const PGresult *res, guest_profile_t **out)
{
    hm_arena_t *a = e->arena;
    guest_profile_t *p = hm_arena_alloc(a, sizeof(*p));
    hospitality__guest__v1__profile__init(p);
    p->guest_id = text(e, res, C_ID);
    p->status = (Hospitality__Guest__V1__GuestStatus)int_col(res, C_STATUS);
    p->version = int_col(res, C_VERSION);
    int rc = open_col(e, res, C_NAME, "name", p->guest_id, &p->name);
    if (!rc)
        rc = open_col(e, res, C_EMAIL, "email", p->guest_id, &p->email);
    if (!rc)
        rc = open_col(e, res, C_PHONE, "phone", p->guest_id, &p->phone);
    char *point = "";
    if (!rc)
        rc = open_col(e, res, C_POINT, "point", p->guest_id, &point);
    if (rc)
        return rc;
    Hospitality__Guest__V1__Location *loc = hm_arena_alloc(a, sizeof(*loc));
    hospitality__guest__v1__location__init(loc);
    loc->city = text(e, res, C_CITY);
    loc->region = text(e, res, C_REGION);
    loc->country_code = text(e, res, C_COUNTRY);
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
    p->avatar_url = text(e, res, C_AVATAR);
    p->bio = text(e, res, C_BIO);
    p->language = text(e, res, C_LANGUAGE);
    p->time_zone = text(e, res, C_TZ);
    p->origin_app = (Hospitality__Common__V1__App)int_col(res, C_ORIGIN);
    p->created_at = hm_timestamp_from_us(a, int_col(res, C_CREATED));
    p->updated_at = hm_timestamp_from_us(a, int_col(res, C_UPDATED));
    p->merged_into_guest_id = text(e, res, C_MERGED);
    *out = p;
    return 0;
}

int guest_store_insert(const gd_env_t *e, const guest_new_t *g, guest_profile_t **out,
                       const char **conflict)
{
    hm_arena_t *a = e->arena;
    const char *params[20] = {0};
    int lengths[20] = {0}, formats[20] = {0};
    const char *point =
        g->has_point ? hm_arena_printf(a, "%.7f,%.7f", g->latitude, g->longitude) : NULL;
    params[0] = g->guest_id;
    params[1] = hm_db_param_int64(a, g->status);
    int rc = seal(e, "name", g->guest_id, g->name, &params[2], &lengths[2]);
    if (!rc)
        rc = seal(e, "email", g->guest_id, g->email, &params[3], &lengths[3]);
    if (!rc)
        rc = blind(e, "email", g->email, &params[4]);
    if (!rc)
        rc = seal(e, "phone", g->guest_id, g->phone, &params[5], &lengths[5]);
    if (!rc)
        rc = blind(e, "phone", g->phone, &params[6]);
    if (!rc)
        rc = seal(e, "point", g->guest_id, point, &params[10], &lengths[10]);
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
    rc = hm_db_exec_arena(e->db, a, &insert_guest, params, lengths, formats, &res);
    if (rc == HM_EEXIST) {
        const char *c = hm_db_last_constraint(e->db);
        *conflict = strstr(c, "idempotency") ? "idempotency_key"
                    : strstr(c, "phone")     ? "phone"
                                             : "email";
        return rc;
    }
    if (rc)
        return rc;
    return to_profile(e, res, out);
}

static const hm_stmt_t select_guest_for_update = {
    "guest_select_fu", "SELECT " GUEST_COLS " FROM guests WHERE guest_id = $1 FOR UPDATE", 1};

static int get_one(const gd_env_t *e, const hm_stmt_t *stmt, const char *arg, guest_profile_t **out)
{
    PGresult *res;
    const char *params[1] = {arg};
    int rc = hm_db_exec_arena(e->db, e->arena, stmt, params, NULL, NULL, &res);
    if (rc)
        return rc;
    if (PQntuples(res) == 0)
        return HM_ENOTFOUND;
    return to_profile(e, res, out);
}

int guest_store_get(const gd_env_t *e, const char *guest_id, guest_profile_t **out)
{
    return get_one(e, &select_guest, guest_id, out);
}

int guest_store_lock(const gd_env_t *e, const char *guest_id, guest_profile_t **out)
{
    return get_one(e, &select_guest_for_update, guest_id, out);
}

int guest_store_get_by_idempotency_key(const gd_env_t *e, const char *key, guest_profile_t **out)
{
    return get_one(e, &select_guest_by_key, key, out);
}

static const hm_stmt_t update_guest = {
    "guest_update",
    "UPDATE guests SET version = $2, name_enc = $3, email_enc = $4, email_index = $5, "
    "phone_enc = $6, phone_index = $7, location_city = $8, location_region = $9, "
    "location_country = $10, location_point_enc = $11, theme = $12, visibility = $13, "
    "show_on_leaderboards = $14, avatar_url = $15, bio = $16, language = $17, time_zone = $18, "
    "status = $19, ctx_version = ctx_version + 1, updated_at = clock_timestamp() WHERE guest_id "
    "= $1 AND version = $2 - 1 RETURNING " GUEST_COLS,
    19,
};

int guest_store_write(const gd_env_t *e, guest_profile_t *p, const char **conflict)
{
    hm_arena_t *a = e->arena;
    const char *params[19] = {0};
    int lengths[19] = {0}, formats[19] = {0};
    const Hospitality__Guest__V1__Location *l = p->location;
    const char *point =
        l && l->point ? hm_arena_printf(a, "%.7f,%.7f", l->point->latitude, l->point->longitude)
                      : NULL;
    params[0] = p->guest_id;
    params[1] = hm_db_param_int64(a, p->version + 1);
    int rc = seal(e, "name", p->guest_id, p->name, &params[2], &lengths[2]);
    if (!rc)
        rc = seal(e, "email", p->guest_id, p->email, &params[3], &lengths[3]);
    if (!rc)
        rc = blind(e, "email", p->email, &params[4]);
    if (!rc)
        rc = seal(e, "phone", p->guest_id, p->phone, &params[5], &lengths[5]);
    if (!rc)
        rc = blind(e, "phone", p->phone, &params[6]);
    if (!rc)
        rc = seal(e, "point", p->guest_id, point, &params[10], &lengths[10]);
    if (rc)
        return rc;
    formats[2] = formats[3] = formats[5] = formats[10] = 1;
    params[7] = l ? l->city : "";
    params[8] = l ? l->region : "";
    params[9] = l ? l->country_code : "";
    params[11] = hm_db_param_int64(a, p->theme);
    params[12] = hm_db_param_int64(a, p->privacy_settings ? p->privacy_settings->visibility : 0);
    params[13] = hm_db_param_bool(p->privacy_settings && p->privacy_settings->show_on_leaderboards);
    params[14] = p->avatar_url;
    params[15] = p->bio;
    params[16] = p->language;
    params[17] = p->time_zone;
    params[18] = hm_db_param_int64(a, p->status);
    PGresult *res;
    rc = hm_db_exec_arena(e->db, a, &update_guest, params, lengths, formats, &res);
    if (rc == HM_EEXIST) {
        *conflict = strstr(hm_db_last_constraint(e->db), "phone") ? "phone" : "email";
        return rc;
    }
    if (rc)
        return rc;
    if (PQntuples(res) != 1)
        return HM_ECONFLICT;
    guest_profile_t *np;
    if ((rc = to_profile(e, res, &np)) != 0)
        return rc;
    *p = *np;
    return 0;
}

static const hm_stmt_t insert_version = {
    "guest_version_insert",
    "INSERT INTO guest_profile_versions (guest_id, version, snapshot_enc, changed_fields, "
    "actor_type, actor_id) VALUES ($1, $2, $3, $4::text[], $5, $6)",
    6};

/* A text[] literal from strings (quoted, escaped). */
char *gd_text_array(hm_arena_t *a, char *const *v, size_t n)
{
    size_t cap = 3;
    for (size_t i = 0; i < n; i++)
        cap += 2 * strlen(v[i]) + 3;
    char *s = hm_arena_alloc(a, cap), *w = s;
    *w++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *w++ = ',';
        *w++ = '"';
        for (const char *c = v[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *w++ = '\\';
            *w++ = *c;
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    return s;
}

int guest_store_snapshot(const gd_env_t *e, const guest_profile_t *p, char *const *changed,
                         size_t nchanged, int actor_type, const char *actor_id)
{
    hm_arena_t *a = e->arena;
    size_t n = protobuf_c_message_get_packed_size(&p->base);
    unsigned char *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&p->base, buf);
    const char *params[6] = {p->guest_id, hm_db_param_int64(a, p->version)};
    int lengths[6] = {0}, formats[6] = {0, 0, 1};
    int rc =
        gd_seal(e, hm_arena_printf(a, "guest:version:%s:%lld", p->guest_id, (long long)p->version),
                buf, n, &params[2], &lengths[2]); /* never empty: guest_id is set */
    if (rc)
        return rc;
    params[3] = gd_text_array(a, changed, nchanged);
    params[4] = hm_db_param_int64(a, actor_type);
    params[5] = actor_id ? actor_id : "";
    PGresult *res;
    return hm_db_exec_arena(e->db, a, &insert_version, params, lengths, formats, &res);
}

static const hm_stmt_t select_versions = {
    "guest_versions",
    "SELECT version, snapshot_enc, changed_fields::text, actor_type, actor_id, "
    "(extract(epoch FROM changed_at) * 1000000)::bigint FROM guest_profile_versions WHERE "
    "guest_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3",
    3};

int guest_store_history(const gd_env_t *e, const char *guest_id, int limit, long offset,
                        Hospitality__Guest__V1__ProfileVersion ***out, size_t *n)
{
    hm_arena_t *a = e->arena;
    const char *params[3] = {guest_id, hm_db_param_int64(a, limit), hm_db_param_int64(a, offset)};
    PGresult *res;
    int rc = hm_db_exec_arena(e->db, a, &select_versions, params, NULL, NULL, &res);
    if (rc)
        return rc;
    int rows = PQntuples(res);
    *out = hm_arena_alloc(a, sizeof(void *) * (size_t)(rows + 1));
    *n = 0;
    for (int i = 0; i < rows; i++) {
        int64_t version = 0, at = 0, atype = 0;
        hm_db_get_int64(res, i, 0, &version);
        hm_db_get_int64(res, i, 3, &atype);
        hm_db_get_int64(res, i, 5, &at);
        unsigned char *plain;
        size_t pn;
        rc = gd_open(e, res, i, 1,
                     hm_arena_printf(a, "guest:version:%s:%lld", guest_id, (long long)version),
                     &plain, &pn);
        if (rc)
            return rc;
        Hospitality__Guest__V1__Profile *p = (void *)protobuf_c_message_unpack(
            &hospitality__guest__v1__profile__descriptor, hm_arena_pb(a), pn, plain);
        if (!p)
            return HM_EINTERNAL;
        Hospitality__Guest__V1__ProfileVersion *v = hm_arena_alloc(a, sizeof *v);
        hospitality__guest__v1__profile_version__init(v);
        v->profile = p;
        v->changed_fields = hm_arena_alloc(a, sizeof *v->changed_fields);
        google__protobuf__field_mask__init(v->changed_fields);
        gd_parse_text_array(a, hm_db_get(res, i, 2), &v->changed_fields->paths,
                            &v->changed_fields->n_paths);
        v->changed_by = gd_actor(a, (int)atype, hm_db_get(res, i, 4));
        v->changed_at = hm_timestamp_from_us(a, at);
        (*out)[(*n)++] = v;
    }
    return 0;
}

void gd_parse_text_array(hm_arena_t *a, const char *lit, char ***out, size_t *n)
{
    *n = 0;
    *out = NULL;
    if (!lit || strlen(lit) < 2)
        return;
    size_t cap = 1;
    for (const char *c = lit; *c; c++)
        cap += *c == ',';
    *out = hm_arena_alloc(a, sizeof(char *) * cap);
    const char *c = lit + 1;
    while (*c && *c != '}') {
        char *buf = hm_arena_alloc(a, strlen(c) + 1), *w = buf;
        if (*c == '"') {
            c++;
            while (*c && *c != '"') {
                if (*c == '\\' && c[1])
                    c++;
                *w++ = *c++;
            }
            if (*c == '"')
                c++;
        } else {
            while (*c && *c != ',' && *c != '}')
                *w++ = *c++;
        }
        *w = '\0';
        (*out)[(*n)++] = buf;
        if (*c == ',')
            c++;
    }
}
