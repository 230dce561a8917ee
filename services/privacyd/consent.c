/*
 * consent.c - GetConsent, UpdateConsent and ListConsentHistory, and the consent cache.
 *
 * The current decisions live in pv_consents (one row per guest and purpose), every decision in
 * pv_consent_history, and the guest's consent version in pv_consent_guests. GetConsent answers
 * from Redis: the key hm:privacyd:consent:<SHA-256 of the guest id> holds "<version>:<packed
 * GetConsentResponse with all purposes, the id left out>", so Redis holds no guest id. Writers and
 * readers store it through one Lua script that never lets an older version replace a newer one, so
 * a reader that loaded the state before an update cannot put it back after the update's own write.
 * Expired grants are reported as WITHDRAWN at read time (the cached copy needs no invalidation when
 * a grant lapses); the expiry task records the lapse in the history and publishes it. An erasure
 * request replaces the entry with a tombstone ("nothing consented" under a version no update
 * reaches).
 */
#include <stdlib.h>
#include <string.h>

#include "hm/id.h"
#include "hm/log.h"
#include "pv.h"

#define NPURPOSES 5

static const hm_stmt_t st_current = {
    "pv_consent_current",
    "SELECT g.version, c.purpose, c.status, c.source, c.notice_version, pv_us(c.recorded_at), "
    "pv_us(c.expires_at), c.actor_type, c.actor_id, c.version FROM "
    "pv_consent_guests g LEFT JOIN pv_consents c "
    "USING (guest_id) WHERE "
    "g.guest_id = $1::uuid ORDER BY c.purpose",
    1};

/* The full consent state of a guest (every purpose) from Postgres. */
static int load_state(hm_db_t *db, hm_arena_t *a, const char *guest,
                      Hospitality__Privacy__V1__GetConsentResponse **out)
{
    const char *p[1] = {guest};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_current, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    Hospitality__Privacy__V1__GetConsentResponse *s = hm_arena_alloc(a, sizeof *s);
    hospitality__privacy__v1__get_consent_response__init(s);
    s->guest_id = hm_arena_strdup(a, guest);
    s->consents = hm_arena_alloc(a, NPURPOSES * sizeof(void *));
    s->version = PQntuples(r) > 0 ? pv_i64(r, 0, 0) : 0;
    for (int purpose = 1; purpose <= NPURPOSES; purpose++) {
        Hospitality__Privacy__V1__ConsentRecord *c = hm_arena_alloc(a, sizeof *c);
        hospitality__privacy__v1__consent_record__init(c);
        c->guest_id = s->guest_id;
        c->purpose = purpose;
        for (int i = 0; i < PQntuples(r); i++) {
            if (hm_db_get(r, i, 1) == NULL || pv_i64(r, i, 1) != purpose)
                continue;
            c->status = (int)pv_i64(r, i, 2);
            c->source = (int)pv_i64(r, i, 3);
            c->notice_version = hm_arena_strdup(a, pv_str(r, i, 4));
            c->recorded_at = pv_ts(a, r, i, 5);
            c->expires_at = pv_ts(a, r, i, 6);
            c->recorded_by = hm_arena_alloc(a, sizeof *c->recorded_by);
            hospitality__common__v1__actor__init(c->recorded_by);
            c->recorded_by->type = (int)pv_i64(r, i, 7);
            c->recorded_by->id = hm_arena_strdup(a, pv_str(r, i, 8));
            c->version = pv_i64(r, i, 9);
        }
        s->consents[s->n_consents++] = c;
    }
    *out = s;
    return 0;
}

/* SET the cached state unless the cache already holds a newer version. */
static const char cache_script[] =
    "local cur = redis.call('GET', KEYS[1]) "
    "if cur then local v = tonumber(string.match(cur, '^(%d+):')) "
    "if v and v > tonumber(ARGV[1]) then return 0 end end "
    "redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3]) return 1";

