/*
 * audit.c - VerifyAuditLog: recomputes the audit log's hash chain (pv_audit, appended by
 * pv_audit_append in migration 002) in C, independently of the SQL that wrote it.
 *
 * Entry n's hash is SHA-256 of "seq|at|actor_type|actor_id|action|subject_hash|request_id|
 * detail|prev_hash" (at in UTC with microseconds), and its prev_hash must be entry n-1's hash
 * (64 zeros for entry 1). Sequence numbers must be consecutive, so a deleted entry breaks the
 * chain as surely as a modified one. The table refuses UPDATE, DELETE and TRUNCATE by trigger;
 * the chain catches what bypasses the trigger (a superuser, a restored backup).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pv.h"

#define BATCH 1000

static const hm_stmt_t st_rows = {
    "pv_audit_rows",
    "SELECT seq, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor_type, "
    "actor_id, action, subject_hash, request_id, detail, prev_hash, hash FROM pv_audit WHERE seq "
    ">= $1::bigint AND ($2::bigint = 0 OR seq <= $2::bigint) ORDER BY seq LIMIT $3::int",
    3};
static const hm_stmt_t st_hash_of = {"pv_audit_hash_of",
                                     "SELECT hash FROM pv_audit WHERE seq = $1::bigint", 1};

PV_HANDLER(pv_verify_audit_log)
{
    const Hospitality__Privacy__V1__VerifyAuditLogRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (req->from_sequence < 0)
        return hm_call_invalid(call, "from_sequence", "from_sequence must not be negative");
    if (req->to_sequence < 0)
        return hm_call_invalid(call, "to_sequence", "to_sequence must not be negative");
    if (req->to_sequence != 0 && req->to_sequence < req->from_sequence)
        return hm_call_invalid(call, "to_sequence", "to_sequence is before from_sequence");
    int64_t from = req->from_sequence > 0 ? req->from_sequence : 1;
    char prev[65];
    memset(prev, '0', 64);
    prev[64] = '\0';
    PGresult *r;
    int rc;
    if (from > 1) {
        const char *p[1] = {hm_db_param_int64(a, from - 1)};
        if ((rc = hm_db_exec_arena(call->db, a, &st_hash_of, p, NULL, NULL, &r)) != 0)
            return hm_call_fail(call, rc, "read audit log");
        if (PQntuples(r) != 1)
            return hm_call_error(call, HM_CODE_OUT_OF_RANGE, "OUT_OF_RANGE",
                                 "from_sequence is past the end of the log");
        snprintf(prev, sizeof prev, "%s", pv_str(r, 0, 0));
    }
    Hospitality__Privacy__V1__VerifyAuditLogResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__verify_audit_log_response__init(resp);
    resp->valid = true;
    int64_t expect = from;
    for (;;) {
        const char *p[3] = {hm_db_param_int64(a, expect), hm_db_param_int64(a, req->to_sequence),
                            hm_db_param_int64(a, BATCH)};
        if ((rc = hm_db_exec(call->db, &st_rows, p, NULL, NULL, &r)) != 0)
            return hm_call_fail(call, rc, "read audit log");
        int n = PQntuples(r);
        for (int i = 0; i < n && resp->valid; i++) {
            int64_t seq = pv_i64(r, i, 0);
            const char *at = pv_str(r, i, 1), *prev_hash = pv_str(r, i, 8);
            /* On the heap, freed at once: the log may be long, the arena lives for the call. */
#define CANON "%lld|%s|%s|%s|%s|%s|%s|%s|%s"
            int len = snprintf(NULL, 0, CANON, (long long)seq, at, pv_str(r, i, 2), pv_str(r, i, 3),
                               pv_str(r, i, 4), pv_str(r, i, 5), pv_str(r, i, 6), pv_str(r, i, 7),
                               prev_hash);
            char *canon = hm_xmalloc((size_t)len + 1);
            snprintf(canon, (size_t)len + 1, CANON, (long long)seq, at, pv_str(r, i, 2),
                     pv_str(r, i, 3), pv_str(r, i, 4), pv_str(r, i, 5), pv_str(r, i, 6),
                     pv_str(r, i, 7), prev_hash);
            char h[65];
            pv_sha256_hex(canon, (size_t)len, h);
            free(canon);
            if (seq != expect || strcmp(prev_hash, prev) != 0 || strcmp(h, pv_str(r, i, 9)) != 0) {
                resp->valid = false;
                resp->first_invalid_sequence = seq != expect ? expect : seq;
                break;
            }
            memcpy(prev, h, sizeof prev);
            resp->entries_checked++;
            expect++;
        }
        PQclear(r);
        if (!resp->valid || n < BATCH)
            break;
    }
    resp->head_hash = hm_arena_strdup(a, prev);
    resp->verified_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    *out = &resp->base;
    return HM_STATUS_OK;
}
