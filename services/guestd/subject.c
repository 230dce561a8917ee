/*
 * subject.c - hospitality.privacy.v1.DataSubjectService for guestd (privacyd drives it).
 *
 * Export: every section guestd holds about a guest, personal data decrypted: profile,
 * profile history, identifiers, merges, app profiles, preference versions, implicit
 * preferences, interactions, behaviour signals, segments, consent as guestd last saw it, and
 * the log of staff reads of the guest's personal data.
 *
 * Erase: guestd keeps nothing a law requires, so both modes delete: the guest, every guest
 * merged into it, and everything derived (signals, affinities, segments, implicit
 * preferences, the context cache in Redis). Idempotent by request_id: the receipt is kept and
 * returned again. A guest that no longer exists exports empty sections.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/cache.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "store.h"

#define CAT(x) HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_##x

typedef struct sections {
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp;
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req;
    hm_arena_t *a;
} sections_t;

static bool wanted(const sections_t *s, int cat)
{
    if (s->req->n_categories == 0)
        return true;
    for (size_t i = 0; i < s->req->n_categories; i++)
        if ((int)s->req->categories[i] == cat)
            return true;
    return false;
}

static void add(sections_t *s, const char *name, int cat, json_t *arr)
{
    Hospitality__Privacy__V1__DataSection *d = hm_arena_alloc(s->a, sizeof *d);
    hospitality__privacy__v1__data_section__init(d);
    d->section = (char *)name;
    d->category = (Hospitality__Privacy__V1__DataCategory)cat;
    d->record_count = (int64_t)json_array_size(arr);
    char *txt = json_dumps(arr, JSON_COMPACT);
    d->records_json = hm_arena_strdup(s->a, txt ? txt : "[]");
    free(txt);
    json_decref(arr);
    s->resp->sections[s->resp->n_sections++] = d;
}

static json_t *ts_json(hm_arena_t *a, const Google__Protobuf__Timestamp *t)
{
    (void)a;
    return t ? json_integer(hm_timestamp_to_us(t) / 1000000) : json_null();
}

static json_t *profile_json(hm_arena_t *a, const Hospitality__Guest__V1__Profile *p)
{
    json_t *o = json_object();
    json_object_set_new(o, "guest_id", json_string(p->guest_id));
    json_object_set_new(o, "status", json_integer(p->status));
    json_object_set_new(o, "version", json_integer(p->version));
    json_object_set_new(o, "name", json_string(p->name));
    json_object_set_new(o, "email", json_string(p->email));
    json_object_set_new(o, "phone", json_string(p->phone));
    json_object_set_new(o, "avatar_url", json_string(p->avatar_url));
    json_object_set_new(o, "bio", json_string(p->bio));
    json_object_set_new(o, "city", json_string(p->location ? p->location->city : ""));
    json_object_set_new(o, "region", json_string(p->location ? p->location->region : ""));
    json_object_set_new(o, "country_code",
                        json_string(p->location ? p->location->country_code : ""));
    if (p->location && p->location->point) {
        json_object_set_new(o, "latitude", json_real(p->location->point->latitude));
        json_object_set_new(o, "longitude", json_real(p->location->point->longitude));
    }
    json_object_set_new(o, "language", json_string(p->language));
    json_object_set_new(o, "time_zone", json_string(p->time_zone));
    json_object_set_new(o, "theme", json_integer(p->theme));
    json_object_set_new(o, "created_at_epoch", ts_json(a, p->created_at));
    json_object_set_new(o, "updated_at_epoch", ts_json(a, p->updated_at));
    return o;
}

/* Sections whose rows carry no encrypted data come straight from SQL as JSON. */
static const hm_stmt_t st_json_merges = {
    "gs_merges",
    "SELECT coalesce(json_agg(x ORDER BY x.merged_at), '[]')::text FROM (SELECT merge_id, "
    "surviving_guest_id, merged_guest_ids, rule_id, reason, merged_at, interactions_moved, "
    "identifiers_moved FROM guest_merges WHERE surviving_guest_id = $1 OR merged_guest_ids @> "
    "ARRAY[$1::uuid]) x",
    1};
