/*
 * util.c - privacyd's shared helpers: row access, hashing, actors, the audit append, the
 * consent cache key, jurisdictions, loading a request with its participants, the participant
 * list and business metrics.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hm/auth.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/peer.h"
#include "pv.h"

const char *pv_str(const PGresult *r, int row, int col)
{
    const char *v = hm_db_get(r, row, col);
    return v ? v : "";
}

int64_t pv_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    return hm_db_get_int64(r, row, col, &v) == 0 ? v : 0;
}

Google__Protobuf__Timestamp *pv_ts(hm_arena_t *a, const PGresult *r, int row, int col)
{
    int64_t v;
    if (hm_db_get_int64(r, row, col, &v) != 0)
        return NULL;
    return hm_timestamp_from_us(a, v);
}

const char *pv_us_param(hm_arena_t *a, int64_t us)
{
    return hm_db_param_int64(a, us);
}

void pv_sha256_hex(const char *s, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(s, n, md, &len, EVP_sha256(), NULL);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

Hospitality__Common__V1__Actor *pv_actor(hm_call_t *call)
{
    Hospitality__Common__V1__Actor *a = hm_arena_alloc(&call->arena, sizeof *a);
    hospitality__common__v1__actor__init(a);
    const hm_principal_t *p = call->principal;
    if (!p) {
        a->type = HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM;
        a->id = "privacyd";
        return a;
    }
    a->id = (char *)p->subject;
    a->type = p->roles & HM_ROLE_ADMIN     ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_ADMIN
              : p->roles & HM_ROLE_SERVICE ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SERVICE
              : p->roles & HM_ROLE_STAFF   ? HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_STAFF
                                           : HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_GUEST;
    return a;
}

bool pv_guest_only(const hm_call_t *call)
{
    const hm_principal_t *p = call->principal;
    return p && !(p->roles & (HM_ROLE_ADMIN | HM_ROLE_SERVICE | HM_ROLE_STAFF));
}

bool pv_valid_guest(const char *s)
{
    return s && hm_uuid_valid(s);
}

static const hm_stmt_t st_audit = {"pv_audit",
                                   "SELECT pv_audit_append($1::int, $2, $3, $4, $5, $6)", 6};

int pv_audit(hm_db_t *db, hm_arena_t *a, int actor_type, const char *actor_id, const char *action,
             const char *guest, const char *request_id, const char *detail)
{
    char h[65] = "";
    if (guest && *guest)
        pv_sha256_hex(guest, strlen(guest), h);
    /* A guest acting appears by hash too: the log is append-only, so it must hold no id that
     * an erasure would have to remove. */
    char ah[65];
    if (actor_type == HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_GUEST && actor_id) {
        pv_sha256_hex(actor_id, strlen(actor_id), ah);
        actor_id = hm_arena_printf(a, "sha256:%s", ah);
    }
    const char *p[6] = {hm_db_param_int64(a, actor_type), actor_id ? actor_id : "", action, h,
                        request_id ? request_id : "",     detail ? detail : ""};
    return hm_db_exec(db, &st_audit, p, NULL, NULL, NULL);
}

char *pv_consent_key(hm_arena_t *a, const char *guest)
{
    char h[65];
    pv_sha256_hex(guest, strlen(guest), h);
    return hm_cache_key(a, "privacyd", "consent", h);
}

void pv_consent_invalidate(hm_cache_t *cache, hm_arena_t *a, const char *guest)
{
    const char *k[1] = {pv_consent_key(a, guest)};
    hm_cache_del(cache, k, 1);
}

const char *pv_deadline_interval(int j)
{
    switch (j) {
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_CCPA:
        return "45 days";
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_PIPEDA:
        return "30 days";
    default:
        return "1 month";
    }
}

const char *pv_jurisdiction_name(int j)
{
    switch (j) {
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_CCPA:
        return "CCPA";
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_PIPEDA:
        return "PIPEDA";
    default:
        return "GDPR";
    }
}

const char *pv_disclaimer(int j)
{
    switch (j) {
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_CCPA:
        return "This export answers a request to know under the California Consumer Privacy Act "
               "(Cal. Civ. Code 1798.100 and 1798.110). It lists the personal information we "
               "hold about you, by category, as of the time it was generated. We do not sell "
               "your personal information. You may ask us to delete it or to correct it; we "
               "answer within 45 days, extensible once by 45 days with notice.";
    case HOSPITALITY__PRIVACY__V1__JURISDICTION__JURISDICTION_PIPEDA:
        return "This export answers an access request under Canada's Personal Information "
               "Protection and Electronic Documents Act (PIPEDA, Principle 4.9). It lists the "
               "personal information we hold about you as of the time it was generated. You "
               "may challenge its accuracy and completeness and have it amended. We answer "
               "within 30 days, extensible by 30 days with notice.";
    default:
        return "This export answers an access and portability request under the EU General "
               "Data Protection Regulation (Articles 15 and 20). It contains the personal data "
               "we hold about you, in a structured, machine-readable format, as of the time it "
               "was generated. You may ask for rectification or erasure, restrict or object to "
               "processing, and lodge a complaint with a supervisory authority. We answer "
               "within one month, extensible by two months with notice.";
    }
}

