/*
 * privacyd - consent, data access and erasure across the mesh (docs/privacy.md).
 *
 * main.c holds the daemon's configuration table, its method tables, the periodic tasks and
 * start-up. Consent is in consent.c, data-subject requests in requests.c (the RPCs) and
 * workflow.c (the fan-out to participants), retention in retention.c, the audit log in
 * audit.c, privacyd's own DataSubjectService in subject.c.
 */
#include <stddef.h>
#include <stdio.h>

#include "hm/crypto.h"
#include "hm/log.h"
#include "hm/migrate.h"
#include "pv.h"

extern const hm_migration_t privacyd_migrations[];
extern const size_t privacyd_nmigrations;

pv_config_t pv_cfg;

#define DAY_MS (24LL * 3600 * 1000)

static const hm_cfg_var_t config_vars[] = {
    HM_CFG_VAR(pv_config_t, export_ttl_ms, "HM_PRIVACY_EXPORT_TTL", HM_CFG_DURATION, "168h", 1000,
               365 * DAY_MS, NULL, 0, "a finished export is kept (encrypted) this long"),
    HM_CFG_VAR(pv_config_t, consent_cache_ttl_ms, "HM_PRIVACY_CONSENT_CACHE_TTL", HM_CFG_DURATION,
               "5m", 100, DAY_MS, NULL, 0, "how long GetConsent answers are cached in Redis"),
    HM_CFG_VAR(pv_config_t, export_attempts, "HM_PRIVACY_EXPORT_ATTEMPTS", HM_CFG_INT, "5", 1, 100,
               NULL, 0, "rounds of asking the participants before an export request fails"),
    HM_CFG_VAR(pv_config_t, retry_base_ms, "HM_PRIVACY_RETRY_BASE", HM_CFG_DURATION, "1s", 10,
               3600000, NULL, 0, "first retry delay of a participant (doubles per attempt)"),
    HM_CFG_VAR(pv_config_t, retry_max_ms, "HM_PRIVACY_RETRY_MAX", HM_CFG_DURATION, "5m", 10, DAY_MS,
               NULL, 0, "longest retry delay of a participant"),
    HM_CFG_VAR(pv_config_t, participant_timeout_ms, "HM_PRIVACY_PARTICIPANT_TIMEOUT",
               HM_CFG_DURATION, "10s", 100, 600000, NULL, 0,
               "deadline of one call to a participant (its retries included)"),
    HM_CFG_VAR(pv_config_t, request_retention_ms, "HM_PRIVACY_REQUEST_RETENTION", HM_CFG_DURATION,
               "8760h", 0, 10 * 365 * DAY_MS, NULL, 0,
               "finished export requests are deleted this long after they finished"),
    HM_CFG_VAR(pv_config_t, event_retention_ms, "HM_PRIVACY_EVENT_RETENTION", HM_CFG_DURATION,
               "168h", 0, 365 * DAY_MS, NULL, 0,
               "published outbox rows and consumed event ids are deleted after this long"),
    HM_CFG_VAR(pv_config_t, retention_purge, "HM_PRIVACY_RETENTION_PURGE", HM_CFG_BOOL, "on", 0, 0,
               NULL, 0, "the scheduled retention deletes (off: it only reports, a dry run)"),
};

#define PV(rpc, snake, fn, ...)                                                                    \
    {                                                                                              \
        "/hospitality.privacy.v1.PrivacyService/" #rpc,                                            \
            &hospitality__privacy__v1__##snake##_request__descriptor,                              \
            &hospitality__privacy__v1__##snake##_response__descriptor, fn, __VA_ARGS__             \
    }
/* Guests act on themselves; staff, admins and services on anyone. */
#define SELF                                                                                       \
    {                                                                                              \
        .roles = HM_ROLES_ANY, .self_field = "guest_id"                                            \
    }