static void cache_store(hm_cache_t *cache, hm_arena_t *a, const char *guest,
                        const Hospitality__Privacy__V1__GetConsentResponse *s)
{
    /* Stored without the guest's id (the key is its hash too): Redis holds no id. */
    Hospitality__Privacy__V1__GetConsentResponse copy = *s;
    Hospitality__Privacy__V1__ConsentRecord *recs[NPURPOSES], *ptrs[NPURPOSES];
    copy.guest_id = "";
    copy.n_consents = s->n_consents > NPURPOSES ? NPURPOSES : s->n_consents;
    for (size_t i = 0; i < copy.n_consents; i++) {
        recs[i] = hm_arena_memdup(a, s->consents[i], sizeof *recs[i]);
        recs[i]->guest_id = "";
        ptrs[i] = recs[i];
    }
    copy.consents = ptrs;
    size_t n = protobuf_c_message_get_packed_size(&copy.base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&copy.base, buf);
    const char *argv[7] = {"EVAL",
                           cache_script,
                           "1",
                           pv_consent_key(a, guest),
                           hm_db_param_int64(a, s->version),
                           (const char *)buf,
                           hm_db_param_int64(a, pv_cfg.consent_cache_ttl_ms)};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(argv[i]);
    lens[5] = n;
    hm_cache_command_argv(cache, a, 7, argv, lens);
}

/* The cached state of an erased guest: nothing decided, under a version no real state reaches,
 * so that no reader holding the state from before the erasure can put it back. */
#define ERASED_VERSION 1000000000000LL

void pv_consent_tombstone(hm_cache_t *cache, hm_arena_t *a, const char *guest)
{
    Hospitality__Privacy__V1__GetConsentResponse s =
        HOSPITALITY__PRIVACY__V1__GET_CONSENT_RESPONSE__INIT;
    s.guest_id = (char *)guest;
    s.version = ERASED_VERSION;
    s.consents = hm_arena_alloc(a, NPURPOSES * sizeof(void *));
    for (int purpose = 1; purpose <= NPURPOSES; purpose++) {
        Hospitality__Privacy__V1__ConsentRecord *c = hm_arena_alloc(a, sizeof *c);
        hospitality__privacy__v1__consent_record__init(c);
        c->guest_id = s.guest_id;
        c->purpose = purpose;
        s.consents[s.n_consents++] = c;
    }
    cache_store(cache, a, guest, &s);
}

static Hospitality__Privacy__V1__GetConsentResponse *cache_load(hm_cache_t *cache, hm_arena_t *a,
                                                                const char *guest)
{
    char *v;
    size_t len;
    if (hm_cache_get(cache, a, pv_consent_key(a, guest), &v, &len) != 0)
        return NULL;
    char *colon = memchr(v, ':', len);
    if (!colon)
        return NULL;
    size_t off = (size_t)(colon - v) + 1;
    Hospitality__Privacy__V1__GetConsentResponse *s = (void *)protobuf_c_message_unpack(
        &hospitality__privacy__v1__get_consent_response__descriptor, hm_arena_pb(a), len - off,
        (uint8_t *)v + off);
    if (!s)
        return NULL;
    s->guest_id = hm_arena_strdup(a, guest);
    for (size_t i = 0; i < s->n_consents; i++)
        s->consents[i]->guest_id = s->guest_id;
    return s;
}

/* Reports a lapsed grant as WITHDRAWN (the record is copied, the cached one is untouched). */
static Hospitality__Privacy__V1__ConsentRecord *
effective(hm_arena_t *a, Hospitality__Privacy__V1__ConsentRecord *c, int64_t now_us)
{
    if (c->status != HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_GRANTED ||
        !c->expires_at || hm_timestamp_to_us(c->expires_at) > now_us)
        return c;
    Hospitality__Privacy__V1__ConsentRecord *e = hm_arena_memdup(a, c, sizeof *c);
    e->status = HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_WITHDRAWN;
    return e;
}

static const hm_stmt_t st_suppressed = {"pv_suppressed_one",
                                        "SELECT 1 FROM pv_suppressed WHERE subject_hash = $1", 1};

static bool valid_purpose(int p)
{
    return p >= 1 && p <= NPURPOSES;
}

