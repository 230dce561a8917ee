/*
 * err.c - names, messages, gRPC codes and reasons of the HM_E* codes (one X-macro table in
 * hm/err.h), and the canonical names of gRPC status codes.
 */
#include "hm/err.h"

#include <stddef.h>

typedef struct err_info {
    int value;
    hm_code_t code;
    const char *name;
    const char *reason;
    const char *message;
} err_info_t;

static const err_info_t errs[] = {
#define HM__ERR_ROW(sym, val, code, reason, msg) {val, code, #sym, reason, msg},
    HM_ERRNO_MAP(HM__ERR_ROW)
#undef HM__ERR_ROW
};

static const err_info_t *lookup(int err)
{
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++)
        if (errs[i].value == err)
            return &errs[i];
    return NULL;
}

static const err_info_t *lookup_or_internal(int err)
{
    const err_info_t *e = lookup(err);
    return e ? e : lookup(HM_EINTERNAL);
}

const char *hm_strerror(int err)
{
    return err == 0 ? "success" : lookup_or_internal(err)->message;
}

const char *hm_err_name(int err)
{
    return err == 0 ? "HM_OK" : lookup_or_internal(err)->name;
}

hm_code_t hm_err_code(int err)
{
    return err == 0 ? HM_CODE_OK : lookup_or_internal(err)->code;
}

const char *hm_err_reason(int err)
{
    return err == 0 ? NULL : lookup_or_internal(err)->reason;
}

const char *hm_code_name(hm_code_t code)
{
    static const char *const names[HM_CODE_COUNT] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return (unsigned)code < HM_CODE_COUNT ? names[code] : "UNKNOWN";
}

hm_status_t hm_status_from_err(int err)
{
    if (err == 0)
        return HM_STATUS_OK;
    const err_info_t *e = lookup_or_internal(err);
    return (hm_status_t){e->code, e->reason, e->message, NULL};
}
