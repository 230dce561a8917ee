/*
 * hm/err.h - error codes of libhm and the status a call ends with.
 *
 * Library functions return 0 or a negative HM_E* code. One X-macro table gives each code its
 * name, a short message and the gRPC status it maps to, so the same failure reads the same
 * everywhere: in logs, in the gRPC status and in google.rpc.ErrorInfo.reason.
 */
#ifndef HM_ERR_H
#define HM_ERR_H

#include <stdarg.h>

/* gRPC status codes (values fixed by the gRPC spec; same as grpc_status_code). */
typedef enum hm_code {
    HM_CODE_OK = 0,
    HM_CODE_CANCELLED = 1,
    HM_CODE_UNKNOWN = 2,
    HM_CODE_INVALID_ARGUMENT = 3,
    HM_CODE_DEADLINE_EXCEEDED = 4,
    HM_CODE_NOT_FOUND = 5,
    HM_CODE_ALREADY_EXISTS = 6,
    HM_CODE_PERMISSION_DENIED = 7,
    HM_CODE_RESOURCE_EXHAUSTED = 8,
    HM_CODE_FAILED_PRECONDITION = 9,
    HM_CODE_ABORTED = 10,
    HM_CODE_OUT_OF_RANGE = 11,
    HM_CODE_UNIMPLEMENTED = 12,
    HM_CODE_INTERNAL = 13,
    HM_CODE_UNAVAILABLE = 14,
    HM_CODE_DATA_LOSS = 15,
    HM_CODE_UNAUTHENTICATED = 16,
} hm_code_t;

#define HM_CODE_COUNT 17

/* X(symbol, value, gRPC code, reason, message). Reasons are the stable ErrorInfo.reason strings
 * of hospitality.common.v1.ErrorReason without its prefix. */
#define HM_ERRNO_MAP(X)                                                                            \
    X(HM_EINVAL, -1, HM_CODE_INVALID_ARGUMENT, "VALIDATION_FAILED", "invalid argument")            \
    X(HM_ENOTFOUND, -2, HM_CODE_NOT_FOUND, "NOT_FOUND", "not found")                               \
    X(HM_EEXIST, -3, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS", "already exists")                   \
    X(HM_ECONFLICT, -4, HM_CODE_ABORTED, "VERSION_CONFLICT", "concurrent modification")            \
    X(HM_EPRECOND, -5, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION", "failed precondition")  \
    X(HM_EUNAVAIL, -6, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", "dependency unavailable")    \
    X(HM_ETIMEDOUT, -7, HM_CODE_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "deadline exceeded")       \
    X(HM_EINTERNAL, -8, HM_CODE_INTERNAL, "INTERNAL", "internal error")                            \
    X(HM_EPERM, -9, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED", "permission denied")           \
    X(HM_EAUTH, -10, HM_CODE_UNAUTHENTICATED, "UNAUTHENTICATED", "unauthenticated")                \
    X(HM_ERATE, -11, HM_CODE_RESOURCE_EXHAUSTED, "RATE_LIMITED", "rate limit exceeded")            \
    X(HM_ERETRY, -12, HM_CODE_ABORTED, "SERIALIZATION_FAILURE", "transaction must be retried")     \
    X(HM_ECRYPTO, -13, HM_CODE_INTERNAL, "CRYPTO_FAILURE", "cryptographic failure")                \
    X(HM_EIO, -14, HM_CODE_UNAVAILABLE, "IO_ERROR", "i/o error")

enum hm_errno {
#define HM__ERR_ENUM(sym, val, code, reason, msg) sym = val,
    HM_ERRNO_MAP(HM__ERR_ENUM)
#undef HM__ERR_ENUM
};

/* Name ("HM_EINVAL"), message, gRPC code and reason of an HM_E* value; unknown values map to
 * HM_EINTERNAL's. */
const char *hm_strerror(int err);
const char *hm_err_name(int err);
hm_code_t hm_err_code(int err);
const char *hm_err_reason(int err);

/* Canonical upper-case name of a gRPC code ("NOT_FOUND"). */
const char *hm_code_name(hm_code_t code);

/*
 * The outcome of one call, returned by value from handlers. `reason` is a static string (a
 * stable machine-readable code, see hospitality.common.v1.ErrorReason); `message` is a short
 * human sentence, lower case, with the offending field named; `field` optionally names it
 * separately for ErrorInfo.metadata. Strings are static or live in the call's arena.
 */
typedef struct hm_status {
    hm_code_t code;
    const char *reason;
    const char *message;
    const char *field;
} hm_status_t;

#define HM_STATUS_OK ((hm_status_t){HM_CODE_OK, NULL, NULL, NULL})

static inline int hm_status_ok(hm_status_t st)
{
    return st.code == HM_CODE_OK;
}

/* A status from an HM_E* code, with the code's default reason and message. */
hm_status_t hm_status_from_err(int err);

#endif