PV_HANDLER(pv_get_consent)
{
    const Hospitality__Privacy__V1__GetConsentRequest *req = (const void *)in;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    for (size_t i = 0; i < req->n_purposes; i++)
        if (!valid_purpose(req->purposes[i]))
            return hm_call_invalid(call, "purposes", "purposes[%zu] is not a consent purpose", i);
    hm_arena_t *a = &call->arena;
    Hospitality__Privacy__V1__GetConsentResponse *s = cache_load(call->cache, a, req->guest_id);
    if (s && s->n_consents == NPURPOSES) {
        pv_metric_inc(PV_M_CACHE_HIT);
    } else {
        pv_metric_inc(PV_M_CACHE_MISS);
        int rc = load_state(call->db, a, req->guest_id, &s);
        if (rc != 0)
            return hm_call_fail(call, rc, "load consent");
        cache_store(call->cache, a, req->guest_id, s);
    }
    /* A read of a guest's consent by staff or an administrator is audited (guests reading
     * their own and services on their hot paths are not). */
    const hm_principal_t *pr = call->principal;
    if (pr && (pr->roles & (HM_ROLE_STAFF | HM_ROLE_ADMIN)) && !(pr->roles & HM_ROLE_SERVICE)) {
        Hospitality__Common__V1__Actor *actor = pv_actor(call);
        int rc =
            pv_audit(call->db, a, actor->type, actor->id, "consent.read", req->guest_id, "", "");
        if (rc != 0)
            return hm_call_fail(call, rc, "audit");
    }
    Hospitality__Privacy__V1__GetConsentResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__get_consent_response__init(resp);
    resp->guest_id = (char *)req->guest_id;
    resp->version = s->version == ERASED_VERSION ? 0 : s->version;
    resp->consents = hm_arena_alloc(a, NPURPOSES * sizeof(void *));
    int64_t now_us = hm_now_ms() * 1000;
    for (size_t i = 0; i < s->n_consents; i++) {
        bool want = req->n_purposes == 0;
        for (size_t j = 0; j < req->n_purposes; j++)
            want = want || req->purposes[j] == s->consents[i]->purpose;
        if (want)
            resp->consents[resp->n_consents++] = effective(a, s->consents[i], now_us);
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- UpdateConsent ---- */

static const hm_stmt_t st_bump = {
    "pv_consent_bump",
    "INSERT INTO pv_consent_guests (guest_id, version) VALUES ($1::uuid, 1) ON CONFLICT "
    "(guest_id) DO UPDATE SET version = pv_consent_guests.version + 1, updated_at = now() "
    "RETURNING version",
    1};
static const hm_stmt_t st_upsert = {
    "pv_consent_upsert",
    "INSERT INTO pv_consents (guest_id, purpose, status, source, notice_version, recorded_at, "
    "expires_at, actor_type, actor_id, version) VALUES ($1::uuid, $2::int, $3::int, $4::int, $5, "
    "to_timestamp($6::double precision / 1e6), to_timestamp($7::double precision / 1e6), "
    "$8::int, $9, $10::bigint) ON CONFLICT (guest_id, purpose) DO UPDATE SET status = "
    "excluded.status, source = excluded.source, notice_version = excluded.notice_version, "
    "recorded_at = excluded.recorded_at, expires_at = excluded.expires_at, actor_type = "
    "excluded.actor_type, actor_id = excluded.actor_id, version = excluded.version",
    10};
static const hm_stmt_t st_history = {
    "pv_consent_history_add",
    "INSERT INTO pv_consent_history (guest_id, purpose, status, source, notice_version, "
    "recorded_at, expires_at, actor_type, actor_id, version) VALUES ($1::uuid, $2::int, $3::int, "
    "$4::int, $5, to_timestamp($6::double precision / 1e6), to_timestamp($7::double precision / "
    "1e6), $8::int, $9, $10::bigint)",
    10};

static const hm_stmt_t st_still_expired = {
    "pv_consent_still_expired",
    "SELECT 1 FROM pv_consents WHERE guest_id = $1::uuid AND purpose = $2::int AND status = 1 "
    "AND expires_at <= now()",
    2};

/* One guest's consent change, written by the handler and by the expiry task. */
typedef struct pv_consent_change {
    const char *guest;
    int purpose, status, source;
    const char *notice_version;
    int64_t expires_us; /* 0: none */
} pv_consent_change_t;

typedef struct update_tx {
    hm_call_t *call; /* NULL from the expiry task */
    hm_arena_t *arena;
    const char *guest;
    const pv_consent_change_t *changes;
    size_t n;
    int64_t expected_version;
    int actor_type;
    const char *actor_id;
    int64_t version; /* out */
} update_tx_t;

static int update_fn(hm_db_t *db, void *arg)
{
    update_tx_t *t = arg;
    hm_arena_t *a = t->arena;
    char h[65];
    pv_sha256_hex(t->guest, strlen(t->guest), h);
    const char *hp[1] = {h};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_suppressed, hp, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) > 0)
        return HM_EPRECOND;
    const char *gp[1] = {t->guest};
    if ((rc = hm_db_exec_arena(db, a, &st_bump, gp, NULL, NULL, &r)) != 0)
        return rc;
    t->version = pv_i64(r, 0, 0);
    if (!t->call) {
        /* The expiry task: the guest's row is locked now, so a lapse another replica recorded
         * meanwhile is visible here and this one gives up (HM_ENOTFOUND). */
        const char *ep[2] = {t->guest, hm_db_param_int64(a, t->changes[0].purpose)};
        if ((rc = hm_db_exec_arena(db, a, &st_still_expired, ep, NULL, NULL, &r)) != 0)
            return rc;
        if (PQntuples(r) == 0)
            return HM_ENOTFOUND;
    }
    if (t->expected_version != 0 && t->version - 1 != t->expected_version)
        return HM_ECONFLICT;
    int64_t now_us = hm_now_ms() * 1000;
    Hospitality__Events__V1__GuestConsentUpdated ev =
        HOSPITALITY__EVENTS__V1__GUEST_CONSENT_UPDATED__INIT;
    ev.guest_id = (char *)t->guest;
    ev.version = t->version;
    ev.changed = hm_arena_alloc(a, (t->n + 1) * sizeof(void *));
    char *detail = "";
    for (size_t i = 0; i < t->n; i++) {
        const pv_consent_change_t *c = &t->changes[i];
        const char *p[10] = {t->guest,
                             hm_db_param_int64(a, c->purpose),
                             hm_db_param_int64(a, c->status),
                             hm_db_param_int64(a, c->source),
                             c->notice_version,
                             pv_us_param(a, now_us),
                             c->expires_us ? pv_us_param(a, c->expires_us) : NULL,
                             hm_db_param_int64(a, t->actor_type),
                             t->actor_id,
                             hm_db_param_int64(a, t->version)};
        if ((rc = hm_db_exec(db, &st_upsert, p, NULL, NULL, NULL)) != 0 ||
            (rc = hm_db_exec(db, &st_history, p, NULL, NULL, NULL)) != 0)
            return rc;
        Hospitality__Events__V1__ConsentState *s = hm_arena_alloc(a, sizeof *s);
        hospitality__events__v1__consent_state__init(s);
        s->purpose = c->purpose;
        s->status = c->status;
        s->expires_at = c->expires_us ? hm_timestamp_from_us(a, c->expires_us) : NULL;
        ev.changed[ev.n_changed++] = s;
        detail = hm_arena_printf(a, "%s%s%d=%d", detail, i ? "," : "", c->purpose, c->status);
    }
    rc = t->call ? hm_call_publish(t->call, db, "guest.consent.updated", t->guest, &ev.base)
                 : hm_publish(db, a, "guest.consent.updated", t->guest, NULL, &ev.base);
    if (rc != 0)
        return rc;
    return pv_audit(db, a, t->actor_type, t->actor_id, "consent.updated", t->guest, "",
                    hm_arena_printf(a, "version=%lld;%s", (long long)t->version, detail));
}