static const hm_stmt_t st_json_prefs = {
    "gs_prefs",
    "SELECT coalesce(json_agg(x ORDER BY x.version), '[]')::text FROM (SELECT version, prefs, "
    "changed_fields, changed_at FROM guest_preferences WHERE guest_id = $1) x",
    1};
static const hm_stmt_t st_json_implicit = {
    "gs_implicit",
    "SELECT coalesce(json_agg(x ORDER BY x.key, x.value), '[]')::text FROM (SELECT key, value, "
    "confidence, source, updated_at FROM guest_implicit_preferences WHERE guest_id = $1) x",
    1};
static const hm_stmt_t st_json_interactions = {
    "gs_interactions",
    "SELECT coalesce(json_agg(x ORDER BY x.occurred_at), '[]')::text FROM (SELECT "
    "interaction_id, type, occurred_at, recorded_at, venue_id, item_id, category, booking_id, "
    "order_id, amount_minor, currency, search_query, search_filters, rating, app, session_id, "
    "platform, page, referrer, metadata FROM interactions WHERE guest_id = $1) x",
    1};
static const hm_stmt_t st_json_signals = {
    "gs_signals",
    "SELECT coalesce(json_agg(x), '[]')::text FROM (SELECT s.*, (SELECT json_agg(a) FROM "
    "guest_category_affinity a WHERE a.guest_id = s.guest_id) AS category_affinity FROM "
    "guest_signals s WHERE s.guest_id = $1) x",
    1};
static const hm_stmt_t st_json_segments = {
    "gs_segments",
    "SELECT coalesce(json_agg(x ORDER BY x.segment_id), '[]')::text FROM (SELECT segment_id, "
    "reason, rule_version, since FROM guest_segments WHERE guest_id = $1) x",
    1};
static const hm_stmt_t st_json_consents = {
    "gs_consents",
    "SELECT coalesce(json_agg(x ORDER BY x.purpose), '[]')::text FROM (SELECT purpose, status, "
    "version, expires_at, updated_at FROM guest_consents WHERE guest_id = $1) x",
    1};
static const hm_stmt_t st_json_reads = {
    "gs_reads",
    "SELECT coalesce(json_agg(x ORDER BY x.at), '[]')::text FROM (SELECT actor_type, actor_id, "
    "method, at FROM pii_access_log WHERE guest_id = $1) x",
    1};

static int sql_section(const gd_env_t *e, sections_t *s, const hm_stmt_t *st, const char *guest,
                       const char *name, int cat)
{
    PGresult *r;
    int rc = gd_q(e, st, &r, guest);
    if (rc)
        return rc;
    json_t *arr = json_loads(gd_str(r, 0, 0), 0, NULL);
    add(s, name, cat, arr ? arr : json_array());
    return 0;
}

