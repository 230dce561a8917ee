/*
 * workflow.c - the background side of data-subject requests: the parallel fan-out to the
 * participants (one thread per participant, no transaction open meanwhile), assembling and
 * sealing exports, the durable erasure workflow with per-participant retries and backoff, the
 * completeness proof (an export re-run after every participant confirmed) and the alerts for
 * failed and overdue requests.
 *
 * Requests are claimed with a lease (lease_until) by one UPDATE ... FOR UPDATE SKIP LOCKED, so
 * replicas never work on the same request at once, and a replica that dies mid-round only
 * delays the request until the lease lapses. Every outcome is written in one transaction with
 * its event and audit entry.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hm/crypto.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hm/peer.h"
#include "pv.h"

#define MAX_PARTS     32
#define EXPORT_METHOD "/hospitality.privacy.v1.DataSubjectService/ExportSubjectData"
#define ERASE_METHOD  "/hospitality.privacy.v1.DataSubjectService/EraseSubjectData"
#define CAT_CONSENTS  HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_CONSENTS
#define ST_CONFIRMED  HOSPITALITY__PRIVACY__V1__PARTICIPANT_STATUS__PARTICIPANT_STATUS_CONFIRMED
#define ST_RETRYING   HOSPITALITY__PRIVACY__V1__PARTICIPANT_STATUS__PARTICIPANT_STATUS_RETRYING

/* ---- fan-out ---- */

/* One participant call, run on its own thread with its own arena. */
typedef struct job {
    const char *participant;
    const char *method;
    const ProtobufCMessage *req;
    const ProtobufCMessageDescriptor *resp_desc;
    hm_arena_t arena; /* the response and the status strings; deinit by fan_out_done */
    hm_status_t st;
    ProtobufCMessage *resp;
    int attempts; /* the participant's failed attempts so far (backoff) */
    pthread_t thread;
    bool started;
} job_t;

static void *job_run(void *arg)
{
    job_t *j = arg;
    hm_peer_opts_t o = {.timeout_ms = pv_cfg.participant_timeout_ms, .max_attempts = 2};
    j->st = hm_peer_call(NULL, &j->arena, j->participant, j->method, j->req, j->resp_desc, &o,
                         &j->resp);
    pv_metric_inc(hm_status_ok(j->st) ? PV_M_PEER_OK : PV_M_PEER_ERR);
    return NULL;
}

/* Runs every job in parallel and waits for all of them. */
static void fan_out(job_t *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        hm_arena_init(&jobs[i].arena, 0);
        jobs[i].started = pthread_create(&jobs[i].thread, NULL, job_run, &jobs[i]) == 0;
        if (!jobs[i].started) /* no thread: run it here */
            job_run(&jobs[i]);
    }
    for (size_t i = 0; i < n; i++)
        if (jobs[i].started)
            pthread_join(jobs[i].thread, NULL);
}

static void fan_out_done(job_t *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hm_arena_deinit(&jobs[i].arena);
}

static const char *job_error(hm_arena_t *a, const job_t *j)
{
    return hm_arena_printf(a, "%s: %s", hm_code_name(j->st.code),
                           j->st.message ? j->st.message : "");
}

/* Exponential backoff with jitter (0.5..1.0 of the step) after `attempts` failures. */
static int64_t backoff_ms(int attempts)
{
    int64_t d = pv_cfg.retry_base_ms;
    for (int i = 1; i < attempts && d < pv_cfg.retry_max_ms; i++)
        d *= 2;
    if (d > pv_cfg.retry_max_ms)
        d = pv_cfg.retry_max_ms;
    uint32_t r;
    hm_random_bytes(&r, sizeof r);
    return d / 2 + (int64_t)(r % (uint32_t)(d / 2 + 1));
}

/* ---- claiming ---- */

static const hm_stmt_t st_claim = {
    "pv_claim",
    "UPDATE pv_requests SET status = 2, started_at = coalesce(started_at, clock_timestamp()), "
    "lease_until = clock_timestamp() + $2::bigint * interval '1 millisecond', attempts = "
    "attempts + 1 WHERE request_id = (SELECT request_id FROM pv_requests WHERE type = $1::int AND "
    "status IN (1, 2) AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < "
    "now()) ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING request_id::text, "
    "guest_id::text, jurisdiction, array_to_string(categories, ','), include_csv, attempts, "
    "erasure_mode",
    2};
static const hm_stmt_t st_parts = {
    "pv_parts",
    "SELECT participant, status, attempts, (next_attempt_at IS NULL OR next_attempt_at <= now()), "
    "erase_round FROM pv_participants WHERE request_id = $1::uuid ORDER BY participant",
    1};

typedef struct claimed {
    const char *request_id, *guest;
    int jurisdiction, attempts, mode;
    int categories[8];
    size_t ncategories;
    bool include_csv;
} claimed_t;