/* Runs a consent change and refreshes the cache; 0 or HM_E* (HM_EPRECOND: guest erased,
 * HM_ECONFLICT: stale expected version). */
static int consent_apply(hm_db_t *db, hm_cache_t *cache, update_tx_t *t)
{
    int rc = hm_db_tx(db, update_fn, t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return rc;
    Hospitality__Privacy__V1__GetConsentResponse *s;
    if (load_state(db, t->arena, t->guest, &s) == 0)
        cache_store(cache, t->arena, t->guest, s);
    else
        pv_consent_invalidate(cache, t->arena, t->guest);
    return 0;
}

PV_HANDLER(pv_update_consent)
{
    const Hospitality__Privacy__V1__UpdateConsentRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->n_changes == 0)
        return hm_call_invalid(call, "changes", "at least one change is required");
    if (req->n_changes > NPURPOSES)
        return hm_call_invalid(call, "changes", "at most one change per purpose");
    if (req->source < 1 || req->source > 5)
        return hm_call_invalid(call, "source",
                               "source must be APP, WEB, STAFF, IMPORT or "
                               "UNSUBSCRIBE_LINK");
    if (pv_guest_only(call) &&
        req->source != HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_APP &&
        req->source != HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_WEB &&
        req->source != HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_UNSUBSCRIBE_LINK)
        return hm_call_invalid(call, "source",
                               "a guest records consent from the app, the web or "
                               "an unsubscribe link");
    if (!req->notice_version || !*req->notice_version || strlen(req->notice_version) > 64 ||
        !hm_utf8_valid(req->notice_version))
        return hm_call_invalid(call, "notice_version",
                               "notice_version is required (at most 64 characters)");
    if (req->expected_version < 0)
        return hm_call_invalid(call, "expected_version", "expected_version must not be negative");
    int64_t now_us = hm_now_ms() * 1000;
    pv_consent_change_t *ch = hm_arena_zalloc(a, req->n_changes * sizeof *ch);
    for (size_t i = 0; i < req->n_changes; i++) {
        const Hospitality__Privacy__V1__ConsentChange *c = req->changes[i];
        if (!valid_purpose(c->purpose))
            return hm_call_invalid(call, "changes.purpose", "changes[%zu]: not a consent purpose",
                                   i);
        for (size_t j = 0; j < i; j++)
            if (ch[j].purpose == (int)c->purpose)
                return hm_call_invalid(call, "changes.purpose", "changes[%zu]: purpose given twice",
                                       i);
        if (c->status < 1 || c->status > 3)
            return hm_call_invalid(call, "changes.status",
                                   "changes[%zu]: status must be GRANTED, DENIED or WITHDRAWN", i);
        if (c->expires_at) {
            if (c->status != HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_GRANTED)
                return hm_call_invalid(call, "changes.expires_at",
                                       "changes[%zu]: only a grant can expire", i);
            if (hm_timestamp_to_us(c->expires_at) <= now_us)
                return hm_call_invalid(call, "changes.expires_at",
                                       "changes[%zu]: expires_at must be in the future", i);
        }
        ch[i] = (pv_consent_change_t){
            req->guest_id,       c->purpose,
            c->status,           req->source,
            req->notice_version, c->expires_at ? hm_timestamp_to_us(c->expires_at) : 0};
    }
    Hospitality__Common__V1__Actor *actor = pv_actor(call);
    update_tx_t t = {
        call,      a, req->guest_id, ch, req->n_changes, req->expected_version, actor->type,
        actor->id, 0};
    int rc = consent_apply(call->db, call->cache, &t);
    if (rc == HM_EPRECOND)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                             "the guest's data was erased");
    if (rc == HM_ECONFLICT)
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_CONFLICT",
                             "consent version is not %lld", (long long)req->expected_version);
    if (rc != 0)
        return hm_call_fail(call, rc, "update consent");
    Hospitality__Privacy__V1__GetConsentResponse *s;
    if ((rc = load_state(call->db, a, req->guest_id, &s)) != 0)
        return hm_call_fail(call, rc, "load consent");
    Hospitality__Privacy__V1__UpdateConsentResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__update_consent_response__init(resp);
    resp->consents = s->consents;
    resp->n_consents = s->n_consents;
    for (size_t i = 0; i < s->n_consents; i++)
        resp->consents[i] = effective(a, s->consents[i], now_us);
    resp->version = t.version;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- consent expiry (task) ---- */