GD_HANDLER(guest_export_subject)
{
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__export_subject_data_response__init(resp);
    resp->participant = "guestd";
    resp->sections = hm_arena_alloc(a, 16 * sizeof(void *));
    sections_t s = {resp, req, a};
    const char *g = req->guest_id;
    int rc = 0;
    if (wanted(&s, CAT(PROFILE))) {
        guest_profile_t *p;
        json_t *arr = json_array();
        rc = guest_store_get(&e, g, &p);
        if (rc == 0)
            json_array_append_new(arr, profile_json(a, p));
        else if (rc != HM_ENOTFOUND) {
            json_decref(arr);
            return hm_call_fail(call, rc, "export profile");
        }
        add(&s, "profile", CAT(PROFILE), arr);
        Hospitality__Guest__V1__ProfileVersion **v;
        size_t nv;
        if ((rc = guest_store_history(&e, g, 10000, 0, &v, &nv)) != 0)
            return hm_call_fail(call, rc, "export history");
        arr = json_array();
        for (size_t i = 0; i < nv; i++) {
            json_t *o = profile_json(a, v[i]->profile);
            json_t *ch = json_array();
            for (size_t k = 0; k < v[i]->changed_fields->n_paths; k++)
                json_array_append_new(ch, json_string(v[i]->changed_fields->paths[k]));
            json_object_set_new(o, "changed_fields", ch);
            json_object_set_new(o, "changed_at_epoch", ts_json(a, v[i]->changed_at));
            json_array_append_new(arr, o);
        }
        add(&s, "profile_history", CAT(PROFILE), arr);
        Hospitality__Guest__V1__Identifier **ids;
        size_t ni;
        if ((rc = guest_list_identifiers(&e, g, &ids, &ni)) != 0)
            return hm_call_fail(call, rc, "export identifiers");
        arr = json_array();
        for (size_t i = 0; i < ni; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "type", json_integer(ids[i]->type));
            json_object_set_new(o, "app", json_integer(ids[i]->app));
            json_object_set_new(o, "value", json_string(ids[i]->value));
            json_object_set_new(o, "verified", json_boolean(ids[i]->verified));
            json_object_set_new(o, "first_seen_epoch", ts_json(a, ids[i]->first_seen_at));
            json_array_append_new(arr, o);
        }
        add(&s, "identifiers", CAT(PROFILE), arr);
        arr = json_array();
        if ((rc = guest_export_apps(&e, g, arr)) != 0) {
            json_decref(arr);
            return hm_call_fail(call, rc, "export app profiles");
        }
        add(&s, "app_profiles", CAT(PROFILE), arr);
        if ((rc = sql_section(&e, &s, &st_json_merges, g, "merges", CAT(PROFILE))) != 0 ||
            (rc = sql_section(&e, &s, &st_json_reads, g, "personal_data_reads", CAT(PROFILE))) != 0)
            return hm_call_fail(call, rc, "export");
    }
    if (wanted(&s, CAT(PREFERENCES)) &&
        ((rc = sql_section(&e, &s, &st_json_prefs, g, "preferences", CAT(PREFERENCES))) != 0 ||
         (rc = sql_section(&e, &s, &st_json_implicit, g, "implicit_preferences",
                           CAT(PREFERENCES))) != 0))
        return hm_call_fail(call, rc, "export");
    if (wanted(&s, CAT(INTERACTIONS)) &&
        ((rc = sql_section(&e, &s, &st_json_interactions, g, "interactions", CAT(INTERACTIONS))) !=
             0 ||
         (rc = sql_section(&e, &s, &st_json_signals, g, "behavior_signals", CAT(INTERACTIONS))) !=
             0 ||
         (rc = sql_section(&e, &s, &st_json_segments, g, "segments", CAT(INTERACTIONS))) != 0))
        return hm_call_fail(call, rc, "export");
    if (wanted(&s, CAT(CONSENTS)) &&
        (rc = sql_section(&e, &s, &st_json_consents, g, "consent_projection", CAT(CONSENTS))) != 0)
        return hm_call_fail(call, rc, "export");
    resp->exported_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_receipt = {"gs_receipt",
                                     "SELECT receipt FROM guest_erasures WHERE request_id = $1", 1};
static const hm_stmt_t st_keep = {
    "gs_keep",
    "INSERT INTO guest_erasures (request_id, guest_hash, receipt) VALUES ($1, "
    "encode(sha256(convert_to($2::uuid::text, 'UTF8')), 'hex'), $3)",
    3};
/* One statement per table: the subject and every guest merged into it, recursively. */
#define SUBJECTS                                                                                   \
    "WITH RECURSIVE s(id) AS (SELECT $1::uuid UNION SELECT g.guest_id FROM guests g JOIN s ON "    \
    "g.merged_into = s.id) "