static int claim(hm_db_t *db, hm_arena_t *a, int type, claimed_t *c)
{
    int64_t lease = 2 * pv_cfg.participant_timeout_ms + 10000;
    const char *p[2] = {hm_db_param_int64(a, type), hm_db_param_int64(a, lease)};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_claim, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    if (PQntuples(r) == 0)
        return HM_ENOTFOUND;
    memset(c, 0, sizeof *c);
    c->request_id = pv_str(r, 0, 0);
    c->guest = pv_str(r, 0, 1);
    c->jurisdiction = (int)pv_i64(r, 0, 2);
    for (const char *s = pv_str(r, 0, 3); *s && c->ncategories < 8;) {
        c->categories[c->ncategories++] = (int)strtol(s, (char **)&s, 10);
        if (*s == ',')
            s++;
    }
    c->include_csv = strcmp(pv_str(r, 0, 4), "t") == 0;
    c->attempts = (int)pv_i64(r, 0, 5);
    c->mode = (int)pv_i64(r, 0, 6);
    return 0;
}

/* ---- assembling an export ---- */

static bool wanted(const claimed_t *c, int category)
{
    if (c->ncategories == 0)
        return true;
    for (size_t i = 0; i < c->ncategories; i++)
        if (c->categories[i] == category)
            return true;
    return false;
}

/* Appends s to a CSV field, quoted when it must be (RFC 4180). */
static void csv_field(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s), need = 2 * n + 3;
    if (*len + need + 2 > *cap) {
        *cap = (*cap + need + 2) * 2;
        *buf = hm_xrealloc(*buf, *cap);
    }
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    char *o = *buf + *len;
    if (quote)
        *o++ = '"';
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            *o++ = '"';
        *o++ = *p;
    }
    if (quote)
        *o++ = '"';
    *len = (size_t)(o - *buf);
}

static void csv_raw(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        *cap = (*cap + n + 1) * 2;
        *buf = hm_xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

/* A JSON value as CSV text (strings raw, null empty, the rest as compact JSON). */
static char *csv_value(const json_t *v)
{
    if (!v || json_is_null(v))
        return hm_xstrdup("");
    if (json_is_string(v))
        return hm_xstrdup(json_string_value(v));
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return s ? s : hm_xstrdup("");
}

/* A section's records (a JSON array of flat objects) as CSV: the union of the keys in the order
 * first seen is the header row. */
static char *to_csv(hm_arena_t *a, const json_t *arr)
{
    json_t *keys = json_array();
    size_t i, k;
    json_t *rec;
    json_array_foreach(arr, i, rec)
    {
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)rec, key, v)
        {
            bool seen = false;
            for (k = 0; k < json_array_size(keys) && !seen; k++)
                seen = strcmp(json_string_value(json_array_get(keys, k)), key) == 0;
            if (!seen)
                json_array_append_new(keys, json_string(key));
        }
    }
    size_t len = 0, cap = 256;
    char *buf = hm_xmalloc(cap);
    for (k = 0; k < json_array_size(keys); k++) {
        if (k)
            csv_raw(&buf, &len, &cap, ",");
        csv_field(&buf, &len, &cap, json_string_value(json_array_get(keys, k)));
    }
    csv_raw(&buf, &len, &cap, "\r\n");
    json_array_foreach(arr, i, rec)
    {
        for (k = 0; k < json_array_size(keys); k++) {
            if (k)
                csv_raw(&buf, &len, &cap, ",");
            char *s = csv_value(json_object_get(rec, json_string_value(json_array_get(keys, k))));
            csv_field(&buf, &len, &cap, s);
            free(s);
        }
        csv_raw(&buf, &len, &cap, "\r\n");
    }
    json_decref(keys);
    char *out = hm_arena_strndup(a, buf, len);
    free(buf);
    return out;
}

static char *iso(hm_arena_t *a, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char b[40];
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
    return hm_arena_printf(a, "%s.%06lldZ", b, (long long)(us % 1000000));
}

