/*
 * requests.c - data-subject requests: RequestDataExport, GetDataExport, RequestErasure,
 * GetRequestStatus and ListRequests.
 *
 * A request is accepted in one transaction (request row, one row per participant, the event,
 * the audit entry; for erasures also the suppression list) and answered at once; the work is
 * done by the tasks in workflow.c. Exports are fetched with a verification code returned only
 * when the request is made: privacyd keeps its SHA-256 (bound to the request id) for checking
 * and a sealed copy so that a retried request with the same idempotency key gets the same
 * code back.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/suppress.h"
#include "pv.h"

static const hm_stmt_t st_find_idem = {
    "pv_find_idem",
    "SELECT request_id::text, code_sealed FROM pv_requests WHERE subject_hash = $1 AND type = "
    "$2::int AND idempotency_key = $3 AND $3 <> ''",
    3};
static const hm_stmt_t st_find_open_erasure = {
    "pv_find_open_erasure",
    "SELECT request_id::text FROM pv_requests WHERE subject_hash = $1 AND type = 2 AND status "
    "IN (1, 2) ORDER BY received_at LIMIT 1",
    1};
static const hm_stmt_t st_insert = {
    "pv_insert_request",
    "INSERT INTO pv_requests (request_id, guest_id, subject_hash, type, status, jurisdiction, "
    "categories, erasure_mode, include_csv, reason, requested_by_type, requested_by_id, "
    "idempotency_key, code_hash, code_sealed, due_at) VALUES ($1::uuid, $2::uuid, $3, $4::int, "
    "1, $5::int, coalesce(string_to_array(nullif($6, ''), ','), '{}')::int[], $7::int, $8::bool, "
    "$9, $10::int, "
    "$11, $12, $13, $14::bytea, clock_timestamp() + $15::interval) RETURNING pv_us(due_at)",
    15};
static const hm_stmt_t st_insert_part = {
    "pv_insert_participant",
    "INSERT INTO pv_participants (request_id, participant) VALUES ($1::uuid, $2)", 2};
static const hm_stmt_t st_suppress = {
    "pv_suppress",
    "INSERT INTO pv_suppressed (subject_hash, request_id) VALUES ($1, $2::uuid) ON CONFLICT DO "
    "NOTHING",
    2};

typedef struct accept_tx {
    hm_call_t *call;
    int type;
    const char *guest;
    char hash[65];
    int jurisdiction;
    const char *categories; /* "1,4" or "" */
    int mode;
    bool include_csv;
    const char *reason;
    const char *idem;
    const char *code;            /* new code (exports) */
    const unsigned char *sealed; /* its sealed copy */
    size_t sealed_len;
    char **parts;
    size_t nparts;
    /* out */
    char request_id[HM_UUID_LEN + 1];
    bool existing;
    unsigned char *old_sealed; /* replay: the first request's sealed code */
    size_t old_sealed_len;
} accept_tx_t;

