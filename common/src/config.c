/*
 * config.c - declarative configuration from HM_* environment variables (hm/config.h), and the
 * table of the variables every daemon shares (hm_common_config_vars).
 *
 * Every value, defaults included, goes through the same parser, so a table with a bad default
 * fails at start like a bad environment. Error messages name the variable, say what is wanted
 * in lower case and quote what was given, except for secrets, whose values are never echoed.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hm/config.h"
#include "hm/err.h"

/* Longest part of a bad value quoted back in an error message. */
#define CFG_ECHO_MAX 64

#define KIB 1024LL
#define MIB (1024LL * 1024LL)
#define SEC 1000LL
#define MIN (60LL * SEC)

#define COMMON(field, nm, ty, df, lo, hi, ch, fl, hp)                                              \
    HM_CFG_VAR(hm_common_config_t, field, nm, ty, df, lo, hi, ch, fl, hp)

const hm_cfg_var_t hm_common_config_vars[] = {
    COMMON(grpc_addr, "HM_GRPC_ADDR", HM_CFG_ADDR, "0.0.0.0:50051", 1, 0, NULL, 0,
           "gRPC listen address (host:port)"),
    COMMON(admin_addr, "HM_ADMIN_ADDR", HM_CFG_ADDR, "0.0.0.0:9100", 1, 0, NULL, 0,
           "admin HTTP address: /metrics, /healthz, /readyz"),
    COMMON(workers, "HM_WORKERS", HM_CFG_INT, "4", 1, 256, NULL, 0,
           "worker threads, each with its own Postgres and Redis connection"),
    COMMON(log_level, "HM_LOG_LEVEL", HM_CFG_ENUM, "info", 1, 0, "debug|info|warn|error", 0,
           "lowest level logged"),
    COMMON(database_url, "HM_DATABASE_URL", HM_CFG_STR, NULL, 1, 0, NULL,
           HM_CFG_REQUIRED | HM_CFG_SECRET, "libpq connection string or URI of the database"),
    COMMON(redis_addr, "HM_REDIS_ADDR", HM_CFG_STR, "127.0.0.1:6379", 1, 0, NULL, 0,
           "Redis host:port or socket path; empty = no cache"),
    COMMON(redis_timeout_ms, "HM_REDIS_TIMEOUT", HM_CFG_DURATION, "200ms", 1, 10 * SEC, NULL, 0,
           "Redis connect and command timeout"),
    COMMON(shutdown_grace_ms, "HM_SHUTDOWN_GRACE", HM_CFG_DURATION, "10s", 0, 10 * MIN, NULL, 0,
           "longest wait for in-flight calls at shutdown"),
    COMMON(shutdown_delay_ms, "HM_SHUTDOWN_DELAY", HM_CFG_DURATION, "0", 0, 5 * MIN, NULL, 0,
           "time NOT_SERVING before the listener closes"),
    COMMON(max_message_bytes, "HM_MAX_MESSAGE_BYTES", HM_CFG_INT, "4194304", KIB, 64 * MIB, NULL, 0,
           "largest gRPC message received or sent"),
    COMMON(statement_timeout_ms, "HM_DB_STATEMENT_TIMEOUT", HM_CFG_DURATION, "5s", 10, 10 * MIN,
           NULL, 0, "ceiling on one SQL statement (a call's deadline may lower it)"),
    COMMON(consumers, "HM_CONSUMERS", HM_CFG_BOOL, "on", 1, 0, NULL, 0,
           "run event consumers, the outbox relay and sweepers"),
    COMMON(access_log, "HM_ACCESS_LOG", HM_CFG_BOOL, "on", 1, 0, NULL, 0, "log one line per call"),
    COMMON(pii_keys, "HM_PII_KEYS", HM_CFG_STR, NULL, 1, 0, NULL, HM_CFG_SECRET,
           "PII encryption keys \"kid:64hex[,kid:64hex]\", first is active"),
    COMMON(pii_index_key, "HM_PII_INDEX_KEY", HM_CFG_STR, NULL, 1, 0, NULL, HM_CFG_SECRET,
           "PII blind index HMAC key, 64 hex digits"),
};

const size_t hm_common_config_nvars =
    sizeof hm_common_config_vars / sizeof hm_common_config_vars[0];

/* The error message tail ` (got "value")`, shortened and made printable; empty for secrets. */
static void echo_value(const hm_cfg_var_t *v, const char *val, char *buf, size_t cap)
{
    char safe[CFG_ECHO_MAX + 4];
    size_t i;

    if (v->flags & HM_CFG_SECRET) {
        buf[0] = '\0';
        return;
    }
    for (i = 0; val[i] != '\0' && i < CFG_ECHO_MAX; i++) {
        unsigned char c = (unsigned char)val[i];

        safe[i] = (c < 0x20 || c >= 0x7F) ? '?' : (char)c;
    }
    if (val[i] != '\0') {
        memcpy(safe + i, "...", 3);
        i += 3;
    }
    safe[i] = '\0';
    snprintf(buf, cap, " (got \"%s\")", safe);
}