/* Builds the DataExport from the participants' answers (all OK). */
static Hospitality__Privacy__V1__DataExport *assemble(hm_arena_t *a, const claimed_t *c,
                                                      job_t *jobs, size_t n, int64_t now_us)
{
    Hospitality__Privacy__V1__DataExport *e = hm_arena_alloc(a, sizeof *e);
    hospitality__privacy__v1__data_export__init(e);
    e->request_id = (char *)c->request_id;
    e->guest_id = (char *)c->guest;
    e->jurisdiction = c->jurisdiction;
    e->disclaimer = (char *)pv_disclaimer(c->jurisdiction);
    e->generated_at = hm_timestamp_from_us(a, now_us);
    e->expires_at = hm_timestamp_from_us(a, now_us + pv_cfg.export_ttl_ms * 1000);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ((Hospitality__Privacy__V1__ExportSubjectDataResponse *)jobs[i].resp)->n_sections;
    e->summary = hm_arena_alloc(a, (total + 1) * sizeof(void *));
    e->csv_files = hm_arena_alloc(a, (total + 1) * sizeof(void *));
    json_t *doc = json_object(), *summary = json_array(), *sections = json_object();
    json_object_set_new(doc, "summary", summary);
    json_object_set_new(doc, "disclaimer", json_string(e->disclaimer));
    json_object_set_new(doc, "request_id", json_string(c->request_id));
    json_object_set_new(doc, "guest_id", json_string(c->guest));
    json_object_set_new(doc, "jurisdiction", json_string(pv_jurisdiction_name(c->jurisdiction)));
    json_object_set_new(doc, "generated_at", json_string(iso(a, now_us)));
    for (size_t i = 0; i < n; i++) {
        const Hospitality__Privacy__V1__ExportSubjectDataResponse *r = (const void *)jobs[i].resp;
        for (size_t s = 0; s < r->n_sections; s++) {
            const Hospitality__Privacy__V1__DataSection *sec = r->sections[s];
            if (!sec->section || !*sec->section || !wanted(c, sec->category))
                continue;
            json_error_t err;
            json_t *arr = json_loads(sec->records_json ? sec->records_json : "[]", 0, &err);
            if (!json_is_array(arr)) {
                HM_WARN("export %s: section %s of %s is not a JSON array", c->request_id,
                        sec->section, jobs[i].participant);
                json_decref(arr);
                arr = json_array();
            }
            const char *name = sec->section;
            if (json_object_get(sections, name))
                name = hm_arena_printf(a, "%s.%s", jobs[i].participant, sec->section);
            Hospitality__Privacy__V1__SectionCount *sc = hm_arena_alloc(a, sizeof *sc);
            hospitality__privacy__v1__section_count__init(sc);
            sc->section = hm_arena_strdup(a, name);
            sc->category = sec->category;
            sc->count = (int64_t)json_array_size(arr);
            e->summary[e->n_summary++] = sc;
            json_t *js = json_object();
            json_object_set_new(js, "section", json_string(name));
            json_object_set_new(js, "participant", json_string(jobs[i].participant));
            json_object_set_new(js, "count", json_integer(sc->count));
            json_array_append_new(summary, js);
            if (c->include_csv) {
                Hospitality__Privacy__V1__CsvFile *f = hm_arena_alloc(a, sizeof *f);
                hospitality__privacy__v1__csv_file__init(f);
                f->section = sc->section;
                f->file_name = hm_arena_printf(a, "%s.csv", name);
                f->content = to_csv(a, arr);
                e->csv_files[e->n_csv_files++] = f;
            }
            json_object_set_new(sections, name, arr);
        }
    }
    const char *key;
    json_t *v;
    json_object_foreach(sections, key, v) json_object_set(doc, key, v);
    json_decref(sections);
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    e->json_document = hm_arena_strdup(a, s ? s : "{}");
    free(s);
    return e;
}

/* ---- exports ---- */

static const hm_stmt_t st_part_result = {
    "pv_part_result",
    "UPDATE pv_participants SET status = $3::int, attempts = attempts + 1, last_attempt_at = "
    "clock_timestamp(), next_attempt_at = clock_timestamp() + $4::bigint * interval '1 "
    "millisecond', last_error = $5, exported_records = $6::bigint, receipt = coalesce($7::bytea, "
    "receipt) WHERE request_id = $1::uuid AND participant = $2",
    7};
static const hm_stmt_t st_export_done = {
    "pv_export_done",
    "UPDATE pv_requests SET status = 3, finished_at = clock_timestamp(), export_expires_at = "
    "to_timestamp($2::double precision / 1e6), lease_until = NULL WHERE request_id = $1::uuid "
    "AND status = 2 RETURNING 1",
    2};
static const hm_stmt_t st_export_store = {
    "pv_export_store",
    "INSERT INTO pv_exports (request_id, sealed, generated_at, expires_at) VALUES ($1::uuid, "
    "$2::bytea, to_timestamp($3::double precision / 1e6), to_timestamp($4::double precision / "
    "1e6))",
    4};
static const hm_stmt_t st_request_retry = {
    "pv_request_retry",
    "UPDATE pv_requests SET next_attempt_at = clock_timestamp() + $2::bigint * interval '1 "
    "millisecond', lease_until = NULL WHERE request_id = $1::uuid AND status = 2 RETURNING 1",
    2};
static const hm_stmt_t st_request_failed = {
    "pv_request_failed",
    "UPDATE pv_requests SET status = 4, finished_at = clock_timestamp(), failure_reason = $2, "
    "lease_until = NULL WHERE request_id = $1::uuid AND status = 2 RETURNING 1",
    2};

typedef struct export_tx {
    hm_arena_t *arena;
    const claimed_t *c;
    job_t *jobs;
    size_t n;
    bool all_ok, give_up;
    const char *failure;
    const unsigned char *sealed;
    size_t sealed_len;
    int64_t now_us;
    int nsections;
    bool gone; /* out: the request disappeared (erased) meanwhile */
} export_tx_t;