static int accept_fn(hm_db_t *db, void *arg)
{
    accept_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    PGresult *r;
    int rc;
    t->existing = false;
    if (*t->idem) {
        const char *p[3] = {t->hash, hm_db_param_int64(a, t->type), t->idem};
        if ((rc = hm_db_exec_arena(db, a, &st_find_idem, p, NULL, NULL, &r)) != 0)
            return rc;
        if (PQntuples(r) == 1) {
            snprintf(t->request_id, sizeof t->request_id, "%s", pv_str(r, 0, 0));
            hm_db_get_bytea(r, 0, 1, a, &t->old_sealed, &t->old_sealed_len);
            t->existing = true;
            return 0;
        }
    }
    if (t->type == HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_ERASURE) {
        const char *p[1] = {t->hash};
        if ((rc = hm_db_exec_arena(db, a, &st_find_open_erasure, p, NULL, NULL, &r)) != 0)
            return rc;
        if (PQntuples(r) == 1) {
            snprintf(t->request_id, sizeof t->request_id, "%s", pv_str(r, 0, 0));
            t->existing = true;
            return 0;
        }
    }
    hm_uuid_v7(t->request_id);
    char code_hash[65] = "";
    if (t->code) {
        char *s = hm_arena_printf(a, "%s:%s", t->request_id, t->code);
        pv_sha256_hex(s, strlen(s), code_hash);
    }
    Hospitality__Common__V1__Actor *actor = pv_actor(call);
    const char *p[15] = {t->request_id,
                         t->guest,
                         t->hash,
                         hm_db_param_int64(a, t->type),
                         hm_db_param_int64(a, t->jurisdiction),
                         t->categories,
                         hm_db_param_int64(a, t->mode),
                         hm_db_param_bool(t->include_csv),
                         t->reason,
                         hm_db_param_int64(a, actor->type),
                         actor->id,
                         t->idem,
                         code_hash,
                         (const char *)t->sealed,
                         pv_deadline_interval(t->jurisdiction)};
    int lens[15] = {0}, fmts[15] = {0};
    lens[13] = (int)t->sealed_len;
    fmts[13] = 1;
    if ((rc = hm_db_exec_arena(db, a, &st_insert, p, lens, fmts, &r)) != 0)
        return rc;
    int64_t due_us = pv_i64(r, 0, 0);
    for (size_t i = 0; i < t->nparts; i++) {
        const char *pp[2] = {t->request_id, t->parts[i]};
        if ((rc = hm_db_exec(db, &st_insert_part, pp, NULL, NULL, NULL)) != 0)
            return rc;
    }
    if (t->type == HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_ERASURE) {
        const char *sp[2] = {t->hash, t->request_id};
        if ((rc = hm_db_exec(db, &st_suppress, sp, NULL, NULL, NULL)) != 0)
            return rc;
        Hospitality__Events__V1__PrivacyErasureRequested ev =
            HOSPITALITY__EVENTS__V1__PRIVACY_ERASURE_REQUESTED__INIT;
        ev.request_id = t->request_id;
        ev.guest_id = (char *)t->guest;
        ev.due_at = hm_timestamp_from_us(a, due_us);
        rc = hm_call_publish(call, db, "privacy.erasure.requested", t->guest, &ev.base);
    } else {
        Hospitality__Events__V1__PrivacyExportRequested ev =
            HOSPITALITY__EVENTS__V1__PRIVACY_EXPORT_REQUESTED__INIT;
        ev.request_id = t->request_id;
        ev.guest_id = (char *)t->guest;
        ev.due_at = hm_timestamp_from_us(a, due_us);
        rc = hm_call_publish(call, db, "privacy.export.requested", t->guest, &ev.base);
    }
    if (rc != 0)
        return rc;
    return pv_audit(db, a, actor->type, actor->id,
                    t->type == HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_ERASURE
                        ? "erasure.requested"
                        : "export.requested",
                    t->guest, t->request_id,
                    hm_arena_printf(a, "jurisdiction=%s;participants=%zu",
                                    pv_jurisdiction_name(t->jurisdiction), t->nparts));
}

/* Checks what both request kinds share; fills t. */
static hm_status_t accept_common(hm_call_t *call, accept_tx_t *t, const char *guest,
                                 int jurisdiction, const char *idem)
{
    if (!pv_valid_guest(guest))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (jurisdiction < 0 || jurisdiction > 3)
        return hm_call_invalid(call, "jurisdiction", "jurisdiction must be GDPR, CCPA or PIPEDA");
    if (idem && (strlen(idem) > 128 || !hm_utf8_valid(idem)))
        return hm_call_invalid(call, "idempotency_key",
                               "idempotency_key is longer than 128 "
                               "characters or not UTF-8");
    t->call = call;
    t->guest = guest;
    pv_sha256_hex(guest, strlen(guest), t->hash);
    t->jurisdiction =
        jurisdiction ? jurisdiction : HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_GDPR;
    /* Keys are stored hashed (with the subject's hash): a client may put anything in one. */
    t->idem = "";
    if (idem && *idem) {
        char *k = hm_arena_alloc(&call->arena, 65);
        pv_sha256_hex(idem, strlen(idem), k);
        t->idem = k;
    }
    t->reason = "";
    t->categories = "";
    int rc = pv_participants(&call->arena, &t->parts, &t->nparts);
    if (rc != 0)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "the data-subject participants are not known (discovery)");
    return HM_STATUS_OK;
}

