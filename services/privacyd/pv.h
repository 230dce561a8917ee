/*
 * pv.h - privacyd's internals shared by its files (docs/privacy.md).
 *
 * Files: main.c (configuration, method tables, tasks), consent.c (consent RPCs and the consent
 * cache), requests.c (export and erasure request RPCs, status, listing), workflow.c (the
 * background fan-out to participants: exports, erasures with retries, verification, alerts),
 * retention.c (purges and consent expiry), audit.c (the hash-chained audit log), subject.c
 * (privacyd's own DataSubjectService), util.c (shared helpers and metrics).
 */
#ifndef PV_H
#define PV_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hm/auth.h"
#include "hm/cache.h"
#include "hm/db.h"
#include "hm/id.h"
#include "hm/server.h"
#include "hospitality/events/v1/privacy_events.pb-c.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

typedef struct pv_config {
    int64_t export_ttl_ms;          /* HM_PRIVACY_EXPORT_TTL: a finished export is kept this long */
    int64_t consent_cache_ttl_ms;   /* HM_PRIVACY_CONSENT_CACHE_TTL: cached GetConsent answers */
    long long export_attempts;      /* HM_PRIVACY_EXPORT_ATTEMPTS: rounds before an export fails */
    int64_t retry_base_ms;          /* HM_PRIVACY_RETRY_BASE: first retry delay (doubles) */
    int64_t retry_max_ms;           /* HM_PRIVACY_RETRY_MAX: ceiling of the retry delay */
    int64_t participant_timeout_ms; /* HM_PRIVACY_PARTICIPANT_TIMEOUT: one participant call */
    int64_t request_retention_ms;   /* HM_PRIVACY_REQUEST_RETENTION: finished export requests */
    int64_t event_retention_ms;     /* HM_PRIVACY_EVENT_RETENTION: published outbox rows and
                                       processed event ids */
    bool retention_purge; /* HM_PRIVACY_RETENTION_PURGE: off = the schedule only reports */
} pv_config_t;

extern pv_config_t pv_cfg;

#define PV_HANDLER(fn)                                                                             \
    hm_status_t fn(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)

PV_HANDLER(pv_get_consent);
PV_HANDLER(pv_update_consent);
PV_HANDLER(pv_list_consent_history);
PV_HANDLER(pv_request_data_export);
PV_HANDLER(pv_get_data_export);
PV_HANDLER(pv_request_erasure);
PV_HANDLER(pv_get_request_status);
PV_HANDLER(pv_list_requests);
PV_HANDLER(pv_extend_request_deadline);
PV_HANDLER(pv_verify_audit_log);
PV_HANDLER(pv_purge_expired_data);
PV_HANDLER(pv_export_subject);
PV_HANDLER(pv_erase_subject);

/* Tasks (hm_task_t.run). */
int pv_task_exports(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int pv_task_erasures(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int pv_task_alerts(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int pv_task_retention(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int pv_task_consent_expiry(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int pv_task_suppression(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* ---- util.c ---- */

/* Text of row `row`, column `col`; "" for NULL. */
const char *pv_str(const PGresult *r, int row, int col);
/* int64 of a column; 0 for NULL. */
int64_t pv_i64(const PGresult *r, int row, int col);
/* A Timestamp of a column holding epoch microseconds; NULL for SQL NULL. */
Google__Protobuf__Timestamp *pv_ts(hm_arena_t *a, const PGresult *r, int row, int col);
/* Text parameter for epoch microseconds ("to_timestamp($n::double precision / 1e6)"). */
const char *pv_us_param(hm_arena_t *a, int64_t us);
/* Lower-case hex SHA-256 of s (the suppression list's and the audit log's hash). */
void pv_sha256_hex(const char *s, size_t n, char out[65]);
/* The caller as an actor. */
Hospitality__Common__V1__Actor *pv_actor(hm_call_t *call);
/* True when the caller is only a guest (no staff, admin or service role). */
bool pv_guest_only(const hm_call_t *call);
/* Arena strdup of a proto string field that may be NULL. */
bool pv_valid_guest(const char *s);

/* Appends an audit entry in the transaction open on db. `guest` is hashed (NULL/"": none). */
int pv_audit(hm_db_t *db, hm_arena_t *a, int actor_type, const char *actor_id, const char *action,
             const char *guest, const char *request_id, const char *detail);

/* Consent cache: key of a guest, and invalidation after a commit. */
char *pv_consent_key(hm_arena_t *a, const char *guest);
void pv_consent_invalidate(hm_cache_t *cache, hm_arena_t *a, const char *guest);
/* Caches "nothing consented" for an erased guest under a version no update reaches (so no
 * reader can put the former state back); GetConsent reports it as version 0. */
void pv_consent_tombstone(hm_cache_t *cache, hm_arena_t *a, const char *guest);

/* Statutory deadline of a jurisdiction as a Postgres interval, and its disclaimer. */
const char *pv_deadline_interval(int jurisdiction);
const char *pv_disclaimer(int jurisdiction);
const char *pv_jurisdiction_name(int jurisdiction);

/* Loads a request with its participants into a message; HM_ENOTFOUND when there is none. */
int pv_load_request(hm_db_t *db, hm_arena_t *a, const char *request_id,
                    Hospitality__Privacy__V1__PrivacyRequest **out);

/* Participants to ask, from hm_peer_data_subjects (names only); HM_EUNAVAIL when unknown. */
int pv_participants(hm_arena_t *a, char ***names, size_t *n);

/* Business metrics. */
enum {
    PV_M_EXPORT_DONE,
    PV_M_EXPORT_FAILED,
    PV_M_ERASURE_DONE,
    PV_M_ALERT_FAILED,
    PV_M_ALERT_OVERDUE,
    PV_M_CACHE_HIT,
    PV_M_CACHE_MISS,
    PV_M_PEER_OK,
    PV_M_PEER_ERR,
    PV_M_COUNT
};
void pv_metric_inc(int which);
void pv_metric_set_overdue(int64_t n);
void pv_metrics(FILE *out, void *arg);

#endif