static int record_parts(hm_db_t *db, hm_arena_t *a, const char *request_id, job_t *jobs, size_t n,
                        bool export, int64_t retry_ms)
{
    for (size_t i = 0; i < n; i++) {
        bool ok = hm_status_ok(jobs[i].st);
        int64_t records = 0;
        if (ok && export) {
            const Hospitality__Privacy__V1__ExportSubjectDataResponse *r =
                (const void *)jobs[i].resp;
            for (size_t s = 0; s < r->n_sections; s++)
                records += r->sections[s]->record_count;
        }
        const char *p[7] = {request_id,
                            jobs[i].participant,
                            hm_db_param_int64(a, ok ? ST_CONFIRMED : ST_RETRYING),
                            hm_db_param_int64(a, ok ? 0 : retry_ms),
                            ok ? "" : job_error(a, &jobs[i]),
                            hm_db_param_int64(a, records),
                            NULL};
        int rc = hm_db_exec(db, &st_part_result, p, NULL, NULL, NULL);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int export_fn(hm_db_t *db, void *arg)
{
    export_tx_t *t = arg;
    hm_arena_t *a = t->arena;
    const claimed_t *c = t->c;
    int64_t retry = backoff_ms(c->attempts);
    int rc = record_parts(db, a, c->request_id, t->jobs, t->n, true, retry);
    if (rc != 0)
        return rc;
    PGresult *r;
    const char *id = c->request_id;
    if (t->all_ok) {
        int64_t exp_us = t->now_us + pv_cfg.export_ttl_ms * 1000;
        const char *p[2] = {id, pv_us_param(a, exp_us)};
        if ((rc = hm_db_exec_arena(db, a, &st_export_done, p, NULL, NULL, &r)) != 0)
            return rc;
        if (PQntuples(r) == 0)
            return t->gone = true, HM_ENOTFOUND;
        const char *sp[4] = {id, (const char *)t->sealed, pv_us_param(a, t->now_us),
                             pv_us_param(a, exp_us)};
        int lens[4] = {0, (int)t->sealed_len, 0, 0}, fmts[4] = {0, 1, 0, 0};
        if ((rc = hm_db_exec(db, &st_export_store, sp, lens, fmts, NULL)) != 0)
            return rc;
        Hospitality__Events__V1__GuestDataExported ev =
            HOSPITALITY__EVENTS__V1__GUEST_DATA_EXPORTED__INIT;
        ev.request_id = (char *)id;
        ev.guest_id = (char *)c->guest;
        ev.expires_at = hm_timestamp_from_us(a, exp_us);
        ev.section_count = t->nsections;
        if ((rc = hm_publish(db, a, "guest.data.exported", c->guest, NULL, &ev.base)) != 0)
            return rc;
        return pv_audit(db, a, HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM, "privacyd",
                        "export.completed", c->guest, id,
                        hm_arena_printf(a, "sections=%d;participants=%zu", t->nsections, t->n));
    }
    if (t->give_up) {
        const char *p[2] = {id, t->failure};
        if ((rc = hm_db_exec_arena(db, a, &st_request_failed, p, NULL, NULL, &r)) != 0)
            return rc;
        if (PQntuples(r) == 0)
            return t->gone = true, HM_ENOTFOUND;
        return pv_audit(db, a, HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM, "privacyd",
                        "export.failed", c->guest, id, t->failure);
    }
    const char *p[2] = {id, hm_db_param_int64(a, retry)};
    if ((rc = hm_db_exec_arena(db, a, &st_request_retry, p, NULL, NULL, &r)) != 0)
        return rc;
    if (PQntuples(r) == 0)
        return t->gone = true, HM_ENOTFOUND;
    return 0;
}

/* The participants of a request, and ExportSubjectData jobs for all of them. */
static int export_jobs(hm_db_t *db, hm_arena_t *a, const char *request_id, const char *guest,
                       const claimed_t *c, job_t **jobs, size_t *n, PGresult **parts)
{
    const char *p[1] = {request_id};
    int rc = hm_db_exec_arena(db, a, &st_parts, p, NULL, NULL, parts);
    if (rc != 0)
        return rc;
    *n = (size_t)PQntuples(*parts);
    if (*n > MAX_PARTS)
        *n = MAX_PARTS;
    *jobs = hm_arena_zalloc(a, (*n + 1) * sizeof(job_t));
    Hospitality__Privacy__V1__ExportSubjectDataRequest *req = hm_arena_alloc(a, sizeof *req);
    hospitality__privacy__v1__export_subject_data_request__init(req);
    req->request_id = (char *)request_id;
    req->guest_id = (char *)guest;
    if (c) {
        req->categories = (Hospitality__Privacy__V1__DataCategory *)c->categories;
        req->n_categories = c->ncategories;
    }
    for (size_t i = 0; i < *n; i++) {
        (*jobs)[i].participant = pv_str(*parts, (int)i, 0);
        (*jobs)[i].method = EXPORT_METHOD;
        (*jobs)[i].req = &req->base;
        (*jobs)[i].resp_desc = &hospitality__privacy__v1__export_subject_data_response__descriptor;
    }
    return 0;
}

static int run_export(hm_db_t *db, hm_arena_t *a, hm_crypto_t *crypto, const claimed_t *c)
{
    job_t *jobs;
    size_t n;
    PGresult *parts;
    int rc = export_jobs(db, a, c->request_id, c->guest, c, &jobs, &n, &parts);
    if (rc != 0)
        return rc;
    fan_out(jobs, n);
    export_tx_t t = {
        .arena = a, .c = c, .jobs = jobs, .n = n, .all_ok = n > 0, .now_us = hm_now_ms() * 1000};
    char *failure = "";
    for (size_t i = 0; i < n; i++)
        if (!hm_status_ok(jobs[i].st)) {
            t.all_ok = false;
            failure =
                hm_arena_printf(a, "%s%s%s", failure, *failure ? "; " : "", job_error(a, &jobs[i]));
        }
    if (n == 0)
        failure = "no participants";
    t.failure = failure;
    t.give_up = !t.all_ok && c->attempts >= pv_cfg.export_attempts;
    if (t.all_ok) {
        Hospitality__Privacy__V1__DataExport *e = assemble(a, c, jobs, n, t.now_us);
        t.nsections = (int)e->n_summary;
        size_t len = protobuf_c_message_get_packed_size(&e->base);
        uint8_t *buf = hm_arena_alloc(a, len + 1);
        protobuf_c_message_pack(&e->base, buf);
        unsigned char *sealed;
        if (hm_crypto_encrypt(crypto, a, buf, len,
                              hm_arena_printf(a, "privacyd:export:%s", c->request_id), &sealed,
                              &t.sealed_len) != 0) {
            fan_out_done(jobs, n);
            return HM_ECRYPTO;
        }
        t.sealed = sealed;
    }
    rc = hm_db_tx(db, export_fn, &t, HM_DB_READ_COMMITTED);
    fan_out_done(jobs, n);
    if (t.gone)
        return 0;
    if (rc != 0)
        return rc;
    if (t.all_ok) {
        pv_metric_inc(PV_M_EXPORT_DONE);
        HM_INFO("export %s completed: %d sections from %zu participants", c->request_id,
                t.nsections, n);
    } else if (t.give_up) {
        pv_metric_inc(PV_M_EXPORT_FAILED);
        pv_metric_inc(PV_M_ALERT_FAILED);
        char fields[512];
        snprintf(fields, sizeof fields,
                 "\"event\":\"privacy_request_failed\",\"alert\":true,\"request_id\":\"%s\","
                 "\"type\":\"export\",\"attempts\":%d",
                 c->request_id, c->attempts);
        hm_log_write(HM_LOG_ERROR, fields, "export request failed after %d attempts: %s",
                     c->attempts, failure);
    } else {
        HM_WARN("export %s: attempt %d failed (%s); retrying", c->request_id, c->attempts, failure);
    }
    return 0;
}

int pv_task_exports(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    hm_crypto_t *crypto = app; /* main.c: the daemon's app is its own PII keyring */
    for (int i = 0; i < 8; i++) {
        claimed_t c;
        int rc = claim(db, arena, HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_EXPORT, &c);
        if (rc == HM_ENOTFOUND)
            return 0;
        if (rc != 0)
            return rc;
        if ((rc = run_export(db, arena, crypto, &c)) != 0)
            return rc;
    }
    return 0;
}

/* ---- erasures ---- */

/* Lower-case hex SHA-256 over a receipt's other fields in canonical form. */
static char *receipt_digest(hm_arena_t *a, const Hospitality__Privacy__V1__ErasureReceipt *r)
{
    char *s = hm_arena_printf(a, "%s|%s|%s|%s|%lld|deleted", r->receipt_id ? r->receipt_id : "",
                              r->request_id ? r->request_id : "", r->guest_id ? r->guest_id : "",
                              r->participant ? r->participant : "",
                              (long long)hm_timestamp_to_us(r->completed_at));
    for (size_t i = 0; i < r->n_deleted; i++)
        s = hm_arena_printf(a, "%s|%s=%lld", s, r->deleted[i]->section,
                            (long long)r->deleted[i]->count);
    s = hm_arena_printf(a, "%s|anonymized", s);
    for (size_t i = 0; i < r->n_anonymized; i++)
        s = hm_arena_printf(a, "%s|%s=%lld", s, r->anonymized[i]->section,
                            (long long)r->anonymized[i]->count);
    char *h = hm_arena_alloc(a, 65);
    pv_sha256_hex(s, strlen(s), h);
    return h;
}

static const hm_stmt_t st_erasure_done = {
    "pv_erasure_done",
    "UPDATE pv_requests SET status = 3, finished_at = clock_timestamp(), lease_until = NULL, "
    "verification = $2::bytea WHERE request_id = $1::uuid AND status = 2 RETURNING 1",
    2};
/* The subject's id goes from every request of theirs; the hash stays. */
static const hm_stmt_t st_forget_guest = {
    "pv_forget_guest",
    "UPDATE pv_requests SET guest_id = NULL, requested_by_id = CASE WHEN requested_by_id = "
    "$1::text "
    "THEN '' ELSE requested_by_id END WHERE guest_id = $1::uuid AND status NOT IN (1, 2)",
    1};
static const hm_stmt_t st_receipts = {
    "pv_receipts",
    "SELECT participant, receipt FROM pv_participants WHERE request_id = $1::uuid AND receipt IS "
    "NOT NULL",
    1};
static const hm_stmt_t st_receipt_set = {
    "pv_receipt_set",
    "UPDATE pv_participants SET receipt = $3::bytea WHERE request_id = $1::uuid AND participant "
    "= $2",
    3};
static const hm_stmt_t st_verification_set = {
    "pv_verification_set",
    "UPDATE pv_requests SET verification = $2::bytea WHERE request_id = "
    "$1::uuid",
    2};
static const hm_stmt_t st_part_again = {
    "pv_part_again",
    "UPDATE pv_participants SET status = 4, erase_round = erase_round + 1, next_attempt_at = "
    "clock_timestamp() + $3::bigint * interval '1 millisecond', last_error = $4 WHERE request_id "
    "= $1::uuid AND participant = $2",
    4};
static const hm_stmt_t st_erasure_next = {
    "pv_erasure_next",
    "UPDATE pv_requests r SET lease_until = NULL, next_attempt_at = coalesce((SELECT "
    "min(next_attempt_at) FROM pv_participants p WHERE p.request_id = r.request_id AND p.status "
    "<> 3), clock_timestamp() + $2::bigint * interval '1 millisecond') WHERE request_id = "
    "$1::uuid AND status = 2",
    2};

static uint8_t *pack(hm_arena_t *a, const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = hm_arena_alloc(a, *len + 1);
    protobuf_c_message_pack(m, buf);
    return buf;
}

typedef struct erase_tx {
    hm_arena_t *arena;
    const claimed_t *c;
    job_t *jobs; /* the erase round (may be empty) */
    size_t n;
    /* verification, when every participant had confirmed */
    Hospitality__Privacy__V1__ErasureVerification *verification;
    job_t *vjobs;
    size_t nv;
    bool verified; /* every participant answered the re-run export */
    bool completed;
    int nparticipants;
} erase_tx_t;

static int erase_fn(hm_db_t *db, void *arg)
{
    erase_tx_t *t = arg;
    hm_arena_t *a = t->arena;
    const claimed_t *c = t->c;
    int rc;
    t->completed = false;
    for (size_t i = 0; i < t->n; i++) {
        job_t *j = &t->jobs[i];
        bool ok = hm_status_ok(j->st) && j->resp &&
                  ((Hospitality__Privacy__V1__EraseSubjectDataResponse *)j->resp)->receipt;
        const char *sealed = NULL;
        int lens[7] = {0}, fmts[7] = {0};
        if (ok) {
            Hospitality__Privacy__V1__ErasureReceipt *rc_ =
                ((Hospitality__Privacy__V1__EraseSubjectDataResponse *)j->resp)->receipt;
            if (!rc_->participant || !*rc_->participant)
                rc_->participant = (char *)j->participant;
            if (!rc_->digest || !*rc_->digest)
                rc_->digest = receipt_digest(a, rc_);
            size_t len;
            sealed = (const char *)pack(a, &rc_->base, &len);
            lens[6] = (int)len;
            fmts[6] = 1;
        }
        const char *p[7] = {c->request_id,
                            j->participant,
                            hm_db_param_int64(a, ok ? ST_CONFIRMED : ST_RETRYING),
                            hm_db_param_int64(a, ok ? 0 : backoff_ms(j->attempts + 1)),
                            ok                    ? ""
                            : hm_status_ok(j->st) ? "no receipt"
                                                  : job_error(a, j),
                            "0",
                            sealed};
        if ((rc = hm_db_exec(db, &st_part_result, p, lens, fmts, NULL)) != 0)
            return rc;
    }
    if (t->verification) {
        size_t len;
        uint8_t *v = pack(a, &t->verification->base, &len);
        const char *p[2] = {c->request_id, (const char *)v};
        int lens[2] = {0, (int)len}, fmts[2] = {0, 1};
        if (t->verification->verified_empty) {
            PGresult *r;
            if ((rc = hm_db_exec_arena(db, a, &st_erasure_done, p, lens, fmts, &r)) != 0)
                return rc;
            if (PQntuples(r) == 0)
                return HM_ENOTFOUND;
            /* The receipts keep their digests (bound to the id) but lose the id itself. */
            const char *rp[1] = {c->request_id};
            if ((rc = hm_db_exec_arena(db, a, &st_receipts, rp, NULL, NULL, &r)) != 0)
                return rc;
            for (int i = 0; i < PQntuples(r); i++) {
                unsigned char *blob;
                size_t blen;
                if (hm_db_get_bytea(r, i, 1, a, &blob, &blen) != 0)
                    continue;
                Hospitality__Privacy__V1__ErasureReceipt *rec = (void *)protobuf_c_message_unpack(
                    &hospitality__privacy__v1__erasure_receipt__descriptor, hm_arena_pb(a), blen,
                    blob);
                if (!rec)
                    continue;
                rec->guest_id = "";
                size_t plen;
                const char *sp[3] = {c->request_id, pv_str(r, i, 0),
                                     (const char *)pack(a, &rec->base, &plen)};
                int sl[3] = {0, 0, (int)plen}, sf[3] = {0, 0, 1};
                if ((rc = hm_db_exec(db, &st_receipt_set, sp, sl, sf, NULL)) != 0)
                    return rc;
            }
            Hospitality__Events__V1__GuestDataDeleted ev =
                HOSPITALITY__EVENTS__V1__GUEST_DATA_DELETED__INIT;
            ev.request_id = (char *)c->request_id;
            ev.guest_id = (char *)c->guest;
            ev.participant_count = t->nparticipants;
            if ((rc = hm_publish(db, a, "guest.data.deleted", c->guest, NULL, &ev.base)) != 0)
                return rc;
            if ((rc = pv_audit(db, a, HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM,
                               "privacyd", "erasure.completed", c->guest, c->request_id,
                               hm_arena_printf(a, "participants=%d;verified_empty=true",
                                               t->nparticipants))) != 0)
                return rc;
            const char *gp[1] = {c->guest};
            if ((rc = hm_db_exec(db, &st_forget_guest, gp, NULL, NULL, NULL)) != 0)
                return rc;
            t->completed = true;
            return 0;
        }
        if ((rc = hm_db_exec(db, &st_verification_set, p, lens, fmts, NULL)) != 0)
            return rc;
        /* Records found again: those participants erase again, under a new round id. */
        for (size_t i = 0; i < t->nv; i++) {
            const Hospitality__Privacy__V1__ExportSubjectDataResponse *r =
                (const void *)t->vjobs[i].resp;
            int64_t left = 0;
            for (size_t s = 0; s < r->n_sections; s++)
                left += r->sections[s]->record_count;
            if (left == 0)
                continue;
            const char *pp[4] = {
                c->request_id, t->vjobs[i].participant, hm_db_param_int64(a, pv_cfg.retry_base_ms),
                hm_arena_printf(a, "verification found %lld records", (long long)left)};
            if ((rc = hm_db_exec(db, &st_part_again, pp, NULL, NULL, NULL)) != 0)
                return rc;
        }
        if ((rc = pv_audit(
                 db, a, HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM, "privacyd",
                 "erasure.verification_failed", c->guest, c->request_id,
                 hm_arena_printf(a, "residual_sections=%zu", t->verification->n_residual))) != 0)
            return rc;
    }
    const char *p[2] = {c->request_id, hm_db_param_int64(a, pv_cfg.retry_base_ms)};
    return hm_db_exec(db, &st_erasure_next, p, NULL, NULL, NULL);
}

static int run_erasure(hm_db_t *db, hm_arena_t *a, const claimed_t *c)
{
    const char *p[1] = {c->request_id};
    PGresult *parts;
    int rc = hm_db_exec_arena(db, a, &st_parts, p, NULL, NULL, &parts);
    if (rc != 0)
        return rc;
    int np = PQntuples(parts);
    if (np > MAX_PARTS)
        np = MAX_PARTS;
    job_t *jobs = hm_arena_zalloc(a, (size_t)(np + 1) * sizeof(job_t));
    size_t n = 0;
    int confirmed = 0;
    for (int i = 0; i < np; i++) {
        if (pv_i64(parts, i, 1) == ST_CONFIRMED) {
            confirmed++;
            continue;
        }
        if (strcmp(pv_str(parts, i, 3), "t") != 0) /* not due yet */
            continue;
        Hospitality__Privacy__V1__EraseSubjectDataRequest *req = hm_arena_alloc(a, sizeof *req);
        hospitality__privacy__v1__erase_subject_data_request__init(req);
        int64_t round = pv_i64(parts, i, 4);
        req->request_id = round ? hm_arena_printf(a, "%s:%lld", c->request_id, (long long)round)
                                : (char *)c->request_id;
        req->guest_id = (char *)c->guest;
        req->mode = c->mode;
        jobs[n].participant = pv_str(parts, i, 0);
        jobs[n].attempts = (int)pv_i64(parts, i, 2);
        jobs[n].method = ERASE_METHOD;
        jobs[n].req = &req->base;
        jobs[n].resp_desc = &hospitality__privacy__v1__erase_subject_data_response__descriptor;
        n++;
    }
    fan_out(jobs, n);
    int newly = 0;
    for (size_t i = 0; i < n; i++)
        if (hm_status_ok(jobs[i].st) && jobs[i].resp &&
            ((Hospitality__Privacy__V1__EraseSubjectDataResponse *)jobs[i].resp)->receipt)
            newly++;
        else
            HM_WARN("erasure %s: %s did not confirm (%s); retrying with backoff", c->request_id,
                    jobs[i].participant, job_error(a, &jobs[i]));
    erase_tx_t t = {.arena = a, .c = c, .jobs = jobs, .n = n, .nparticipants = np};
    job_t *vjobs = NULL;
    size_t nv = 0;
    if (np > 0 && confirmed + newly == np) {
        /* Every participant confirmed: the proof is an export that finds nothing. */
        PGresult *vparts;
        if ((rc = export_jobs(db, a, c->request_id, c->guest, NULL, &vjobs, &nv, &vparts)) != 0) {
            fan_out_done(jobs, n);
            return rc;
        }
        fan_out(vjobs, nv);
        bool all = true;
        for (size_t i = 0; i < nv; i++)
            all = all && hm_status_ok(vjobs[i].st);
        if (all) {
            Hospitality__Privacy__V1__ErasureVerification *v = hm_arena_alloc(a, sizeof *v);
            hospitality__privacy__v1__erasure_verification__init(v);
            v->verified_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
            size_t cap = 0;
            for (size_t i = 0; i < nv; i++)
                cap += ((Hospitality__Privacy__V1__ExportSubjectDataResponse *)vjobs[i].resp)
                           ->n_sections;
            v->residual = hm_arena_alloc(a, (cap + 1) * sizeof(void *));
            for (size_t i = 0; i < nv; i++) {
                const Hospitality__Privacy__V1__ExportSubjectDataResponse *r =
                    (const void *)vjobs[i].resp;
                for (size_t s = 0; s < r->n_sections; s++) {
                    if (r->sections[s]->record_count == 0)
                        continue;
                    Hospitality__Privacy__V1__SectionCount *sc = hm_arena_alloc(a, sizeof *sc);
                    hospitality__privacy__v1__section_count__init(sc);
                    sc->section =
                        hm_arena_printf(a, "%s.%s", vjobs[i].participant, r->sections[s]->section);
                    sc->category = r->sections[s]->category;
                    sc->count = r->sections[s]->record_count;
                    v->residual[v->n_residual++] = sc;
                }
            }
            v->verified_empty = v->n_residual == 0;
            t.verification = v;
            t.vjobs = vjobs;
            t.nv = nv;
        } else {
            HM_WARN("erasure %s: verification export incomplete; retrying", c->request_id);
        }
    }
    rc = hm_db_tx(db, erase_fn, &t, HM_DB_READ_COMMITTED);
    fan_out_done(jobs, n);
    if (vjobs)
        fan_out_done(vjobs, nv);
    if (rc == HM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (t.completed) {
        pv_metric_inc(PV_M_ERASURE_DONE);
        HM_INFO("erasure %s completed: %d participants confirmed, re-run export empty",
                c->request_id, np);
    }
    return 0;
}

int pv_task_erasures(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache, (void)app;
    for (int i = 0; i < 8; i++) {
        claimed_t c;
        int rc = claim(db, arena, HOSPITALITY__PRIVACY__V1__REQUEST_TYPE__REQUEST_TYPE_ERASURE, &c);
        if (rc == HM_ENOTFOUND)
            return 0;
        if (rc != 0)
            return rc;
        if ((rc = run_erasure(db, arena, &c)) != 0)
            return rc;
    }
    return 0;
}

/* ---- alerts ---- */

static const hm_stmt_t st_overdue_new = {
    "pv_overdue_new",
    "UPDATE pv_requests SET overdue_alerted = true WHERE status IN (1, 2) AND due_at < now() AND "
    "NOT overdue_alerted RETURNING request_id::text, type, pv_us(due_at)",
    0};
static const hm_stmt_t st_overdue_count = {
    "pv_overdue_count",
    "SELECT count(*) FROM pv_requests WHERE status IN (1, 2) AND due_at < now()", 0};

int pv_task_alerts(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache, (void)app;
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_overdue_new, NULL, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        pv_metric_inc(PV_M_ALERT_OVERDUE);
        char fields[256];
        snprintf(fields, sizeof fields,
                 "\"event\":\"privacy_request_overdue\",\"alert\":true,\"request_id\":\"%s\","
                 "\"type\":\"%s\"",
                 pv_str(r, i, 0), pv_i64(r, i, 1) == 1 ? "export" : "erasure");
        hm_log_write(HM_LOG_ERROR, fields, "privacy request is past its statutory deadline (%s)",
                     iso(arena, pv_i64(r, i, 2)));
    }
    if ((rc = hm_db_exec_arena(db, arena, &st_overdue_count, NULL, NULL, NULL, &r)) != 0)
        return rc;
    pv_metric_set_overdue(pv_i64(r, 0, 0));
    return 0;
}