/* ---- requests ---- */

static const hm_stmt_t st_load = {
    "pv_load_request",
    "SELECT request_id::text, coalesce(guest_id::text, ''), type, status, jurisdiction, "
    "array_to_string(categories, ','), erasure_mode, requested_by_type, "
    "requested_by_id, pv_us(received_at), pv_us(started_at), pv_us(finished_at), pv_us(due_at), "
    "pv_us(export_expires_at), failure_reason, "
    "verification, "
    "(due_at < now() AND "
    "status IN (1, "
    "2)) FROM "
    "pv_requests WHERE "
    "request_id = "
    "$1::uuid",
    1};
static const hm_stmt_t st_load_parts = {
    "pv_load_parts",
    "SELECT participant, status, attempts, pv_us(last_attempt_at), pv_us(next_attempt_at), "
    "last_error, exported_records, receipt FROM pv_participants WHERE "
    "request_id = $1::uuid ORDER BY participant",
    1};

static const hm_stmt_t st_load_ext = {
    "pv_load_ext",
    "SELECT pv_us(previous_due_at), pv_us(due_at), reason, actor_type, actor_id, "
    "pv_us(extended_at) FROM pv_extensions WHERE request_id = $1::uuid ORDER BY id",
    1};

int pv_load_request(hm_db_t *db, hm_arena_t *a, const char *request_id,
                    Hospitality__Privacy__V1__PrivacyRequest **out)
{
    const char *p[1] = {request_id};
    PGresult *r, *pr;
    int rc = hm_db_exec_arena(db, a, &st_load, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) != 1)
        return HM_ENOTFOUND;
    if ((rc = hm_db_exec_arena(db, a, &st_load_parts, p, NULL, NULL, &pr)) != 0)
        return rc;
    Hospitality__Privacy__V1__PrivacyRequest *q = hm_arena_alloc(a, sizeof *q);
    hospitality__privacy__v1__privacy_request__init(q);
    q->request_id = hm_arena_strdup(a, pv_str(r, 0, 0));
    q->guest_id = hm_arena_strdup(a, pv_str(r, 0, 1));
    q->type = (int)pv_i64(r, 0, 2);
    q->status = (int)pv_i64(r, 0, 3);
    q->jurisdiction = (int)pv_i64(r, 0, 4);
    const char *cats = pv_str(r, 0, 5);
    q->categories = hm_arena_alloc(a, 8 * sizeof *q->categories);
    for (const char *c = cats; *c && q->n_categories < 8;) {
        q->categories[q->n_categories++] = (int)strtol(c, (char **)&c, 10);
        if (*c == ',')
            c++;
    }
    q->erasure_mode = (int)pv_i64(r, 0, 6);
    q->requested_by = hm_arena_alloc(a, sizeof *q->requested_by);
    hospitality__common__v1__actor__init(q->requested_by);
    q->requested_by->type = (int)pv_i64(r, 0, 7);
    q->requested_by->id = hm_arena_strdup(a, pv_str(r, 0, 8));
    q->received_at = pv_ts(a, r, 0, 9);
    q->started_at = pv_ts(a, r, 0, 10);
    q->finished_at = pv_ts(a, r, 0, 11);
    q->due_at = pv_ts(a, r, 0, 12);
    q->export_expires_at = pv_ts(a, r, 0, 13);
    q->failure_reason = hm_arena_strdup(a, pv_str(r, 0, 14));
    unsigned char *blob;
    size_t len;
    if (hm_db_get_bytea(r, 0, 15, a, &blob, &len) == 0)
        q->verification = (void *)protobuf_c_message_unpack(
            &hospitality__privacy__v1__erasure_verification__descriptor, hm_arena_pb(a), len, blob);
    q->overdue = strcmp(pv_str(r, 0, 16), "t") == 0;
    PGresult *er;
    if ((rc = hm_db_exec_arena(db, a, &st_load_ext, p, NULL, NULL, &er)) != 0)
        return rc;
    q->extensions = hm_arena_alloc(a, (size_t)(PQntuples(er) + 1) * sizeof(void *));
    for (int i = 0; i < PQntuples(er); i++) {
        Hospitality__Privacy__V1__DeadlineExtension *x = hm_arena_alloc(a, sizeof *x);
        hospitality__privacy__v1__deadline_extension__init(x);
        x->previous_due_at = pv_ts(a, er, i, 0);
        x->due_at = pv_ts(a, er, i, 1);
        x->reason = hm_arena_strdup(a, pv_str(er, i, 2));
        x->extended_by = hm_arena_alloc(a, sizeof *x->extended_by);
        hospitality__common__v1__actor__init(x->extended_by);
        x->extended_by->type = (int)pv_i64(er, i, 3);
        x->extended_by->id = hm_arena_strdup(a, pv_str(er, i, 4));
        x->extended_at = pv_ts(a, er, i, 5);
        q->extensions[q->n_extensions++] = x;
    }
    int n = PQntuples(pr);
    q->participants = hm_arena_alloc(a, (size_t)(n + 1) * sizeof(void *));
    for (int i = 0; i < n; i++) {
        Hospitality__Privacy__V1__ParticipantState *s = hm_arena_alloc(a, sizeof *s);
        hospitality__privacy__v1__participant_state__init(s);
        s->participant = hm_arena_strdup(a, pv_str(pr, i, 0));
        s->status = (int)pv_i64(pr, i, 1);
        s->attempts = (int)pv_i64(pr, i, 2);
        s->last_attempt_at = pv_ts(a, pr, i, 3);
        s->next_attempt_at = s->status == 4 ? pv_ts(a, pr, i, 4) : NULL;
        s->last_error = hm_arena_strdup(a, pv_str(pr, i, 5));
        s->exported_records = pv_i64(pr, i, 6);
        if (hm_db_get_bytea(pr, i, 7, a, &blob, &len) == 0)
            s->receipt = (void *)protobuf_c_message_unpack(
                &hospitality__privacy__v1__erasure_receipt__descriptor, hm_arena_pb(a), len, blob);
        q->participants[q->n_participants++] = s;
    }
    *out = q;
    return 0;
}