/* A duration in its shortest exact unit: "0", "250ms", "10s", "5m", "1h". */
static void format_duration(long long ms, char *buf, size_t cap)
{
    if (ms == 0)
        snprintf(buf, cap, "0");
    else if (ms % (60 * MIN) == 0)
        snprintf(buf, cap, "%lldh", ms / (60 * MIN));
    else if (ms % MIN == 0)
        snprintf(buf, cap, "%lldm", ms / MIN);
    else if (ms % SEC == 0)
        snprintf(buf, cap, "%llds", ms / SEC);
    else
        snprintf(buf, cap, "%lldms", ms);
}

/* Decimal digits only, no sign, no spaces; HM_EINVAL on anything else or overflow. */
static int parse_digits(const char *s, size_t n, long long *out)
{
    long long v = 0;

    if (n == 0)
        return HM_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return HM_EINVAL;
        if (v > (LLONG_MAX - (s[i] - '0')) / 10)
            return HM_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int hm_config_parse_duration(const char *s, int64_t *ms)
{
    static const struct {
        const char *suffix;
        long long mult;
    } units[] = {{"ms", 1}, {"s", SEC}, {"m", MIN}, {"h", 60 * MIN}};
    size_t n, digits = 0;
    long long v;

    if (s == NULL)
        return HM_EINVAL;
    n = strlen(s);
    while (digits < n && s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (parse_digits(s, digits, &v) != 0)
        return HM_EINVAL;
    if (digits == n) {
        *ms = v;
        return 0;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(s + digits, units[i].suffix) == 0) {
            if (v > LLONG_MAX / units[i].mult)
                return HM_EINVAL;
            *ms = v * units[i].mult;
            return 0;
        }
    }
    return HM_EINVAL;
}

static int parse_int(const char *s, long long *out)
{
    char *end;

    if (s[0] == '\0' || isspace((unsigned char)s[0]))
        return HM_EINVAL;
    errno = 0;
    *out = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return HM_EINVAL;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"on", "true", "1", "yes"};
    static const char *const no[] = {"off", "false", "0", "no"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return HM_EINVAL;
}

/* Index of s in the '|'-separated list, or HM_EINVAL. */
static int parse_enum(const char *s, const char *choices, int *out)
{
    size_t n = strlen(s);
    int idx = 0;

    for (const char *p = choices; p != NULL && *p != '\0'; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar != NULL ? (size_t)(bar - p) : strlen(p);

        if (len == n && n > 0 && strncasecmp(p, s, n) == 0) {
            *out = idx;
            return 0;
        }
        p = bar != NULL ? bar + 1 : NULL;
    }
    return HM_EINVAL;
}

/* "host:port", "[v6]:port"; the host non-empty, the port 1..65535. */
static int check_addr(const char *s)
{
    const char *colon = strrchr(s, ':');
    long long port;

    if (colon == NULL || colon == s)
        return HM_EINVAL;
    if (parse_digits(colon + 1, strlen(colon + 1), &port) != 0 || port < 1 || port > 65535)
        return HM_EINVAL;
    if (s[0] == '[' && (colon - s < 3 || colon[-1] != ']'))
        return HM_EINVAL;
    for (const char *p = s; p < colon; p++) {
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return HM_EINVAL;
    }
    return 0;
}

/*
 * Writes "must be ..." for a rejected value: the bounds when the value had the right form
 * (`parsed`) but lay outside them, else the form wanted.
 */
static void describe(const hm_cfg_var_t *v, bool parsed, char *buf, size_t cap)
{
    char lo[32], hi[32];

    switch (v->type) {
    case HM_CFG_INT:
        if (parsed)
            snprintf(buf, cap, "must be between %lld and %lld", v->min, v->max);
        else
            snprintf(buf, cap, "must be an integer");
        break;
    case HM_CFG_DURATION:
        format_duration(v->min, lo, sizeof lo);
        format_duration(v->max, hi, sizeof hi);
        if (parsed)
            snprintf(buf, cap, "must be between %s and %s", lo, hi);
        else
            snprintf(buf, cap, "must be a duration like 250ms, 10s, 5m or 1h");
        break;
    case HM_CFG_BOOL:
        snprintf(buf, cap, "must be on or off");
        break;
    case HM_CFG_ENUM: {
        size_t n = (size_t)snprintf(buf, cap, "must be one of ");

        for (const char *p = v->choices != NULL ? v->choices : ""; *p != '\0' && n + 3 < cap; p++) {
            if (*p == '|') {
                buf[n++] = ',';
                buf[n++] = ' ';
            } else {
                buf[n++] = *p;
            }
        }
        buf[n < cap ? n : cap - 1] = '\0';
        break;
    }
    case HM_CFG_ADDR:
        snprintf(buf, cap, "must be host:port with a port between 1 and 65535");
        break;
    case HM_CFG_STR:
    default:
        snprintf(buf, cap, "invalid value");
        break;
    }
}

/* Parses one variable's text into its field; 0, or HM_EINVAL with the message in err. */
static int load_one(const hm_cfg_var_t *v, const char *val, void *target, char *err, size_t errlen)
{
    char *field = (char *)target + v->offset;
    char want[160], got[CFG_ECHO_MAX + 16];
    bool parsed = false; /* right form, out of bounds */

    switch (v->type) {
    case HM_CFG_STR:
        memcpy(field, &val, sizeof val);
        return 0;
    case HM_CFG_ADDR:
        if (check_addr(val) != 0)
            break;
        memcpy(field, &val, sizeof val);
        return 0;
    case HM_CFG_INT: {
        long long x;

        if (parse_int(val, &x) != 0)
            break;
        parsed = true;
        if (v->min <= v->max && (x < v->min || x > v->max))
            break;
        memcpy(field, &x, sizeof x);
        return 0;
    }
    case HM_CFG_DURATION: {
        int64_t ms;

        if (hm_config_parse_duration(val, &ms) != 0)
            break;
        parsed = true;
        if (v->min <= v->max && (ms < v->min || ms > v->max))
            break;
        memcpy(field, &ms, sizeof ms);
        return 0;
    }
    case HM_CFG_BOOL: {
        bool b;

        if (parse_bool(val, &b) != 0)
            break;
        memcpy(field, &b, sizeof b);
        return 0;
    }
    case HM_CFG_ENUM: {
        int idx;

        if (parse_enum(val, v->choices, &idx) != 0)
            break;
        memcpy(field, &idx, sizeof idx);
        return 0;
    }
    default:
        snprintf(err, errlen, "%s: unknown variable type", v->name);
        return HM_EINVAL;
    }
    /* Every case that falls out of the switch rejected the value. */
    describe(v, parsed, want, sizeof want);
    echo_value(v, val, got, sizeof got);
    snprintf(err, errlen, "%s: %s%s", v->name, want, got);
    return HM_EINVAL;
}

int hm_config_load(const hm_cfg_var_t *vars, size_t n, void *target, char *err, size_t errlen)
{
    if (errlen > 0)
        err[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const hm_cfg_var_t *v = &vars[i];
        const char *val = getenv(v->name);
        int rc;

        /* An empty string is a value for strings ("no cache"), and unset for the others. */
        if (val != NULL && val[0] == '\0' && v->type != HM_CFG_STR)
            val = NULL;
        if (val == NULL || (val[0] == '\0' && (v->flags & HM_CFG_REQUIRED))) {
            if (v->flags & HM_CFG_REQUIRED) {
                snprintf(err, errlen, "%s: must be set", v->name);
                return HM_EINVAL;
            }
            val = v->def;
        }
        if (val == NULL) {
            /* Unset without default: strings become NULL, other fields stay as they are. */
            if (v->type == HM_CFG_STR || v->type == HM_CFG_ADDR) {
                const char *none = NULL;

                memcpy((char *)target + v->offset, &none, sizeof none);
            }
            continue;
        }
        rc = load_one(v, val, target, err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The type column of --help: "int 1..256", "duration 1ms..10s", "debug|info|warn|error". */
static void type_column(const hm_cfg_var_t *v, char *buf, size_t cap)
{
    char lo[32], hi[32];

    switch (v->type) {
    case HM_CFG_INT:
        if (v->min <= v->max)
            snprintf(buf, cap, "int %lld..%lld", v->min, v->max);
        else
            snprintf(buf, cap, "int");
        break;
    case HM_CFG_DURATION:
        format_duration(v->min, lo, sizeof lo);
        format_duration(v->max, hi, sizeof hi);
        if (v->min <= v->max)
            snprintf(buf, cap, "duration %s..%s", lo, hi);
        else
            snprintf(buf, cap, "duration");
        break;
    case HM_CFG_BOOL:
        snprintf(buf, cap, "on|off");
        break;
    case HM_CFG_ENUM:
        snprintf(buf, cap, "%s", v->choices != NULL ? v->choices : "");
        break;
    case HM_CFG_ADDR:
        snprintf(buf, cap, "host:port");
        break;
    case HM_CFG_STR:
    default:
        snprintf(buf, cap, "string");
        break;
    }
}

void hm_config_help(FILE *out, const hm_cfg_var_t *vars, size_t n)
{
    fprintf(out, "%-26s %-24s %-18s %s\n", "VARIABLE", "TYPE", "DEFAULT", "DESCRIPTION");
    for (size_t i = 0; i < n; i++) {
        const hm_cfg_var_t *v = &vars[i];
        char type[96];
        const char *def;

        type_column(v, type, sizeof type);
        if (v->flags & HM_CFG_SECRET) {
            const char *set = getenv(v->name);

            def = set != NULL && set[0] != '\0' ? "(secret, set)" : "(secret, unset)";
        } else if (v->flags & HM_CFG_REQUIRED) {
            def = "(required)";
        } else if (v->def == NULL || v->def[0] == '\0') {
            def = "(empty)";
        } else {
            def = v->def;
        }
        fprintf(out, "%-26s %-24s %-18s %s%s\n", v->name, type, def, v->help != NULL ? v->help : "",
                (v->flags & HM_CFG_REQUIRED) && (v->flags & HM_CFG_SECRET) ? " (required)" : "");
    }
}
