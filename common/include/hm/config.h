/*
 * hm/config.h - declarative configuration from HM_* environment variables.
 *
 * A daemon declares one table of hm_cfg_var_t (and libhm one of its own, hm_common_config):
 * name, type, default, bounds, help, and where the parsed value goes. hm_config_load() parses
 * and validates every variable, and fails with a message naming the variable and the reason;
 * hm_config_help() prints the tables for --help.
 */
#ifndef HM_CONFIG_H
#define HM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum hm_cfg_type {
    HM_CFG_STR,      /* const char * (points into the environment or the default) */
    HM_CFG_INT,      /* long long, within [min, max] */
    HM_CFG_BOOL,     /* bool: on|off|true|false|1|0|yes|no */
    HM_CFG_DURATION, /* int64_t milliseconds: "250ms", "10s", "5m", "1h", bare number = ms */
    HM_CFG_ENUM,     /* int: index into `choices` ("debug|info|warn|error") */
    HM_CFG_ADDR,     /* const char * "host:port" with a port in 1..65535 */
} hm_cfg_type_t;

#define HM_CFG_REQUIRED 0x1u /* no default: start-up fails when unset */
#define HM_CFG_SECRET   0x2u /* value never printed (help shows only whether it is set) */

typedef struct hm_cfg_var {
    const char *name; /* environment variable, "HM_WORKERS" */
    hm_cfg_type_t type;
    const char *def;     /* default as text; NULL = empty/unset */
    long long min, max;  /* bounds for INT (value) and DURATION (ms); ignored when min > max */
    const char *choices; /* ENUM: '|'-separated names */
    const char *help;    /* one line */
    size_t offset;       /* offset of the destination field in the target struct */
    unsigned flags;      /* HM_CFG_* flags */
} hm_cfg_var_t;

#define HM_CFG_VAR(st, field, nm, ty, df, lo, hi, ch, fl, hp)                                      \
    {                                                                                              \
        .name = (nm), .type = (ty), .def = (df), .min = (lo), .max = (hi), .choices = (ch),        \
        .help = (hp), .offset = offsetof(st, field), .flags = (fl)                                 \
    }

/*
 * Parses every variable of `vars` from the environment into `target`. Returns 0, or HM_EINVAL
 * with a message like "HM_WORKERS: must be between 1 and 256 (got \"0\")" in err.
 */
int hm_config_load(const hm_cfg_var_t *vars, size_t n, void *target, char *err, size_t errlen);

/* Parses one duration ("10s") into milliseconds; 0 or HM_EINVAL. */
int hm_config_parse_duration(const char *s, int64_t *ms);

/* Prints a table: name, type, default, help (secrets show "(secret)"). */
void hm_config_help(FILE *out, const hm_cfg_var_t *vars, size_t n);

/* Configuration every daemon shares (loaded by hm_daemon_main). */
typedef struct hm_common_config {
    const char *grpc_addr;        /* HM_GRPC_ADDR */
    const char *admin_addr;       /* HM_ADMIN_ADDR */
    long long workers;            /* HM_WORKERS */
    int log_level;                /* HM_LOG_LEVEL (hm_log_level_t) */
    const char *database_url;     /* HM_DATABASE_URL (libpq conninfo) */
    const char *redis_addr;       /* HM_REDIS_ADDR, empty = no cache */
    int64_t redis_timeout_ms;     /* HM_REDIS_TIMEOUT */
    int64_t shutdown_grace_ms;    /* HM_SHUTDOWN_GRACE */
    int64_t shutdown_delay_ms;    /* HM_SHUTDOWN_DELAY: NOT_SERVING before stopping to accept */
    long long max_message_bytes;  /* HM_MAX_MESSAGE_BYTES */
    int64_t statement_timeout_ms; /* HM_DB_STATEMENT_TIMEOUT: ceiling per SQL statement */
    bool consumers;               /* HM_CONSUMERS: background consumers and sweepers */
    bool access_log;              /* HM_ACCESS_LOG: one line per call */
    const char *pii_keys;         /* HM_PII_KEYS "kid:hex64[,kid:hex64]" (first is active) */
    const char *pii_index_key;    /* HM_PII_INDEX_KEY hex64 */
} hm_common_config_t;

extern const hm_cfg_var_t hm_common_config_vars[];
extern const size_t hm_common_config_nvars;

#endif
