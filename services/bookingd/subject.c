/*
 * subject.c - hospitality.privacy.v1.DataSubjectService for bookingd (privacyd drives it).
 *
 * Export: the guest's bookings (personal data decrypted) and their status history, each a JSON
 * array of flat objects. Erase: bookings are anonymized, not deleted, because accounting needs
 * them (reference, venue, dates, amounts, payment intent, status): name, email, phone, special
 * requests, internal notes and metadata are wiped, the guest id is replaced by a random one
 * (the booking no longer points at the person), history entries the guest made lose the actor
 * id, and the guest's idempotency records (their stored responses hold personal data) and
 * cached reference look-ups are deleted. Idempotent by request_id (the receipt is kept).
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "bk.h"
#include "hm/id.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

static const hm_stmt_t st_export = {"bk_export",
                                    "SELECT " BK_COLS
                                    " FROM bk_bookings WHERE guest_id = $1::uuid AND NOT "
                                    "provisional ORDER BY created_at",
                                    1};
static const hm_stmt_t st_export_history = {
    "bk_export_history",
    "SELECT h.booking_id::text, h.from_status, h.to_status, h.actor_type, h.actor_id, h.reason, "
    "to_char(h.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM "
    "bk_status_history h JOIN bk_bookings b USING (booking_id) WHERE b.guest_id = $1::uuid AND "
    "NOT b.provisional ORDER BY h.id",
    1};

static char *dumps(hm_arena_t *arena, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char *r = hm_arena_strdup(arena, s ? s : "[]");
    free(s);
    return r;
}

static char *ts_iso(hm_arena_t *a, const Google__Protobuf__Timestamp *t)
{
    return t ? bk_iso(a, hm_timestamp_to_us(t)) : "";
}

BK_HANDLER(bk_export_subject)
{
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req = (const void *)in;
    if (!req->guest_id || !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    bool want = req->n_categories == 0;
    for (size_t i = 0; i < req->n_categories; i++)
        want = want || req->categories[i] ==
                           HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_BOOKINGS;
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__export_subject_data_response__init(resp);
    resp->participant = "bookingd";
    resp->exported_at = hm_timestamp_from_us(&call->arena, hm_now_ms() * 1000);
    resp->sections = hm_arena_alloc(&call->arena, 2 * sizeof(void *));
    if (!want) {
        *out = &resp->base;
        return HM_STATUS_OK;
    }
    const char *p[1] = {req->guest_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_export, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "export");
    json_t *arr = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        bk_booking_t *b = bk_booking_from_row(&call->arena, call->crypto, r, i);
        if (!b) {
            json_decref(arr);
            return hm_call_fail(call, HM_ECRYPTO, "export");
        }
        json_t *o = json_object();
        json_object_set_new(o, "booking_id", json_string(b->booking_id));
        json_object_set_new(o, "booking_reference", json_string(b->booking_reference));
        json_object_set_new(o, "guest_id", json_string(b->guest_id));
        json_object_set_new(o, "guest_name", json_string(b->guest_name));
        json_object_set_new(o, "guest_email", json_string(b->guest_email));
        json_object_set_new(o, "guest_phone", json_string(b->guest_phone));
        json_object_set_new(o, "venue_id", json_string(b->venue_id));
        json_object_set_new(o, "venue_type", json_integer(b->venue_type));
        json_object_set_new(o, "inventory_item_id", json_string(b->inventory_item_id));
        json_object_set_new(o, "start_time", json_string(ts_iso(&call->arena, b->start_time)));
        json_object_set_new(o, "end_time", json_string(ts_iso(&call->arena, b->end_time)));
        json_object_set_new(o, "party_size", json_integer(b->party_size));
        json_object_set_new(o, "status", json_string(bk_status_name(b->status)));
        json_object_set_new(o, "total_price_minor", json_integer(b->total_price->amount_minor));
        json_object_set_new(o, "currency", json_string(b->total_price->currency));
        json_object_set_new(o, "special_requests", json_string(b->special_requests));
        json_object_set_new(o, "cancellation_reason", json_string(b->cancellation_reason));
        json_object_set_new(o, "created_at", json_string(ts_iso(&call->arena, b->created_at)));
        json_array_append_new(arr, o);
    }
    Hospitality__Privacy__V1__DataSection *s = hm_arena_alloc(&call->arena, sizeof *s);
    hospitality__privacy__v1__data_section__init(s);
    s->section = "bookings";
    s->category = HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_BOOKINGS;
    s->record_count = (int64_t)json_array_size(arr);
    s->records_json = dumps(&call->arena, arr);
    resp->sections[resp->n_sections++] = s;

    if ((rc = hm_db_exec_arena(call->db, &call->arena, &st_export_history, p, NULL, NULL, &r)) != 0)
        return hm_call_fail(call, rc, "export");
    arr = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "booking_id", json_string(hm_db_get(r, i, 0)));
        json_object_set_new(o, "from_status", json_string(bk_status_name((int)bk_i64(r, i, 1))));
        json_object_set_new(o, "to_status", json_string(bk_status_name((int)bk_i64(r, i, 2))));
        json_object_set_new(o, "actor_type", json_integer(bk_i64(r, i, 3)));
        json_object_set_new(o, "actor_id", json_string(hm_db_get(r, i, 4)));
        json_object_set_new(o, "reason", json_string(hm_db_get(r, i, 5)));
        json_object_set_new(o, "created_at", json_string(hm_db_get(r, i, 6)));
        json_array_append_new(arr, o);
    }
    s = hm_arena_alloc(&call->arena, sizeof *s);
    hospitality__privacy__v1__data_section__init(s);
    s->section = "booking_status_history";
    s->category = HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_BOOKINGS;
    s->record_count = (int64_t)json_array_size(arr);
    s->records_json = dumps(&call->arena, arr);
    resp->sections[resp->n_sections++] = s;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_receipt = {"bk_receipt",
                                     "SELECT receipt FROM bk_erasures WHERE request_id = $1", 1};
static const hm_stmt_t st_anon_history = {
    "bk_anon_history",
    "UPDATE bk_status_history h SET actor_id = '' FROM bk_bookings b WHERE h.booking_id = "
    "b.booking_id AND b.guest_id = $1::uuid AND h.actor_id = $1::text RETURNING 1",
    1};
static const hm_stmt_t st_anon = {
    "bk_anon",
    "UPDATE bk_bookings SET guest_id = gen_random_uuid(), guest_name = NULL, guest_email = NULL, "
    "guest_phone = NULL, special_requests = '', internal_notes = '', metadata = '{}', "
    "idempotency_key = '', anonymized_at = clock_timestamp(), updated_at = clock_timestamp() "
    "WHERE guest_id = $1::uuid RETURNING reference",
    1};
static const hm_stmt_t st_idem_forget = {
    "bk_idem_forget", "DELETE FROM bk_idempotency WHERE scope LIKE '%:' || $1 RETURNING 1", 1};
static const hm_stmt_t st_keep_receipt = {
    "bk_keep_receipt",
    "INSERT INTO bk_erasures (request_id, guest_hash, receipt) VALUES ($1, "
    "encode(sha256(convert_to($2::uuid::text, 'UTF8')), 'hex'), $3)",
    3};

typedef struct erase_tx {
    hm_call_t *call;
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req;
    Hospitality__Privacy__V1__ErasureReceipt *receipt;
    PGresult *refs;
} erase_tx_t;

static Hospitality__Privacy__V1__SectionCount *count(hm_arena_t *a, const char *section, int64_t n)
{
    Hospitality__Privacy__V1__SectionCount *c = hm_arena_alloc(a, sizeof *c);
    hospitality__privacy__v1__section_count__init(c);
    c->section = (char *)section;
    c->category = HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_BOOKINGS;
    c->count = n;
    return c;
}

static int erase_fn(hm_db_t *db, void *arg)
{
    erase_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
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
    const char *p[1] = {t->req->guest_id};
    PGresult *h, *i;
    if ((rc = hm_db_exec_arena(db, a, &st_anon_history, p, NULL, NULL, &h)) != 0 ||
        (rc = hm_db_exec_arena(db, a, &st_anon, p, NULL, NULL, &t->refs)) != 0 ||
        (rc = hm_db_exec_arena(db, a, &st_idem_forget, p, NULL, NULL, &i)) != 0)
        return rc;
    Hospitality__Privacy__V1__ErasureReceipt *rc_ = hm_arena_alloc(a, sizeof *rc_);
    hospitality__privacy__v1__erasure_receipt__init(rc_);
    rc_->receipt_id = hm_arena_alloc(a, HM_UUID_LEN + 1);
    hm_uuid_v4(rc_->receipt_id);
    rc_->request_id = t->req->request_id;
    rc_->participant = "bookingd";
    rc_->deleted = hm_arena_alloc(a, sizeof(void *));
    rc_->deleted[rc_->n_deleted++] = count(a, "booking_idempotency_records", PQntuples(i));
    rc_->anonymized = hm_arena_alloc(a, 2 * sizeof(void *));
    rc_->anonymized[rc_->n_anonymized++] = count(a, "bookings", PQntuples(t->refs));
    rc_->anonymized[rc_->n_anonymized++] = count(a, "booking_status_history", PQntuples(h));
    rc_->completed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    /* packed without the guest id (kept by its hash only); the answer carries it */
    size_t n = protobuf_c_message_get_packed_size(&rc_->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&rc_->base, buf);
    rc_->guest_id = t->req->guest_id;
    const char *kp[3] = {t->req->request_id, t->req->guest_id, (const char *)buf};
    int lens[3] = {0, 0, (int)n}, fmts[3] = {0, 0, 1};
    if ((rc = hm_db_exec(db, &st_keep_receipt, kp, lens, fmts, NULL)) != 0)
        return rc;
    t->receipt = rc_;
    return 0;
}

BK_HANDLER(bk_erase_subject)
{
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req = (const void *)in;
    if (!req->guest_id || !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (!req->request_id || !*req->request_id || strlen(req->request_id) > 128 ||
        !hm_utf8_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id is required");
    erase_tx_t t = {call, req, NULL, NULL};
    int rc = hm_db_tx(call->db, erase_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "erase");
    for (int i = 0; t.refs && i < PQntuples(t.refs); i++)
        bk_ref_invalidate(call->cache, &call->arena, hm_db_get(t.refs, i, 0));
    Hospitality__Privacy__V1__EraseSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__erase_subject_data_response__init(resp);
    resp->receipt = t.receipt;
    *out = &resp->base;
    return HM_STATUS_OK;
}