static const hm_stmt_t st_expired = {
    "pv_consent_expired",
    "SELECT guest_id::text, purpose, notice_version FROM pv_consents WHERE status = 1 AND "
    "expires_at <= now() ORDER BY expires_at LIMIT 100",
    0};

int pv_task_consent_expiry(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)app;
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_expired, NULL, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        pv_consent_change_t c = {pv_str(r, i, 0),
                                 (int)pv_i64(r, i, 1),
                                 HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_WITHDRAWN,
                                 HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_EXPIRY,
                                 pv_str(r, i, 2),
                                 0};
        update_tx_t t = {NULL,
                         arena,
                         c.guest,
                         &c,
                         1,
                         0,
                         HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM,
                         "privacyd",
                         0};
        /* Another replica may record the same lapse: update_fn re-checks the grant under the
         * guest's row lock, so a lapse is recorded once. */
        rc = consent_apply(db, cache, &t);
        if (rc != 0 && rc != HM_EPRECOND && rc != HM_ENOTFOUND)
            return rc;
    }
    return 0;
}

/* ---- ListConsentHistory ---- */

static const hm_stmt_t st_list = {
    "pv_consent_list",
    "SELECT id, purpose, status, source, notice_version, pv_us(recorded_at), pv_us(expires_at), "
    "actor_type, actor_id, version FROM pv_consent_history WHERE guest_id = "
    "$1::uuid AND ($2::int = 0 OR purpose = $2::int) AND ($3::bigint = 0 OR id "
    "< $3::bigint) ORDER BY id DESC LIMIT $4::int",
    4};

