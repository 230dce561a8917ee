/*
 * subject.c - hospitality.privacy.v1.DataSubjectService for recommenderd (privacyd drives it).
 *
 * Export: the guest's tracked events, interests, features (counts and affinities),
 * recommendation history and feedback, each a JSON array of flat objects. Erase: events,
 * interests, features and affinities are deleted; served lists and feedback are deleted
 * (ERASURE_MODE_DELETE) or unlinked from the guest and kept for the per-strategy statistics
 * (ERASURE_MODE_ANONYMIZE); the guest's Redis keys (consent, features, cache generation and
 * every cached list) are deleted. The model file holds no per-guest rows (guests are folded in
 * at query time), so no model factors outlive the erasure; the guest is recorded in
 * rc_erased_guests so that tools/rectrain never trains on them even from a stale copy.
 * Aggregate popularity (no guest id) is kept. Idempotent by request_id (the receipt is kept).
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "hm/suppress.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "marketing.h"
#include "rec.h"

#define CAT(x)   HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_##x
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

typedef struct section {
    const char *name;
    int category;
    hm_stmt_t stmt;
} section_t;

/* Each query returns one JSON object per row (flat), built by Postgres. */
static const section_t sections[] = {
    {"tracked_events",
     CAT(INTERACTIONS),
     {"rc_x_events",
      "SELECT json_build_object('event_id', event_id, 'type', type, 'item_id', item_id, "
      "'occurred_at', " ISO("occurred_at") ", 'received_at', " ISO(
          "received_at") ", 'rating', rating, 'weight', weight, 'source', source)::text FROM "
                         "rc_events WHERE guest_id = $1::uuid ORDER BY occurred_at, event_id",
      1}},
    {"interests",
     CAT(INTERACTIONS),
     {"rc_x_interests",
      "SELECT json_build_object('category', category, 'value', value, 'confidence', confidence, "
      "'source', source, 'updated_at', " ISO("updated_at") ")::text FROM rc_interests WHERE "
                                                           "guest_id = $1::uuid ORDER BY 1",
      1}},
    {"features",
     CAT(RECOMMENDATIONS),
     {"rc_x_features",
      "SELECT json_build_object('version', version, 'computed_at', " ISO(
          "computed_at") ", 'event_counts', counts::text, 'last_event_at', " ISO("last_event") ", "
                                                                                               "'ra"
                                                                                               "tin"
                                                                                               "g_"
                                                                                               "sum"
                                                                                               "', "
                                                                                               "rat"
                                                                                               "ing"
                                                                                               "_su"
                                                                                               "m, "
                                                                                               "'ra"
                                                                                               "tin"
                                                                                               "g_"
                                                                                               "cou"
                                                                                               "nt'"
                                                                                               ", "
                                                                                               "rat"
                                                                                               "ing"
                                                                                               "_co"
                                                                                               "unt"
                                                                                               ")::"
                                                                                               "tex"
                                                                                               "t "
                                                                                               "FRO"
                                                                                               "M "
                                                                                               "rc_"
                                                                                               "fea"
                                                                                               "tur"
                                                                                               "es "
                                                                                               "WHE"
                                                                                               "RE "
                                                                                               "gue"
                                                                                               "st_"
                                                                                               "id "
                                                                                               "= "
                                                                                               "$1:"
                                                                                               ":uu"
                                                                                               "id",
      1}},
    {"affinities",
     CAT(RECOMMENDATIONS),
     {"rc_x_affinity",
      "SELECT json_build_object('key', key, 'score', score, 'updated_at', " ISO(
          "updated_at") ")::text FROM rc_affinity WHERE guest_id = $1::uuid ORDER BY key",
      1}},
    {"recommendation_history",
     CAT(RECOMMENDATIONS),
     {"rc_x_history",
      "SELECT json_build_object('recommendation_id', recommendation_id, 'kind', kind, "
      "'strategy', strategy, 'model_version', model_version, 'personalized', personalized, "
      "'app', app, 'served_at', " ISO("served_at") ")::text FROM rc_recommendations WHERE "
                                                   "guest_id = $1::uuid ORDER BY served_at",
      1}},
    {"feedback",
     CAT(RECOMMENDATIONS),
     {"rc_x_feedback",
      "SELECT json_build_object('feedback_id', feedback_id, 'recommendation_id', "
      "recommendation_id, 'item_id', item_id, 'type', type, 'position', position, 'offer_id', "
      "offer_id, 'strategy', strategy, 'model_version', model_version, 'value_minor', "
      "value_minor, 'currency', currency, 'occurred_at', " ISO(
          "occurred_at") ")::text FROM rc_feedback WHERE guest_id = $1::uuid ORDER BY "
                         "occurred_at",
      1}},
    /* marketing (marketing.c) */
    {"marketing_emails",
     CAT(RECOMMENDATIONS),
     {"mk_x_emails",
      "SELECT json_build_object('email_id', email_id, 'template_id', template_id, "
      "'template_version', template_version, 'variant_id', variant_id, 'campaign_id', "
      "campaign_id, 'recommendation_id', recommendation_id, 'generated_at', " ISO(
          "generated_at") ")::text FROM mk_emails WHERE guest_id = $1::uuid ORDER BY generated_at",
      1}},
    {"ab_assignments",
     CAT(RECOMMENDATIONS),
     {"mk_x_assign",
      "SELECT json_build_object('campaign_id', campaign_id, 'template_id', template_id, "
      "'variant_id', variant_id, 'assigned_at', " ISO(
          "assigned_at") ")::text FROM mk_assignments WHERE guest_id = $1::uuid ORDER BY 1",
      1}},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

REC_HANDLER(rec_export_subject)
{
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!req->guest_id || !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    rec_history_flush(call, call->db, a, true);
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__export_subject_data_response__init(resp);
    resp->participant = "recommenderd";
    resp->exported_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    resp->sections = hm_arena_alloc(a, NSECTIONS * sizeof(void *));
    const char *p[1] = {req->guest_id};
    for (size_t s = 0; s < NSECTIONS; s++) {
        bool want = req->n_categories == 0;
        for (size_t i = 0; i < req->n_categories; i++)
            want = want || (int)req->categories[i] == sections[s].category;
        if (!want)
            continue;
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, a, &sections[s].stmt, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "export");
        json_t *arr = json_array();
        for (int i = 0; i < PQntuples(r); i++) {
            json_t *o = json_loads(rec_str(r, i, 0), 0, NULL);
            if (o)
                json_array_append_new(arr, o);
        }
        char *dump = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        Hospitality__Privacy__V1__DataSection *sec = hm_arena_alloc(a, sizeof *sec);
        hospitality__privacy__v1__data_section__init(sec);
        sec->section = (char *)sections[s].name;
        sec->category = sections[s].category;
        sec->record_count = PQntuples(r);
        sec->records_json = hm_arena_strdup(a, dump ? dump : "[]");
        free(dump);
        resp->sections[resp->n_sections++] = sec;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_receipt = {"rc_receipt",
                                     "SELECT receipt FROM rc_erasures WHERE request_id = $1", 1};
static const hm_stmt_t st_del[] = {
    {"rc_e_events", "DELETE FROM rc_events WHERE guest_id = $1::uuid RETURNING 1", 1},
    {"rc_e_interests", "DELETE FROM rc_interests WHERE guest_id = $1::uuid RETURNING 1", 1},
    {"rc_e_features", "DELETE FROM rc_features WHERE guest_id = $1::uuid RETURNING 1", 1},
    {"rc_e_affinity", "DELETE FROM rc_affinity WHERE guest_id = $1::uuid RETURNING 1", 1},
};
static const char *const del_names[] = {"tracked_events", "interests", "features", "affinities"};
static const hm_stmt_t st_lists_del[] = {
    {"rc_e_hist_del", "DELETE FROM rc_recommendations WHERE guest_id = $1::uuid RETURNING 1", 1},
    {"rc_e_fb_del", "DELETE FROM rc_feedback WHERE guest_id = $1::uuid RETURNING 1", 1},
};
static const hm_stmt_t st_lists_anon[] = {
    {"rc_e_hist_anon",
     "UPDATE rc_recommendations SET guest_id = NULL, record = '' WHERE guest_id = $1::uuid "
     "RETURNING 1",
     1},
    {"rc_e_fb_anon", "UPDATE rc_feedback SET guest_id = NULL WHERE guest_id = $1::uuid RETURNING 1",
     1},
};
static const char *const list_names[] = {"recommendation_history", "feedback"};
static const hm_stmt_t st_erased = {
    "rc_e_mark", "INSERT INTO rc_erased_guests (guest_hash) VALUES ($1) ON CONFLICT DO NOTHING", 1};
static const hm_stmt_t st_keep_receipt = {
    "rc_keep_receipt",
    "INSERT INTO rc_erasures (request_id, guest_hash, receipt) VALUES ($1, $2, $3)", 3};

typedef struct erase_tx {
    hm_call_t *call;
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req;
    Hospitality__Privacy__V1__ErasureReceipt *receipt;
} erase_tx_t;

Hospitality__Privacy__V1__SectionCount *rec_section_count(hm_arena_t *a, const char *section,
                                                          int cat, int64_t n)
{
    Hospitality__Privacy__V1__SectionCount *c = hm_arena_alloc(a, sizeof *c);
    hospitality__privacy__v1__section_count__init(c);
    c->section = (char *)section;
    c->category = cat;
    c->count = n;
    return c;
}

static int erase_fn(hm_db_t *db, void *arg)
{
    erase_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    const char *rq[1] = {t->req->request_id};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_receipt, rq, NULL, NULL, &r);
    if (rc != 0)
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
    rc_->deleted = hm_arena_alloc(a, 8 * sizeof(void *));
    rc_->anonymized = hm_arena_alloc(a, 4 * sizeof(void *));
    const char *p[1] = {t->req->guest_id};
    for (size_t i = 0; i < 4; i++) {
        if ((rc = hm_db_exec_arena(db, a, &st_del[i], p, NULL, NULL, &r)) != 0)
            return rc;
        rc_->deleted[rc_->n_deleted++] = rec_section_count(
            a, del_names[i], i < 2 ? CAT(INTERACTIONS) : CAT(RECOMMENDATIONS), PQntuples(r));
    }
    bool anon = t->req->mode == HOSPITALITY__PRIVACY__V1__ERASURE_MODE__ERASURE_MODE_ANONYMIZE;
    for (size_t i = 0; i < 2; i++) {
        if ((rc = hm_db_exec_arena(db, a, anon ? &st_lists_anon[i] : &st_lists_del[i], p, NULL,
                                   NULL, &r)) != 0)
            return rc;
        Hospitality__Privacy__V1__SectionCount *c =
            rec_section_count(a, list_names[i], CAT(RECOMMENDATIONS), PQntuples(r));
        if (anon)
            rc_->anonymized[rc_->n_anonymized++] = c;
        else
            rc_->deleted[rc_->n_deleted++] = c;
    }
    if ((rc = mkt_erase(db, a, t->req->guest_id, anon, rc_)) != 0)
        return rc;
    char *hash = hm_arena_alloc(a, 65);
    hm_subject_hash(t->req->guest_id, hash);
    const char *hp[1] = {hash};
    if ((rc = hm_db_exec_arena(db, a, &st_erased, hp, NULL, NULL, NULL)) != 0)
        return rc;
    rc_->receipt_id = hm_arena_alloc(a, HM_UUID_LEN + 1);
    hm_uuid_v4(rc_->receipt_id);
    rc_->request_id = t->req->request_id;
    rc_->guest_id = "";
    rc_->participant = "recommenderd";
    rc_->completed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    /* the stored receipt holds no guest id (it is the request's on a repeat); the guest is
     * known here only by the SHA-256 of the id, like the erasure suppression list */
    size_t n = protobuf_c_message_get_packed_size(&rc_->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&rc_->base, buf);
    rc_->guest_id = t->req->guest_id;
    const char *kp[3] = {t->req->request_id, hash, (const char *)buf};
    int lens[3] = {0, 0, (int)n}, fmts[3] = {0, 0, 1};
    if ((rc = hm_db_exec(db, &st_keep_receipt, kp, lens, fmts, NULL)) != 0)
        return rc;
    t->receipt = rc_;
    return 0;
}

/* Deletes the guest's cached lists (hm:recommenderd:rec:<guest>:*) by SCAN. */
static void drop_lists(hm_call_t *call, const char *guest)
{
    const char *pattern = hm_arena_printf(&call->arena, "hm:recommenderd:rec:%s:*", guest);
    char cursor[32] = "0";
    for (int rounds = 0; rounds < 1000; rounds++) {
        redisReply *r = hm_cache_command(call->cache, &call->arena, "SCAN %s MATCH %s COUNT 1000",
                                         cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
            return;
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k[1] = {keys->element[i]->str};
            hm_cache_del(call->cache, k, 1);
        }
        if (strcmp(cursor, "0") == 0)
            return;
    }
}

REC_HANDLER(rec_erase_subject)
{
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req = (const void *)in;
    if (!req->guest_id || !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (!req->request_id || !*req->request_id || strlen(req->request_id) > 128 ||
        !hm_utf8_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id is required");
    rec_history_flush(call, call->db, &call->arena, true); /* then erased with the rest */
    erase_tx_t t = {call, req, NULL};
    int rc = hm_db_tx(call->db, erase_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "erase");
    rec_forget_cache(call->cache, &call->arena, req->guest_id);
    drop_lists(call, req->guest_id);
    Hospitality__Privacy__V1__EraseSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__erase_subject_data_response__init(resp);
    resp->receipt = t.receipt;
    *out = &resp->base;
    return HM_STATUS_OK;
}