static const struct purge {
    const char *section;
    int cat;
    hm_stmt_t st;
} purges[] = {
    {"interactions",
     CAT(INTERACTIONS),
     {"gs_del_ix", SUBJECTS "DELETE FROM interactions WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"identifiers",
     CAT(PROFILE),
     {"gs_del_ids", SUBJECTS "DELETE FROM guest_identifiers WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"preferences",
     CAT(PREFERENCES),
     {"gs_del_prefs", SUBJECTS "DELETE FROM guest_preferences WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"implicit_preferences",
     CAT(PREFERENCES),
     {"gs_del_impl",
      SUBJECTS "DELETE FROM guest_implicit_preferences WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"profile_history",
     CAT(PROFILE),
     {"gs_del_hist",
      SUBJECTS "DELETE FROM guest_profile_versions WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"app_profiles",
     CAT(PROFILE),
     {"gs_del_apps", SUBJECTS "DELETE FROM guest_app_profiles WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"behavior_signals",
     CAT(INTERACTIONS),
     {"gs_del_sig", SUBJECTS "DELETE FROM guest_signals WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"category_affinity",
     CAT(INTERACTIONS),
     {"gs_del_aff",
      SUBJECTS "DELETE FROM guest_category_affinity WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"time_slots",
     CAT(INTERACTIONS),
     {"gs_del_slots", SUBJECTS "DELETE FROM guest_time_slots WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"segments",
     CAT(INTERACTIONS),
     {"gs_del_seg", SUBJECTS "DELETE FROM guest_segments WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"segment_state",
     CAT(INTERACTIONS),
     {"gs_del_segst",
      SUBJECTS "DELETE FROM guest_segment_state WHERE guest_id IN (SELECT id FROM s)", 1}},
    {"consent_projection",
     CAT(CONSENTS),
     {"gs_del_consent", SUBJECTS "DELETE FROM guest_consents WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"personal_data_reads",
     CAT(PROFILE),
     {"gs_del_reads", SUBJECTS "DELETE FROM pii_access_log WHERE guest_id IN (SELECT id FROM s)",
      1}},
    {"merges",
     CAT(PROFILE),
     {"gs_del_merges",
      SUBJECTS "DELETE FROM guest_merges WHERE surviving_guest_id IN (SELECT id FROM s) OR "
               "merged_guest_ids && ARRAY(SELECT id FROM s)",
      1}},
    {"merged_profiles_unlinked",
     CAT(PROFILE),
     {"gs_unlink",
      SUBJECTS "UPDATE guests SET merged_into = NULL WHERE guest_id IN (SELECT id FROM s) AND "
               "merged_into IS NOT NULL",
      1}},
    {"profile", CAT(PROFILE), {"gs_del_guest", "DELETE FROM guests WHERE guest_id = $1", 1}},
};
#define NPURGE (sizeof purges / sizeof *purges)

/* Merged profiles were unlinked above; they are found again by their merge records before
 * those go, so collect them first. */
static const hm_stmt_t st_merged_ids = {
    "gs_merged_ids", SUBJECTS "SELECT coalesce(array_agg(id)::text, '{}') FROM s WHERE id <> $1",
    1};
static const hm_stmt_t st_del_merged = {"gs_del_merged",
                                        "DELETE FROM guests WHERE guest_id = ANY($1::uuid[])", 1};

typedef struct er_tx {
    hm_call_t *call;
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req;
    Hospitality__Privacy__V1__ErasureReceipt *receipt;
} er_tx_t;

static int er_fn(hm_db_t *db, void *arg)
{
    er_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    PGresult *r;
    int rc = gd_q(&e, &st_receipt, &r, t->req->request_id);
    if (rc)
        return rc;
    if (PQntuples(r) == 1) {
        unsigned char *blob;
        size_t len;
        if (hm_db_get_bytea(r, 0, 0, a, &blob, &len) != 0)
            return HM_EINTERNAL;
        t->receipt = (void *)protobuf_c_message_unpack(
            &hospitality__privacy__v1__erasure_receipt__descriptor, hm_arena_pb(a), len, blob);
        if (t->receipt) /* kept without the guest id */
            t->receipt->guest_id = t->req->guest_id;
        return t->receipt ? 0 : HM_EINTERNAL;
    }
    Hospitality__Privacy__V1__ErasureReceipt *rc_ = hm_arena_alloc(a, sizeof *rc_);
    hospitality__privacy__v1__erasure_receipt__init(rc_);
    rc_->receipt_id = hm_arena_alloc(a, HM_UUID_LEN + 1);
    hm_uuid_v4(rc_->receipt_id);
    rc_->request_id = t->req->request_id;
    rc_->participant = "guestd";
    rc_->deleted = hm_arena_alloc(a, sizeof(void *) * (NPURGE + 1));
    if ((rc = gd_q(&e, &st_merged_ids, &r, t->req->guest_id)) != 0)
        return rc;
    const char *merged = hm_arena_strdup(a, gd_str(r, 0, 0));
    for (size_t i = 0; i < NPURGE; i++) {
        if ((rc = gd_q(&e, &purges[i].st, &r, t->req->guest_id)) != 0)
            return rc;
        if (strcmp(purges[i].section, "merged_profiles_unlinked") == 0)
            continue;
        Hospitality__Privacy__V1__SectionCount *c = hm_arena_alloc(a, sizeof *c);
        hospitality__privacy__v1__section_count__init(c);
        c->section = (char *)purges[i].section;
        c->category = (Hospitality__Privacy__V1__DataCategory)purges[i].cat;
        c->count = atoll(PQcmdTuples(r));
        if (strcmp(purges[i].section, "profile") == 0) {
            if ((rc = gd_q(&e, &st_del_merged, &r, merged)) != 0)
                return rc;
            c->count += atoll(PQcmdTuples(r));
        }
        rc_->deleted[rc_->n_deleted++] = c;
    }
    rc_->completed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    /* packed without the guest id (kept by its hash only); the answer carries it */
    size_t n = protobuf_c_message_get_packed_size(&rc_->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&rc_->base, buf);
    rc_->guest_id = t->req->guest_id;
    const char *kp[3] = {t->req->request_id, t->req->guest_id, (const char *)buf};
    int lens[3] = {0, 0, (int)n}, fmts[3] = {0, 0, 1};
    if ((rc = hm_db_exec_arena(db, a, &st_keep, kp, lens, fmts, &r)) != 0)
        return rc;
    t->receipt = rc_;
    return 0;
}

/* Drops the guest's cached contexts (every version and venue). */
static void forget_cache(hm_call_t *call, const char *guest)
{
    hm_arena_t *a = &call->arena;
    char *pattern = hm_arena_printf(a, "%s*", hm_cache_key(a, "guestd", "ctx", guest));
    const char *cursor = "0";
    for (int round = 0; round < 1000; round++) {
        redisReply *r =
            hm_cache_command(call->cache, a, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
            return;
        cursor = hm_arena_strdup(a, r->element[0]->str ? r->element[0]->str : "0");
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            hm_cache_del(call->cache, &k, 1);
        }
        if (strcmp(cursor, "0") == 0)
            return;
    }
}

GD_HANDLER(guest_erase_subject)
{
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (!*req->request_id || strlen(req->request_id) > 128 || !hm_utf8_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "required, at most 128 characters");
    er_tx_t t = {call, req, NULL};
    int rc = hm_db_tx(call->db, er_fn, &t, HM_DB_READ_COMMITTED);
    if (rc)
        return hm_call_fail(call, rc, "erase");
    forget_cache(call, req->guest_id);
    Hospitality__Privacy__V1__EraseSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__erase_subject_data_response__init(resp);
    resp->receipt = t.receipt;
    *out = &resp->base;
    return HM_STATUS_OK;
}