PV_HANDLER(pv_list_consent_history)
{
    const Hospitality__Privacy__V1__ListConsentHistoryRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!pv_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->purpose != 0 && !valid_purpose(req->purpose))
        return hm_call_invalid(call, "purpose", "not a consent purpose");
    int size = req->page ? req->page->page_size : 0;
    if (size < 0)
        return hm_call_invalid(call, "page.page_size", "page_size must not be negative");
    size = size == 0 ? 50 : size > 500 ? 500 : size;
    long long after = 0;
    const char *tok = req->page ? req->page->page_token : NULL;
    if (tok && *tok) {
        char *end;
        after = strtoll(tok, &end, 10);
        if (*end || after <= 0 || strlen(tok) > 19)
            return hm_call_invalid(call, "page.page_token", "page_token is not valid");
    }
    const char *p[4] = {req->guest_id, hm_db_param_int64(a, req->purpose),
                        hm_db_param_int64(a, after), hm_db_param_int64(a, size + 1)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_list, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list consent history");
    const hm_principal_t *pr = call->principal;
    if (pr && (pr->roles & (HM_ROLE_STAFF | HM_ROLE_ADMIN)) && !(pr->roles & HM_ROLE_SERVICE)) {
        Hospitality__Common__V1__Actor *actor = pv_actor(call);
        if ((rc = pv_audit(call->db, a, actor->type, actor->id, "consent.history.read",
                           req->guest_id, "", "")) != 0)
            return hm_call_fail(call, rc, "audit");
    }
    Hospitality__Privacy__V1__ListConsentHistoryResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__privacy__v1__list_consent_history_response__init(resp);
    int n = PQntuples(r) > size ? size : PQntuples(r);
    resp->records = hm_arena_alloc(a, (size_t)(n + 1) * sizeof(void *));
    for (int i = 0; i < n; i++) {
        Hospitality__Privacy__V1__ConsentRecord *c = hm_arena_alloc(a, sizeof *c);
        hospitality__privacy__v1__consent_record__init(c);
        c->guest_id = (char *)req->guest_id;
        c->purpose = (int)pv_i64(r, i, 1);
        c->status = (int)pv_i64(r, i, 2);
        c->source = (int)pv_i64(r, i, 3);
        c->notice_version = hm_arena_strdup(a, pv_str(r, i, 4));
        c->recorded_at = pv_ts(a, r, i, 5);
        c->expires_at = pv_ts(a, r, i, 6);
        c->recorded_by = hm_arena_alloc(a, sizeof *c->recorded_by);
        hospitality__common__v1__actor__init(c->recorded_by);
        c->recorded_by->type = (int)pv_i64(r, i, 7);
        c->recorded_by->id = hm_arena_strdup(a, pv_str(r, i, 8));
        c->version = pv_i64(r, i, 9);
        resp->records[resp->n_records++] = c;
    }
    resp->page = hm_arena_alloc(a, sizeof *resp->page);
    hospitality__common__v1__page_response__init(resp->page);
    resp->page->next_page_token =
        PQntuples(r) > size ? hm_arena_strdup(a, pv_str(r, n - 1, 0)) : "";
    *out = &resp->base;
    return HM_STATUS_OK;
}
