/*
 * subject.c - hospitality.privacy.v1.DataSubjectService for privacyd's own records (privacyd
 * drives it through hm_peer_call like any other participant).
 *
 * Export: the guest's current consents, their consent history and their export requests other
 * than the one asking (the category CONSENTS). Erasure requests are not a section: they are the
 * record of the erasure itself, kept under the subject's hash once it completes. Erase: consent
 * state and history and export requests (with their stored exports) are deleted, in both modes
 * (consent records have no statistical use), and the cached consent goes. Idempotent by request_id
 * (the receipt is kept without the subject's id).
 */
#include <string.h>

#include "hm/id.h"
#include "pv.h"

#define CAT HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_CONSENTS

static const struct {
    const char *section;
    hm_stmt_t st; /* static: the connection remembers prepared statements by address */
} sections[] = {
    {"consents",
     {"pv_x_consents",
      "SELECT coalesce(json_agg(json_build_object('purpose', purpose, 'status', status, 'source', "
      "source, 'notice_version', notice_version, 'recorded_at', pv_iso(recorded_at), "
      "'expires_at', pv_iso(expires_at), 'recorded_by', actor_id, 'version', version) ORDER BY "
      "purpose), '[]')::text, count(*) FROM pv_consents WHERE guest_id = $1::uuid",
      1}},
    {"consent_history",
     {"pv_x_history",
      "SELECT coalesce(json_agg(json_build_object('purpose', purpose, 'status', status, 'source', "
      "source, 'notice_version', notice_version, 'recorded_at', pv_iso(recorded_at), "
      "'expires_at', pv_iso(expires_at), 'recorded_by', actor_id, 'version', version) ORDER BY "
      "id), '[]')::text, count(*) FROM pv_consent_history WHERE guest_id = $1::uuid",
      1}},
    {"privacy_requests",
     {"pv_x_requests",
      "SELECT coalesce(json_agg(json_build_object('request_id', request_id, 'type', 'export', "
      "'status', status, 'jurisdiction', jurisdiction, 'received_at', pv_iso(received_at), "
      "'finished_at', pv_iso(finished_at), 'due_at', pv_iso(due_at)) ORDER BY received_at), "
      "'[]')::text, count(*) FROM pv_requests WHERE guest_id = $1::uuid AND type = 1 AND "
      "request_id::text <> $2",
      2}},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

PV_HANDLER(pv_export_subject)
{
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    bool want = req->n_categories == 0;
    for (size_t i = 0; i < req->n_categories; i++)
        want = want || req->categories[i] == CAT;
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__export_subject_data_response__init(resp);
    resp->participant = "privacyd";
    resp->exported_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    resp->sections = hm_arena_alloc(a, NSECTIONS * sizeof(void *));
    for (size_t i = 0; want && i < NSECTIONS; i++) {
        /* A request never lists itself: an export run after an erasure must come back empty. */
        const char *p[2] = {req->guest_id, req->request_id ? req->request_id : ""};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, a, &sections[i].st, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "export");
        Hospitality__Privacy__V1__DataSection *s = hm_arena_alloc(a, sizeof *s);
        hospitality__privacy__v1__data_section__init(s);
        s->section = (char *)sections[i].section;
        s->category = CAT;
        s->records_json = hm_arena_strdup(a, pv_str(r, 0, 0));
        s->record_count = pv_i64(r, 0, 1);
        resp->sections[resp->n_sections++] = s;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_receipt = {
    "pv_own_receipt", "SELECT receipt FROM pv_own_erasures WHERE request_id = $1", 1};
static const hm_stmt_t st_erase = {
    "pv_own_erase",
    "WITH c AS (SELECT count(*) AS n FROM pv_consents WHERE guest_id = $1::uuid), h AS (SELECT "
    "count(*) AS n FROM pv_consent_history WHERE guest_id = $1::uuid), g AS (DELETE FROM "
    "pv_consent_guests WHERE guest_id = $1::uuid RETURNING 1), r AS (DELETE FROM pv_requests "
    "WHERE guest_id = $1::uuid AND type = 1 RETURNING 1) SELECT c.n, h.n, (SELECT count(*) FROM "
    "r), (SELECT count(*) FROM g) FROM c, h",
    1};
static const hm_stmt_t st_keep = {
    "pv_own_keep", "INSERT INTO pv_own_erasures (request_id, receipt) VALUES ($1, $2::bytea)", 2};

typedef struct erase_tx {
    hm_call_t *call;
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req;
    Hospitality__Privacy__V1__ErasureReceipt *receipt;
} erase_tx_t;

static Hospitality__Privacy__V1__SectionCount *count(hm_arena_t *a, const char *section, int64_t n)
{
    Hospitality__Privacy__V1__SectionCount *c = hm_arena_alloc(a, sizeof *c);
    hospitality__privacy__v1__section_count__init(c);
    c->section = (char *)section;
    c->category = CAT;
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
        if (!t->receipt)
            return HM_EINTERNAL;
        t->receipt->guest_id = (char *)t->req->guest_id;
        return 0;
    }
    const char *p[1] = {t->req->guest_id};
    if ((rc = hm_db_exec_arena(db, a, &st_erase, p, NULL, NULL, &r)) != 0)
        return rc;
    Hospitality__Privacy__V1__ErasureReceipt *rc_ = hm_arena_alloc(a, sizeof *rc_);
    hospitality__privacy__v1__erasure_receipt__init(rc_);
    rc_->receipt_id = hm_arena_alloc(a, HM_UUID_LEN + 1);
    hm_uuid_v4(rc_->receipt_id);
    rc_->request_id = t->req->request_id;
    rc_->guest_id = t->req->guest_id;
    rc_->participant = "privacyd";
    rc_->deleted = hm_arena_alloc(a, 3 * sizeof(void *));
    rc_->deleted[rc_->n_deleted++] = count(a, "consents", pv_i64(r, 0, 0));
    rc_->deleted[rc_->n_deleted++] = count(a, "consent_history", pv_i64(r, 0, 1));
    rc_->deleted[rc_->n_deleted++] = count(a, "privacy_requests", pv_i64(r, 0, 2));
    rc_->completed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    /* Kept without the subject's id (a replay puts the asked-for id back). */
    rc_->guest_id = "";
    size_t n = protobuf_c_message_get_packed_size(&rc_->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&rc_->base, buf);
    rc_->guest_id = (char *)t->req->guest_id;
    const char *kp[2] = {t->req->request_id, (const char *)buf};
    int lens[2] = {0, (int)n}, fmts[2] = {0, 1};
    if ((rc = hm_db_exec(db, &st_keep, kp, lens, fmts, NULL)) != 0)
        return rc;
    t->receipt = rc_;
    return 0;
}

PV_HANDLER(pv_erase_subject)
{
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req = (const void *)in;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (!req->request_id || !*req->request_id || strlen(req->request_id) > 128 ||
        !hm_utf8_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id is required");
    erase_tx_t t = {call, req, NULL};
    int rc = hm_db_tx(call->db, erase_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "erase");
    pv_consent_tombstone(call->cache, &call->arena, req->guest_id);
    Hospitality__Privacy__V1__EraseSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__erase_subject_data_response__init(resp);
    resp->receipt = t.receipt;
    *out = &resp->base;
    return HM_STATUS_OK;
}
