/*
 * retention.c - privacyd's own retention: stored exports past their expiry (the request turns
 * EXPIRED), finished export requests past HM_PRIVACY_REQUEST_RETENTION, and consumed-event ids
 * and published outbox rows past HM_PRIVACY_EVENT_RETENTION. Erasure requests, their receipts,
 * the suppression list and the audit log are kept: they are the record that the law asks for.
 *
 * PurgeExpiredData runs it on demand (dry_run reports the counts and deletes nothing); the
 * retention task runs it on a schedule (a dry run only when HM_PRIVACY_RETENTION_PURGE=off).
 * Also here: the task that mirrors the suppression list into Redis.
 */
#include <string.h>

#include "hm/log.h"
#include "hm/suppress.h"
#include "pv.h"

enum { K_EXPORTS, K_REQUESTS, K_PROCESSED, K_OUTBOX, NKINDS };
static const char *const kind_names[NKINDS] = {"exports", "requests", "processed_events", "outbox"};

static const hm_stmt_t st_count = {
    "pv_retention_count",
    "SELECT (SELECT count(*) FROM pv_exports WHERE expires_at <= now()), (SELECT count(*) FROM "
    "pv_requests WHERE type = 1 AND status IN (3, 4, 5) AND finished_at < now() - $1::bigint * "
    "interval '1 millisecond'), (SELECT count(*) FROM processed_events WHERE processed_at < now() "
    "- $2::bigint * interval '1 millisecond'), (SELECT count(*) FROM "
    "outbox WHERE published_at IS "
    "NOT NULL AND "
    "published_at < now() - $2::bigint * interval '1 millisecond')",
    2};
static const hm_stmt_t st_purge = {
    "pv_retention_purge",
    "WITH e AS (DELETE FROM pv_exports WHERE expires_at <= now() RETURNING request_id), x AS "
    "(UPDATE pv_requests SET status = 5 WHERE request_id IN (SELECT request_id FROM e) AND "
    "status = 3), r AS (DELETE FROM pv_requests WHERE type = 1 AND status IN (3, 4, 5) "
    "AND finished_at < now() - $1::bigint * interval '1 millisecond' RETURNING 1), p AS (DELETE "
    "FROM processed_events WHERE processed_at < now() - $2::bigint * interval '1 millisecond' "
    "RETURNING 1), o AS (DELETE FROM outbox WHERE published_at IS NOT "
    "NULL AND published_at < now() - $2::bigint * interval '1 millisecond' RETURNING 1) SELECT "
    "(SELECT "
    "count(*) FROM e), (SELECT count(*) "
    "FROM r), (SELECT count(*) FROM "
    "p), (SELECT count(*) FROM o)",
    2};

typedef struct purge_tx {
    hm_arena_t *arena;
    bool dry_run;
    int actor_type;
    const char *actor_id;
    int64_t counts[NKINDS];
} purge_tx_t;

static int purge_fn(hm_db_t *db, void *arg)
{
    purge_tx_t *t = arg;
    hm_arena_t *a = t->arena;
    const char *p[2] = {hm_db_param_int64(a, pv_cfg.request_retention_ms),
                        hm_db_param_int64(a, pv_cfg.event_retention_ms)};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, t->dry_run ? &st_count : &st_purge, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int64_t total = 0;
    for (int k = 0; k < NKINDS; k++)
        total += t->counts[k] = pv_i64(r, 0, k);
    if (t->dry_run || total == 0)
        return 0;
    return pv_audit(db, a, t->actor_type, t->actor_id, "retention.purged", NULL, "",
                    hm_arena_printf(a,
                                    "exports=%lld;requests=%lld;processed_events=%lld;"
                                    "outbox=%lld",
                                    (long long)t->counts[0], (long long)t->counts[1],
                                    (long long)t->counts[2], (long long)t->counts[3]));
}

PV_HANDLER(pv_purge_expired_data)
{
    const Hospitality__Privacy__V1__PurgeExpiredDataRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    Hospitality__Common__V1__Actor *actor = pv_actor(call);
    purge_tx_t t = {a, req->dry_run, actor->type, actor->id, {0}};
    int rc = hm_db_tx(call->db, purge_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "purge");
    Hospitality__Privacy__V1__PurgeExpiredDataResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__purge_expired_data_response__init(resp);
    resp->dry_run = req->dry_run;
    resp->purged = hm_arena_alloc(a, NKINDS * sizeof(void *));
    for (int k = 0; k < NKINDS; k++) {
        Hospitality__Privacy__V1__SectionCount *sc = hm_arena_alloc(a, sizeof *sc);
        hospitality__privacy__v1__section_count__init(sc);
        sc->section = (char *)kind_names[k];
        sc->count = t.counts[k];
        resp->purged[resp->n_purged++] = sc;
    }
    resp->ran_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    *out = &resp->base;
    return HM_STATUS_OK;
}

int pv_task_retention(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache, (void)app;
    purge_tx_t t = {arena,
                    !pv_cfg.retention_purge,
                    HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM,
                    "privacyd",
                    {0}};
    int rc = hm_db_tx(db, purge_fn, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return rc;
    if (t.counts[0] + t.counts[1] + t.counts[2] + t.counts[3] > 0)
        HM_INFO("retention%s: exports=%lld requests=%lld processed_events=%lld outbox=%lld",
                t.dry_run ? " (dry run, nothing deleted)" : "", (long long)t.counts[0],
                (long long)t.counts[1], (long long)t.counts[2], (long long)t.counts[3]);
    return 0;
}

static const hm_stmt_t st_suppressed_all = {
    "pv_suppressed_all", "SELECT subject_hash FROM pv_suppressed ORDER BY added_at", 0};

int pv_task_suppression(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)app;
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_suppressed_all, NULL, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++)
        if ((rc = hm_suppress_hash(cache, pv_str(r, i, 0))) != 0)
            return rc;
    return 0;
}