static const hm_method_t methods[] = {
    PV(GetConsent, get_consent, pv_get_consent, SELF),
    PV(UpdateConsent, update_consent, pv_update_consent, SELF),
    PV(ListConsentHistory, list_consent_history, pv_list_consent_history, SELF),
    PV(RequestDataExport, request_data_export, pv_request_data_export, SELF),
    PV(GetDataExport, get_data_export, pv_get_data_export, SELF),
    PV(RequestErasure, request_erasure, pv_request_erasure, SELF),
    /* A guest sees only their own requests (checked in the handler). */
    PV(GetRequestStatus, get_request_status, pv_get_request_status, {.roles = HM_ROLES_ANY}),
    PV(ListRequests, list_requests, pv_list_requests, {.roles = HM_ROLE_STAFF}),
    PV(ExtendRequestDeadline, extend_request_deadline, pv_extend_request_deadline,
       {.roles = HM_ROLE_STAFF}),
    /* Administrators only (admin is always allowed; no other role is). */
    PV(VerifyAuditLog, verify_audit_log, pv_verify_audit_log, {.roles = 0}),
    PV(PurgeExpiredData, purge_expired_data, pv_purge_expired_data, {.roles = 0}),
};
static const hm_service_t service = {"hospitality.privacy.v1.PrivacyService", methods,
                                     sizeof methods / sizeof methods[0]};

/* privacyd's own records, asked for by privacyd's fan-out: service callers only. */
static const hm_method_t subject_methods[] = {
    {"/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
     &hospitality__privacy__v1__export_subject_data_request__descriptor,
     &hospitality__privacy__v1__export_subject_data_response__descriptor,
     pv_export_subject,
     {.roles = HM_ROLE_SERVICE}},
    {"/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
     &hospitality__privacy__v1__erase_subject_data_request__descriptor,
     &hospitality__privacy__v1__erase_subject_data_response__descriptor,
     pv_erase_subject,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t subject_service = {"hospitality.privacy.v1.DataSubjectService",
                                             subject_methods, 2};
static const hm_service_t *const services[] = {&service, &subject_service};

/* Replica-safe: requests are claimed with a lease under SKIP LOCKED, alerts marked once by
 * UPDATE ... RETURNING, consent lapses re-checked under the guest's row lock, purges are
 * plain DELETEs, the suppression mirror is idempotent (SADD). */
static const hm_task_t tasks[] = {
    {"exports", 250, pv_task_exports},
    {"erasures", 250, pv_task_erasures},
    {"alerts", 2000, pv_task_alerts},
    {"consent-expiry", 1000, pv_task_consent_expiry},
    {"suppression-mirror", 30000, pv_task_suppression},
    {"retention", 3600000, pv_task_retention},
};

/* The app is privacyd's own PII keyring: the tasks seal exports outside any call. */
static int pv_init(const hm_common_config_t *common, void **app)
{
    char err[256];
    hm_crypto_t *c = hm_crypto_create(common->pii_keys, common->pii_index_key, err, sizeof err);
    if (!c) {
        HM_ERROR("%s", err);
        return HM_EINVAL;
    }
    *app = c;
    hm_metrics_hook(pv_metrics, NULL);
    return 0;
}

static void pv_fini(void *app)
{
    hm_crypto_destroy(app);
}

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "privacyd",
        .description = "consent, data access and erasure across the mesh",
        .default_grpc_addr = "0.0.0.0:50055",
        .default_admin_addr = "0.0.0.0:9105",
        .services = services,
        .nservices = 2,
        .config_vars = config_vars,
        .nconfig_vars = sizeof config_vars / sizeof config_vars[0],
        .config = &pv_cfg,
        .migrations = privacyd_migrations,
        .nmigrations = privacyd_nmigrations,
        .needs_crypto = true,
        .init = pv_init,
        .fini = pv_fini,
        .tasks = tasks,
        .ntasks = sizeof tasks / sizeof tasks[0],
        .data_subject = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