#define PV_MAX_PARTICIPANTS 32

int pv_participants(hm_arena_t *a, char ***names, size_t *n)
{
    hm_consul_peer_t peers[PV_MAX_PARTICIPANTS];
    int k = hm_peer_data_subjects(peers, PV_MAX_PARTICIPANTS);
    if (k < 0)
        return k;
    if (k > PV_MAX_PARTICIPANTS)
        k = PV_MAX_PARTICIPANTS;
    *names = hm_arena_alloc(a, (size_t)(k + 1) * sizeof(char *));
    for (int i = 0; i < k; i++)
        (*names)[i] = hm_arena_strdup(a, peers[i].service);
    *n = (size_t)k;
    return k > 0 ? 0 : HM_EUNAVAIL;
}

/* ---- metrics ---- */

static _Atomic uint64_t metrics[PV_M_COUNT];
static _Atomic int64_t overdue_now;

void pv_metric_inc(int which)
{
    atomic_fetch_add(&metrics[which], 1);
}

void pv_metric_set_overdue(int64_t n)
{
    atomic_store(&overdue_now, n);
}

void pv_metrics(FILE *out, void *arg)
{
    (void)arg;
#define M(i) (unsigned long long)atomic_load(&metrics[i])
    fprintf(out,
            "# HELP privacyd_requests_finished_total Data-subject requests finished, by type and "
            "outcome.\n# TYPE privacyd_requests_finished_total counter\n"
            "privacyd_requests_finished_total{type=\"export\",outcome=\"completed\"} %llu\n"
            "privacyd_requests_finished_total{type=\"export\",outcome=\"failed\"} %llu\n"
            "privacyd_requests_finished_total{type=\"erasure\",outcome=\"completed\"} %llu\n",
            M(PV_M_EXPORT_DONE), M(PV_M_EXPORT_FAILED), M(PV_M_ERASURE_DONE));
    fprintf(out,
            "# HELP privacyd_request_alerts_total Alerts raised for failed or overdue requests.\n"
            "# TYPE privacyd_request_alerts_total counter\n"
            "privacyd_request_alerts_total{kind=\"failed\"} %llu\n"
            "privacyd_request_alerts_total{kind=\"overdue\"} %llu\n",
            M(PV_M_ALERT_FAILED), M(PV_M_ALERT_OVERDUE));
    fprintf(out,
            "# HELP privacyd_overdue_requests Open requests past their statutory deadline.\n"
            "# TYPE privacyd_overdue_requests gauge\nprivacyd_overdue_requests %lld\n",
            (long long)atomic_load(&overdue_now));
    fprintf(out,
            "# HELP privacyd_consent_cache_total GetConsent answers from the cache or not.\n"
            "# TYPE privacyd_consent_cache_total counter\n"
            "privacyd_consent_cache_total{result=\"hit\"} %llu\n"
            "privacyd_consent_cache_total{result=\"miss\"} %llu\n",
            M(PV_M_CACHE_HIT), M(PV_M_CACHE_MISS));
    fprintf(out,
            "# HELP privacyd_participant_calls_total Calls to data-subject participants.\n"
            "# TYPE privacyd_participant_calls_total counter\n"
            "privacyd_participant_calls_total{result=\"ok\"} %llu\n"
            "privacyd_participant_calls_total{result=\"error\"} %llu\n",
            M(PV_M_PEER_OK), M(PV_M_PEER_ERR));
#undef M
}
