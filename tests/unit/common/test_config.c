/*
 * test_config.c - unit tests of common/src/config.c: the common table's defaults, every
 * type's parser and bounds, the exact error messages, secrets never echoed, and --help.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hm/config.h"
#include "hm/err.h"
#include "hm/log.h"

static int clean_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < hm_common_config_nvars; i++)
        unsetenv(hm_common_config_vars[i].name);
    setenv("HM_DATABASE_URL", "postgres://app:s3cr3t-pw@db/guestd", 1);
    return 0;
}

/* Loads the common table; returns the code and leaves the message in err. */
static int load(hm_common_config_t *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    return hm_config_load(hm_common_config_vars, hm_common_config_nvars, cfg, err, errlen);
}

/* Sets one variable and checks the exact error message. */
static void expect_error(const char *name, const char *value, const char *msg)
{
    hm_common_config_t cfg;
    char err[256];

    setenv(name, value, 1);
    assert_int_equal(load(&cfg, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, msg);
    unsetenv(name);
}

static void test_defaults(void **state)
{
    hm_common_config_t cfg;
    char err[256];

    (void)state;
    assert_int_equal(hm_common_config_nvars, 15);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(cfg.grpc_addr, "0.0.0.0:50051");
    assert_string_equal(cfg.admin_addr, "0.0.0.0:9100");
    assert_int_equal(cfg.workers, 4);
    assert_int_equal(cfg.log_level, HM_LOG_INFO);
    assert_string_equal(cfg.database_url, "postgres://app:s3cr3t-pw@db/guestd");
    assert_string_equal(cfg.redis_addr, "127.0.0.1:6379");
    assert_int_equal(cfg.redis_timeout_ms, 200);
    assert_int_equal(cfg.shutdown_grace_ms, 10000);
    assert_int_equal(cfg.shutdown_delay_ms, 0);
    assert_int_equal(cfg.max_message_bytes, 4194304);
    assert_int_equal(cfg.statement_timeout_ms, 5000);
    assert_true(cfg.consumers);
    assert_true(cfg.access_log);
    assert_null(cfg.pii_keys);
    assert_null(cfg.pii_index_key);
}

static void test_values(void **state)
{
    hm_common_config_t cfg;
    char err[256];

    (void)state;
    setenv("HM_GRPC_ADDR", "[::]:7000", 1);
    setenv("HM_ADMIN_ADDR", "localhost:9", 1);
    setenv("HM_WORKERS", "256", 1);
    setenv("HM_LOG_LEVEL", "ERROR", 1);
    setenv("HM_REDIS_ADDR", "", 1);
    setenv("HM_REDIS_TIMEOUT", "10s", 1);
    setenv("HM_SHUTDOWN_GRACE", "10m", 1);
    setenv("HM_SHUTDOWN_DELAY", "1500", 1);
    setenv("HM_MAX_MESSAGE_BYTES", "1024", 1);
    setenv("HM_DB_STATEMENT_TIMEOUT", "10ms", 1);
    setenv("HM_CONSUMERS", "off", 1);
    setenv("HM_ACCESS_LOG", "No", 1);
    setenv("HM_PII_KEYS", "k1:00", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.grpc_addr, "[::]:7000");
    assert_string_equal(cfg.admin_addr, "localhost:9");
    assert_int_equal(cfg.workers, 256);
    assert_int_equal(cfg.log_level, HM_LOG_ERROR);
    assert_string_equal(cfg.redis_addr, ""); /* empty = no cache, not the default */
    assert_int_equal(cfg.redis_timeout_ms, 10000);
    assert_int_equal(cfg.shutdown_grace_ms, 600000);
    assert_int_equal(cfg.shutdown_delay_ms, 1500);
    assert_int_equal(cfg.max_message_bytes, 1024);
    assert_int_equal(cfg.statement_timeout_ms, 10);
    assert_false(cfg.consumers);
    assert_false(cfg.access_log);
    assert_string_equal(cfg.pii_keys, "k1:00");

    /* Empty non-string values mean "unset": the default applies. */
    setenv("HM_WORKERS", "", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.workers, 4);
}

static void test_required(void **state)
{
    hm_common_config_t cfg;
    char err[256];

    (void)state;
    unsetenv("HM_DATABASE_URL");
    assert_int_equal(load(&cfg, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "HM_DATABASE_URL: must be set");
    setenv("HM_DATABASE_URL", "", 1);
    assert_int_equal(load(&cfg, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "HM_DATABASE_URL: must be set");
}

static void test_int_errors(void **state)
{
    (void)state;
    expect_error("HM_WORKERS", "0", "HM_WORKERS: must be between 1 and 256 (got \"0\")");
    expect_error("HM_WORKERS", "257", "HM_WORKERS: must be between 1 and 256 (got \"257\")");
    expect_error("HM_WORKERS", "-3", "HM_WORKERS: must be between 1 and 256 (got \"-3\")");
    expect_error("HM_WORKERS", "four", "HM_WORKERS: must be an integer (got \"four\")");
    expect_error("HM_WORKERS", " 4", "HM_WORKERS: must be an integer (got \" 4\")");
    expect_error("HM_WORKERS", "4x", "HM_WORKERS: must be an integer (got \"4x\")");
    expect_error("HM_WORKERS", "99999999999999999999",
                 "HM_WORKERS: must be an integer (got \"99999999999999999999\")");
    expect_error("HM_MAX_MESSAGE_BYTES", "1023",
                 "HM_MAX_MESSAGE_BYTES: must be between 1024 and 67108864 (got \"1023\")");
}

static void test_duration_errors(void **state)
{
    (void)state;
    expect_error("HM_REDIS_TIMEOUT", "0",
                 "HM_REDIS_TIMEOUT: must be between 1ms and 10s (got \"0\")");
    expect_error("HM_REDIS_TIMEOUT", "11s",
                 "HM_REDIS_TIMEOUT: must be between 1ms and 10s (got \"11s\")");
    expect_error("HM_SHUTDOWN_GRACE", "1h",
                 "HM_SHUTDOWN_GRACE: must be between 0 and 10m (got \"1h\")");
    expect_error("HM_DB_STATEMENT_TIMEOUT", "5 s",
                 "HM_DB_STATEMENT_TIMEOUT: must be a duration like 250ms, 10s, 5m or 1h "
                 "(got \"5 s\")");
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        int64_t ms;
    } ok[] = {{"0", 0},       {"15", 15},     {"250ms", 250},
              {"10s", 10000}, {"5m", 300000}, {"1h", 3600000},
              {"0s", 0},      {"007ms", 7},   {"9223372036854775807", INT64_MAX}};
    static const char *const bad[] = {"",
                                      "-1",
                                      "1.5s",
                                      "s",
                                      "10 s",
                                      "10S",
                                      "1d",
                                      "ms1",
                                      " 1s",
                                      "9223372036854775807s",
                                      "99999999999999999999"};
    int64_t ms;

    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ms = -1;
        assert_int_equal(hm_config_parse_duration(ok[i].in, &ms), 0);
        assert_int_equal(ms, ok[i].ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(hm_config_parse_duration(bad[i], &ms), HM_EINVAL);
    assert_int_equal(hm_config_parse_duration(NULL, &ms), HM_EINVAL);
}

static void test_bool_enum_addr(void **state)
{
    hm_common_config_t cfg;
    char err[256];
    static const char *const yes[] = {"on", "ON", "true", "1", "yes", "Yes"};

    (void)state;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        setenv("HM_CONSUMERS", yes[i], 1);
        assert_int_equal(load(&cfg, err, sizeof err), 0);
        assert_true(cfg.consumers);
    }
    unsetenv("HM_CONSUMERS");
    expect_error("HM_ACCESS_LOG", "maybe", "HM_ACCESS_LOG: must be on or off (got \"maybe\")");

    setenv("HM_LOG_LEVEL", "debug", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.log_level, HM_LOG_DEBUG);
    setenv("HM_LOG_LEVEL", "warn", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.log_level, HM_LOG_WARN);
    unsetenv("HM_LOG_LEVEL");
    expect_error("HM_LOG_LEVEL", "verbose",
                 "HM_LOG_LEVEL: must be one of debug, info, warn, error (got \"verbose\")");
    expect_error("HM_LOG_LEVEL", "info|warn",
                 "HM_LOG_LEVEL: must be one of debug, info, warn, error (got \"info|warn\")");

#define ADDR_ERR(v)                                                                                \
    "HM_GRPC_ADDR: must be host:port with a port between 1 and 65535 (got \"" v "\")"
    expect_error("HM_GRPC_ADDR", "nohost", ADDR_ERR("nohost"));
    expect_error("HM_GRPC_ADDR", ":50051", ADDR_ERR(":50051"));
    expect_error("HM_GRPC_ADDR", "host:0", ADDR_ERR("host:0"));
    expect_error("HM_GRPC_ADDR", "host:65536", ADDR_ERR("host:65536"));
    expect_error("HM_GRPC_ADDR", "host:", ADDR_ERR("host:"));
    expect_error("HM_GRPC_ADDR", "host:8a", ADDR_ERR("host:8a"));
    expect_error("HM_GRPC_ADDR", "[::1:80", ADDR_ERR("[::1:80"));
    expect_error("HM_GRPC_ADDR", "a b:80", ADDR_ERR("a b:80"));
#undef ADDR_ERR
    setenv("HM_GRPC_ADDR", "host:65535", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
    setenv("HM_GRPC_ADDR", "[::1]:1", 1);
    assert_int_equal(load(&cfg, err, sizeof err), 0);
}

/* A private table: a secret that must never be echoed, and a long value shortened. */
typedef struct custom {
    long long secret_int;
    const char *plain;
    long long bad_default;
} custom_t;

static const hm_cfg_var_t custom_vars[] = {
    HM_CFG_VAR(custom_t, secret_int, "HM_T_SECRET", HM_CFG_INT, "1", 1, 10, NULL, HM_CFG_SECRET,
               "a secret number"),
    HM_CFG_VAR(custom_t, plain, "HM_T_PLAIN", HM_CFG_ADDR, "h:1", 1, 0, NULL, 0, "an address"),
};

static const hm_cfg_var_t bad_default_vars[] = {
    HM_CFG_VAR(custom_t, bad_default, "HM_T_BAD_DEFAULT", HM_CFG_INT, "lots", 1, 0, NULL, 0,
               "a table bug"),
};

static void test_secret_and_echo(void **state)
{
    custom_t c;
    char err[256], longval[300];

    (void)state;
    setenv("HM_T_SECRET", "hunter2", 1);
    assert_int_equal(hm_config_load(custom_vars, 2, &c, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "HM_T_SECRET: must be an integer");
    setenv("HM_T_SECRET", "11", 1);
    assert_int_equal(hm_config_load(custom_vars, 2, &c, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "HM_T_SECRET: must be between 1 and 10");
    setenv("HM_T_SECRET", "7", 1);
    assert_int_equal(hm_config_load(custom_vars, 2, &c, err, sizeof err), 0);
    assert_int_equal(c.secret_int, 7);
    unsetenv("HM_T_SECRET");

    /* Long values are cut to 64 characters; control characters are not echoed raw. */
    memset(longval, 'a', sizeof longval - 1);
    longval[sizeof longval - 1] = '\0';
    longval[3] = '\n';
    setenv("HM_T_PLAIN", longval, 1);
    assert_int_equal(hm_config_load(custom_vars, 2, &c, err, sizeof err), HM_EINVAL);
    assert_non_null(strstr(err, "(got \"aaa?aaaa"));
    assert_non_null(strstr(err, "a...\")"));
    assert_null(strchr(err, '\n'));
    assert_true(strlen(err) < 160);
    unsetenv("HM_T_PLAIN");

    /* A default goes through the same checks as the environment. */
    assert_int_equal(hm_config_load(bad_default_vars, 1, &c, err, sizeof err), HM_EINVAL);
    assert_string_equal(err, "HM_T_BAD_DEFAULT: must be an integer (got \"lots\")");
}

static void test_help(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    (void)state;
    setenv("HM_PII_KEYS", "k1:zz-very-secret-zz", 1);
    f = open_memstream(&buf, &len);
    assert_non_null(f);
    hm_config_help(f, hm_common_config_vars, hm_common_config_nvars);
    fclose(f);
    for (size_t i = 0; i < hm_common_config_nvars; i++)
        assert_non_null(strstr(buf, hm_common_config_vars[i].name));
    assert_null(strstr(buf, "zz-very-secret-zz"));
    assert_null(strstr(buf, "s3cr3t-pw"));
    assert_non_null(strstr(buf, "(secret, set)"));
    assert_non_null(strstr(buf, "(secret, unset)"));
    assert_non_null(strstr(buf, "int 1..256"));
    assert_non_null(strstr(buf, "duration 1ms..10s"));
    assert_non_null(strstr(buf, "debug|info|warn|error"));
    assert_non_null(strstr(buf, "0.0.0.0:50051"));
    assert_non_null(strstr(buf, "(required)"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clean_env),
        cmocka_unit_test_setup(test_values, clean_env),
        cmocka_unit_test_setup(test_required, clean_env),
        cmocka_unit_test_setup(test_int_errors, clean_env),
        cmocka_unit_test_setup(test_duration_errors, clean_env),
        cmocka_unit_test_setup(test_parse_duration, clean_env),
        cmocka_unit_test_setup(test_bool_enum_addr, clean_env),
        cmocka_unit_test_setup(test_secret_and_echo, clean_env),
        cmocka_unit_test_setup(test_help, clean_env),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