static hm_status_t answer(hm_call_t *call, const char *request_id,
                          Hospitality__Privacy__V1__PrivacyRequest **q)
{
    int rc = pv_load_request(call->db, &call->arena, request_id, q);
    if (rc != 0)
        return hm_call_fail(call, rc, "load request");
    return HM_STATUS_OK;
}

PV_HANDLER(pv_request_data_export)
{
    const Hospitality__Privacy__V1__RequestDataExportRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    accept_tx_t t;
    memset(&t, 0, sizeof t);
    t.type = HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_EXPORT;
    char *cats = "";
    for (size_t i = 0; i < req->n_categories; i++) {
        if (req->categories[i] < 1 || req->categories[i] > 7)
            return hm_call_invalid(call, "categories", "categories[%zu] is not a data category", i);
        cats = hm_arena_printf(a, "%s%s%d", cats, i ? "," : "", req->categories[i]);
    }
    hm_status_t st =
        accept_common(call, &t, req->guest_id, req->jurisdiction, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    t.categories = cats;
    t.include_csv = req->include_csv;
    unsigned char raw[12];
    hm_random_bytes(raw, sizeof raw);
    char *code = hm_arena_alloc(a, 2 * sizeof raw + 1);
    for (size_t i = 0; i < sizeof raw; i++)
        sprintf(code + 2 * i, "%02x", raw[i]);
    t.code = code;
    /* The sealed copy's aad names the guest and (hashed) key: the request id is not known yet. */
    const char *aad = hm_arena_printf(a, "privacyd:code:%s:%s", t.hash, t.idem);
    unsigned char *sealed;
    size_t sealed_len;
    if (hm_crypto_encrypt(call->crypto, a, code, strlen(code), aad, &sealed, &sealed_len) != 0)
        return hm_call_fail(call, HM_ECRYPTO, "seal verification code");
    t.sealed = sealed;
    t.sealed_len = sealed_len;
    int rc = hm_db_tx(call->db, accept_fn, &t, HM_DB_READ_COMMITTED);
    if (rc == HM_EEXIST) /* the same key raced us: the winner's request is the answer */
        rc = hm_db_tx(call->db, accept_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "accept export request");
    Hospitality__Privacy__V1__RequestDataExportResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__request_data_export_response__init(resp);
    if (t.existing) {
        unsigned char *plain;
        size_t plen;
        if (!t.old_sealed || hm_crypto_decrypt(call->crypto, a, t.old_sealed, t.old_sealed_len, aad,
                                               &plain, &plen) != 0)
            return hm_call_fail(call, HM_ECRYPTO, "open verification code");
        resp->verification_code = (char *)plain;
    } else {
        resp->verification_code = code;
    }
    if (!hm_status_ok(st = answer(call, t.request_id, &resp->request)))
        return st;
    *out = &resp->base;
    return HM_STATUS_OK;
}

PV_HANDLER(pv_request_erasure)
{
    const Hospitality__Privacy__V1__RequestErasureRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    accept_tx_t t;
    memset(&t, 0, sizeof t);
    t.type = HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_ERASURE;
    if (req->mode < 0 || req->mode > 2)
        return hm_call_invalid(call, "mode", "mode must be DELETE or ANONYMIZE");
    if (req->reason && (strlen(req->reason) > 500 || !hm_utf8_valid(req->reason)))
        return hm_call_invalid(call, "reason",
                               "reason is longer than 500 characters or not "
                               "UTF-8");
    hm_status_t st =
        accept_common(call, &t, req->guest_id, req->jurisdiction, req->idempotency_key);
    if (!hm_status_ok(st))
        return st;
    t.mode = req->mode ? req->mode : HOSPITALITY__PRIVACY__V1__ERASURE_MODE__ERASURE_MODE_DELETE;
    t.reason = req->reason ? req->reason : "";
    t.categories = "1,2,3,4,5,6,7";
    int rc = hm_db_tx(call->db, accept_fn, &t, HM_DB_READ_COMMITTED);
    if (rc == HM_EEXIST)
        rc = hm_db_tx(call->db, accept_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "accept erasure request");
    /* After the commit: consumers everywhere stop applying events about the subject now, and
     * GetConsent answers "nothing consented" (the task re-adds the list should Redis miss it). */
    hm_suppress_subject(call->cache, req->guest_id);
    pv_consent_tombstone(call->cache, a, req->guest_id);
    Hospitality__Privacy__V1__RequestErasureResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__request_erasure_response__init(resp);
    if (!hm_status_ok(st = answer(call, t.request_id, &resp->request)))
        return st;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- GetDataExport ---- */

static const hm_stmt_t st_export_get = {
    "pv_export_get",
    "SELECT coalesce(r.guest_id::text, ''), r.type, r.status, r.code_hash, e.sealed, "
    "r.failure_reason FROM pv_requests r LEFT JOIN pv_exports e USING (request_id) WHERE "
    "r.request_id = $1::uuid",
    1};

PV_HANDLER(pv_get_data_export)
{
    const Hospitality__Privacy__V1__GetDataExportRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (!req->request_id || !hm_uuid_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id must be a UUID");
    if (!req->verification_code || !*req->verification_code || strlen(req->verification_code) > 128)
        return hm_call_invalid(call, "verification_code", "verification_code is required");
    const char *p[1] = {req->request_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_export_get, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "load export");
    if (PQntuples(r) != 1 || strcmp(pv_str(r, 0, 0), req->guest_id) != 0 ||
        pv_i64(r, 0, 1) != HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_EXPORT)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND",
                             "no export request %s for "
                             "this guest",
                             req->request_id);
    char *s = hm_arena_printf(a, "%s:%s", req->request_id, req->verification_code);
    char h[65];
    pv_sha256_hex(s, strlen(s), h);
    const char *want = pv_str(r, 0, 3);
    if (strlen(want) != 64 || CRYPTO_memcmp(h, want, 64) != 0) {
        HM_WARN("wrong verification code for export %s", req->request_id);
        return hm_call_error(call, HM_CODE_PERMISSION_DENIED, "VERIFICATION_FAILED",
                             "the verification code is wrong");
    }
    int status = (int)pv_i64(r, 0, 2);
    if (status == HOSPITALITY__PRIVACY__V1__REQUEST_STATUS__REQUEST_STATUS_RECEIVED ||
        status == HOSPITALITY__PRIVACY__V1__REQUEST_STATUS__REQUEST_STATUS_IN_PROGRESS)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "NOT_READY",
                             "the export is being assembled");
    if (status == HOSPITALITY__PRIVACY__V1__REQUEST_STATUS__REQUEST_STATUS_FAILED)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "the export failed: %s", pv_str(r, 0, 5));
    unsigned char *blob, *plain;
    size_t len, plen;
    if (status == HOSPITALITY__PRIVACY__V1__REQUEST_STATUS__REQUEST_STATUS_EXPIRED ||
        hm_db_get_bytea(r, 0, 4, a, &blob, &len) != 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND",
                             "the export expired and was deleted");
    const char *aad = hm_arena_printf(a, "privacyd:export:%s", req->request_id);
    if (hm_crypto_decrypt(call->crypto, a, blob, len, aad, &plain, &plen) != 0)
        return hm_call_fail(call, HM_ECRYPTO, "open export");
    Hospitality__Privacy__V1__GetDataExportResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__get_data_export_response__init(resp);
    resp->data_export = (void *)protobuf_c_message_unpack(
        &hospitality__privacy__v1__data_export__descriptor, hm_arena_pb(a), plen, plain);
    if (!resp->data_export)
        return hm_call_fail(call, HM_EINTERNAL, "decode export");
    Hospitality__Common__V1__Actor *actor = pv_actor(call);
    if ((rc = pv_audit(call->db, a, actor->type, actor->id, "export.fetched", req->guest_id,
                       req->request_id, "")) != 0)
        return hm_call_fail(call, rc, "audit");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- GetRequestStatus, ListRequests ---- */

PV_HANDLER(pv_get_request_status)
{
    const Hospitality__Privacy__V1__GetRequestStatusRequest *req = (const void *)in;
    if (!req->request_id || !hm_uuid_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id must be a UUID");
    Hospitality__Privacy__V1__PrivacyRequest *q;
    int rc = pv_load_request(call->db, &call->arena, req->request_id, &q);
    /* A guest sees only their own requests; others' do not exist for them. */
    if (rc == HM_ENOTFOUND ||
        (rc == 0 && pv_guest_only(call) && strcmp(q->guest_id, call->principal->subject) != 0))
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no request %s",
                             req->request_id);
    if (rc != 0)
        return hm_call_fail(call, rc, "load request");
    Hospitality__Privacy__V1__GetRequestStatusResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__get_request_status_response__init(resp);
    resp->request = q;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_list = {
    "pv_list_requests",
    "SELECT request_id::text, pv_us(received_at) FROM pv_requests WHERE ($1 = '' OR guest_id = "
    "nullif($1, '')::uuid) AND ($2::int = 0 OR type "
    "= $2::int) AND (cardinality($3::int[]) = 0 OR "
    "status = ANY($3::int[])) AND (NOT $4::bool OR "
    "(due_at < now() AND status IN (1, 2))) AND "
    "($5::bigint = 0 OR (pv_us(received_at), request_id) < ($5::bigint, "
    "nullif($6, '')::uuid)) ORDER "
    "BY received_at DESC, "
    "request_id DESC LIMIT "
    "$7::int",
    7};

PV_HANDLER(pv_list_requests)
{
    const Hospitality__Privacy__V1__ListRequestsRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (req->guest_id && *req->guest_id && !hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID or empty");
    if (req->type < 0 || req->type > 2)
        return hm_call_invalid(call, "type", "type must be EXPORT or ERASURE");
    char *statuses = "{";
    for (size_t i = 0; i < req->n_statuses; i++) {
        if (req->statuses[i] < 1 || req->statuses[i] > 5)
            return hm_call_invalid(call, "statuses", "statuses[%zu] is not a request status", i);
        statuses = hm_arena_printf(a, "%s%s%d", statuses, i ? "," : "", req->statuses[i]);
    }
    statuses = hm_arena_printf(a, "%s}", statuses);
    int size = req->page ? req->page->page_size : 0;
    if (size < 0)
        return hm_call_invalid(call, "page.page_size", "page_size must not be negative");
    size = size == 0 ? 50 : size > 200 ? 200 : size;
    long long after_us = 0;
    const char *after_id = "";
    const char *tok = req->page ? req->page->page_token : NULL;
    if (tok && *tok) {
        char *end;
        after_us = strtoll(tok, &end, 10);
        if (*end != '_' || after_us <= 0 || !hm_uuid_valid(end + 1))
            return hm_call_invalid(call, "page.page_token", "page_token is not valid");
        after_id = end + 1;
    }
    const char *p[7] = {
        req->guest_id ? req->guest_id : "",  hm_db_param_int64(a, req->type), statuses,
        hm_db_param_bool(req->overdue_only), hm_db_param_int64(a, after_us),  after_id,
        hm_db_param_int64(a, size + 1)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_list, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list requests");
    Hospitality__Privacy__V1__ListRequestsResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__list_requests_response__init(resp);
    int n = PQntuples(r) > size ? size : PQntuples(r);
    resp->requests = hm_arena_alloc(a, (size_t)(n + 1) * sizeof(void *));
    for (int i = 0; i < n; i++) {
        Hospitality__Privacy__V1__PrivacyRequest *q;
        rc = pv_load_request(call->db, a, pv_str(r, i, 0), &q);
        if (rc == HM_ENOTFOUND) /* purged meanwhile */
            continue;
        if (rc != 0)
            return hm_call_fail(call, rc, "load request");
        resp->requests[resp->n_requests++] = q;
    }
    resp->page = hm_arena_alloc(a, sizeof *resp->page);
    hospitality__common__v1__page_response__init(resp->page);
    resp->page->next_page_token =
        PQntuples(r) > size ? hm_arena_printf(a, "%s_%s", pv_str(r, n - 1, 1), pv_str(r, n - 1, 0))
                            : "";
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- ExtendRequestDeadline ---- */

/* Locks the request and says whether the extension stays within the jurisdiction's total:
 * GDPR two more months, CCPA 45 days, PIPEDA 30 days beyond the statutory deadline. */
static const hm_stmt_t st_extend_check = {
    "pv_extend_check",
    "SELECT status, pv_us(due_at), due_at + $2::int * interval '1 day' <= received_at + CASE "
    "jurisdiction WHEN 2 THEN interval '90 days' WHEN 3 THEN interval '60 days' ELSE interval '3 "
    "months' END, coalesce(guest_id::text, '') FROM pv_requests WHERE request_id = $1::uuid FOR "
    "UPDATE",
    2};
static const hm_stmt_t st_extend = {
    "pv_extend",
    "WITH u AS (UPDATE pv_requests SET due_at = due_at + $2::int * interval '1 day', "
    "overdue_alerted = false WHERE request_id = $1::uuid RETURNING due_at) INSERT INTO "
    "pv_extensions (request_id, previous_due_at, due_at, reason, actor_type, actor_id) SELECT "
    "$1::uuid, to_timestamp($3::double precision / 1e6), u.due_at, $4, $5::int, $6 FROM u",
    6};

typedef struct extend_tx {
    hm_call_t *call;
    const Hospitality__Privacy__V1__ExtendRequestDeadlineRequest *req;
    int outcome; /* 0 ok, 1 not found, 2 finished, 3 beyond the limit */
} extend_tx_t;

static int extend_fn(hm_db_t *db, void *arg)
{
    extend_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    const char *p[2] = {t->req->request_id, hm_db_param_int64(a, t->req->extension_days)};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_extend_check, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    t->outcome = PQntuples(r) == 0                              ? 1
                 : pv_i64(r, 0, 0) != 1 && pv_i64(r, 0, 0) != 2 ? 2
                 : strcmp(pv_str(r, 0, 2), "t") != 0            ? 3
                                                                : 0;
    if (t->outcome != 0)
        return 0;
    Hospitality__Common__V1__Actor *actor = pv_actor(t->call);
    const char *ep[6] = {t->req->request_id,
                         p[1],
                         pv_str(r, 0, 1),
                         t->req->reason,
                         hm_db_param_int64(a, actor->type),
                         actor->id};
    if ((rc = hm_db_exec(db, &st_extend, ep, NULL, NULL, NULL)) != 0)
        return rc;
    return pv_audit(db, a, actor->type, actor->id, "request.deadline_extended", pv_str(r, 0, 3),
                    t->req->request_id, hm_arena_printf(a, "days=%d", (int)t->req->extension_days));
}

PV_HANDLER(pv_extend_request_deadline)
{
    const Hospitality__Privacy__V1__ExtendRequestDeadlineRequest *req = (const void *)in;
    if (!req->request_id || !hm_uuid_valid(req->request_id))
        return hm_call_invalid(call, "request_id", "request_id must be a UUID");
    if (req->extension_days < 1 || req->extension_days > 366)
        return hm_call_invalid(call, "extension_days", "extension_days must be 1..366");
    if (!req->reason || !*req->reason || strlen(req->reason) > 500 || !hm_utf8_valid(req->reason))
        return hm_call_invalid(call, "reason", "reason is required (at most 500 characters)");
    extend_tx_t t = {call, req, 0};
    int rc = hm_db_tx(call->db, extend_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "extend deadline");
    if (t.outcome == 1)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no request %s",
                             req->request_id);
    if (t.outcome == 2)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "the request is finished");
    if (t.outcome == 3)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "the extension goes beyond what the request's jurisdiction allows");
    Hospitality__Privacy__V1__ExtendRequestDeadlineResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__extend_request_deadline_response__init(resp);
    hm_status_t st = answer(call, req->request_id, &resp->request);
    if (!hm_status_ok(st))
        return st;
    *out = &resp->base;
    return HM_STATUS_OK;
}
