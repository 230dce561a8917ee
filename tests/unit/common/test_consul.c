/*
 * test_consul.c - integration tests of common/src/consul.c against the Consul stand-in
 * (tools/standins/consul_standin.py, spawned here; Consul's binary is not available). The
 * stand-in records what it receives, and the tests check the registration and deregistration
 * requests field by field against Consul's documented API, then resolution: round-robin,
 * critical instances left out, Node.Address when Service.Address is empty, the last list kept
 * while Consul is down, services by tag, registration retried by the tick, and the
 * HM_<PEER>_ADDR fallback. Exits 77 when /usr/bin/python3 cannot run the stand-in.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "hm/config.h"
#include "hm/consul.h"
#include "hm/err.h"
#include "hm/log.h"

#ifndef HM_TEST_SRC_ROOT
#error "HM_TEST_SRC_ROOT must name the source tree (meson passes it)"
#endif

#define PYTHON     "/usr/bin/python3"
#define STANDIN    HM_TEST_SRC_ROOT "/tools/standins/consul_standin.py"
#define TOKEN      "s3cr3t-token"
#define NODE_ADDR  "10.9.8.7"
#define VERSION    "1.2.3"
#define REFRESH_MS 100

typedef struct standin {
    pid_t pid;
    int port;
    char url[64]; /* "http://127.0.0.1:<port>" */
} standin_t;

static standin_t shared; /* with --token TOKEN and --node-address NODE_ADDR */
static bool have_python;

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A TCP port on 127.0.0.1 that refuses connections (bound, then closed). */
static int closed_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- the stand-in ---- */

/* Starts the stand-in with `args` (NULL-terminated, after the script); false when it did not
 * print its port within 10 s. */
static bool standin_start(standin_t *s, const char *const *args)
{
    const char *argv[16] = {PYTHON, STANDIN};
    char line[32];
    size_t n = 0, k = 2;
    int fds[2];
    int64_t until = now_ms() + 10000;

    while (args != NULL && args[k - 2] != NULL && k < 15) {
        argv[k] = args[k - 2];
        k++;
    }
    argv[k] = NULL;
    if (pipe(fds) != 0)
        return false;
    s->pid = fork();
    if (s->pid < 0)
        return false;
    if (s->pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(PYTHON, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    while (n < sizeof line - 1 && (n == 0 || line[n - 1] != '\n')) {
        struct pollfd p = {fds[0], POLLIN, 0};
        ssize_t r;

        if (now_ms() > until || poll(&p, 1, 200) < 0)
            break;
        if (p.revents == 0)
            continue;
        r = read(fds[0], line + n, 1);
        if (r <= 0)
            break;
        n++;
    }
    close(fds[0]);
    line[n] = '\0';
    s->port = atoi(line);
    if (s->port <= 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
        return false;
    }
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
    return true;
}

static void standin_stop(standin_t *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static size_t collect(char *p, size_t size, size_t nmemb, void *arg)
{
    FILE *f = arg;

    return fwrite(p, size, nmemb, f);
}

/* A request from the test itself; returns the status, the body parsed into *out if asked. */
static long request(const char *method, const char *url, const char *body, json_t **out)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    struct curl_slist *hdrs = curl_slist_append(NULL, "X-Consul-Token: " TOKEN);
    CURL *h = curl_easy_init();
    long status = 0;

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body != NULL ? body : "");
    }
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    fclose(f);
    if (out != NULL) {
        json_error_t jerr;

        *out = json_loads(text, 0, &jerr);
        if (*out == NULL)
            fail_msg("bad JSON from %s: %s", url, text);
    }
    free(text);
    return status;
}

static long standin_post(const standin_t *s, const char *path, const char *body)
{
    char url[128];

    snprintf(url, sizeof url, "%s%s", s->url, path);
    return request("POST", url, body, NULL);
}

/* Every request the stand-in recorded (new reference). */
static json_t *recorded(const standin_t *s)
{
    char url[128];
    json_t *reqs;

    snprintf(url, sizeof url, "%s/debug/requests", s->url);
    assert_int_equal(request("GET", url, NULL, &reqs), 200);
    assert_true(json_is_array(reqs));
    return reqs;
}

/* How many recorded requests have this method and path (NULL method: any). */
static size_t count_requests(json_t *reqs, const char *method, const char *path)
{
    size_t i, n = 0;
    json_t *r;

    json_array_foreach(reqs, i, r)
    {
        if ((method == NULL ||
             strcmp(json_string_value(json_object_get(r, "method")), method) == 0) &&
            strcmp(json_string_value(json_object_get(r, "path")), path) == 0)
            n++;
    }
    return n;
}

/* The last recorded request with this method and path (borrowed from reqs). */
static json_t *last_request(json_t *reqs, const char *method, const char *path)
{
    json_t *found = NULL, *r;
    size_t i;

    json_array_foreach(reqs, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "method")), method) == 0 &&
            strcmp(json_string_value(json_object_get(r, "path")), path) == 0)
            found = r;
    }
    if (found == NULL)
        fail_msg("no %s %s was received", method, path);
    return found;
}

static const char *header(json_t *req, const char *name)
{
    json_t *h = json_object_get(req, "headers");
    const char *key;
    json_t *v;

    json_object_foreach(h, key, v)
    {
        if (strcasecmp(key, name) == 0)
            return json_string_value(v);
    }
    return NULL;
}

/* Asserts obj has exactly the members named (NULL-terminated). */
static void assert_keys(json_t *obj, const char *const *names)
{
    size_t n = 0;

    assert_true(json_is_object(obj));
    for (; names[n] != NULL; n++) {
        if (json_object_get(obj, names[n]) == NULL)
            fail_msg("member %s missing", names[n]);
    }
    assert_int_equal(json_object_size(obj), n);
}

static void assert_json_string(json_t *obj, const char *key, const char *want)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_string(v))
        fail_msg("%s is not a string", key);
    assert_string_equal(json_string_value(v), want);
}

/* ---- clients ---- */

static hm_consul_config_t config(const standin_t *s)
{
    return (hm_consul_config_t){
        .addr = s != NULL ? s->url : NULL,
        .token = TOKEN,
        .check_interval_ms = 10000,
        .deregister_after_ms = 60000,
        .refresh_ms = REFRESH_MS,
        .timeout_ms = 2000,
    };
}

static hm_consul_t *client(const hm_consul_config_t *cfg, const char *name, const char *grpc)
{
    char err[256];
    hm_consul_t *c = hm_consul_create(cfg, name, VERSION, grpc, err, sizeof err);

    if (c == NULL)
        fail_msg("hm_consul_create(%s, %s): %s", name, grpc, err);
    return c;
}

/* A registered instance of `name` on 127.0.0.1:port in the shared stand-in. */
static hm_consul_t *instance(const char *name, int port, const char *tag)
{
    hm_consul_config_t cfg = config(&shared);
    char grpc[32];
    hm_consul_t *c;

    snprintf(grpc, sizeof grpc, "127.0.0.1:%d", port);
    c = client(&cfg, name, grpc);
    if (tag != NULL)
        assert_int_equal(hm_consul_add_tag(c, tag), 0);
    assert_int_equal(hm_consul_register(c), 0);
    return c;
}

static void set_health(const standin_t *s, const char *id, const char *status)
{
    char body[256];

    snprintf(body, sizeof body, "{\"id\":\"%s\",\"status\":\"%s\"}", id, status);
    assert_int_equal(standin_post(s, "/debug/health", body), 200);
}

static int setup(void **state)
{
    (void)state;
    if (shared.pid > 0)
        assert_int_equal(standin_post(&shared, "/debug/reset", "{}"), 200);
    return 0;
}

#define SKIP_WITHOUT_STANDIN()                                                                     \
    do {                                                                                           \
        if (!have_python)                                                                          \
            skip();                                                                                \
    } while (0)

/* ---- without a stand-in ---- */

static void test_config_table(void **state)
{
    static const char *const vars[] = {
        "HM_CONSUL_ADDR",
        "HM_CONSUL_TOKEN",
        "HM_SERVICE_ADDRESS",
        "HM_POD_IP",
        "HM_CONSUL_TAGS",
        "HM_CONSUL_CHECK_INTERVAL",
        "HM_CONSUL_DEREGISTER_AFTER",
        "HM_CONSUL_REFRESH",
        "HM_CONSUL_TIMEOUT",
    };
    hm_consul_config_t cfg;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    assert_int_equal(
        hm_config_load(hm_consul_config_vars, hm_consul_config_nvars, &cfg, err, sizeof err), 0);
    assert_true(cfg.addr == NULL || cfg.addr[0] == '\0');
    assert_int_equal(cfg.check_interval_ms, 10000);
    assert_int_equal(cfg.deregister_after_ms, 60000);
    assert_int_equal(cfg.refresh_ms, 5000);
    assert_int_equal(cfg.timeout_ms, 2000);

    /* Consul reaps critical services after one minute at the earliest. */
    setenv("HM_CONSUL_DEREGISTER_AFTER", "30s", 1);
    assert_int_equal(
        hm_config_load(hm_consul_config_vars, hm_consul_config_nvars, &cfg, err, sizeof err),
        HM_EINVAL);
    assert_non_null(strstr(err, "HM_CONSUL_DEREGISTER_AFTER"));
    unsetenv("HM_CONSUL_DEREGISTER_AFTER");
    setenv("HM_CONSUL_TOKEN", "do-not-print-me", 1);
    setenv("HM_CONSUL_CHECK_INTERVAL", "0s", 1);
    assert_int_equal(
        hm_config_load(hm_consul_config_vars, hm_consul_config_nvars, &cfg, err, sizeof err),
        HM_EINVAL);
    assert_non_null(strstr(err, "HM_CONSUL_CHECK_INTERVAL"));
    unsetenv("HM_CONSUL_CHECK_INTERVAL");
    unsetenv("HM_CONSUL_TOKEN");
}

static void test_disabled(void **state)
{
    hm_consul_config_t cfg = config(NULL);
    hm_consul_t *c = client(&cfg, "bookingd", "0.0.0.0:50051");
    hm_consul_peer_t peers[2];
    hm_consul_stats_t st;
    char out[64];
    FILE *m = tmpfile();

    (void)state;
    assert_false(hm_consul_enabled(c));
    assert_false(hm_consul_enabled(NULL));
    assert_null(hm_consul_service_id(c));
    assert_int_equal(hm_consul_add_tag(c, "data-subject"), 0);
    assert_int_equal(hm_consul_register(c), 0);
    hm_consul_tick(c);
    assert_int_equal(hm_consul_deregister(c), 0);
    assert_int_equal(hm_consul_resolve(c, "guestd", out, sizeof out), HM_EUNAVAIL);
    assert_int_equal(hm_consul_resolve_tagged(c, "data-subject", peers, 2), HM_EUNAVAIL);
    hm_consul_stats(c, &st);
    assert_int_equal(st.requests, 0);
    hm_consul_metrics(c, m);
    assert_int_equal(ftell(m), 0);
    fclose(m);
    hm_consul_destroy(c);
    hm_consul_destroy(NULL);
}

static void test_create_errors(void **state)
{
    static const char *const bad_addrs[] = {"ftp://h:1",    "http://",       "http://h:1/v1",
                                            "http://a b:1", "https://u@h:1", ":8500"};
    hm_consul_config_t cfg = config(NULL);
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        cfg.addr = bad_addrs[i];
        if (hm_consul_create(&cfg, "svc", VERSION, "127.0.0.1:1", err, sizeof err) != NULL)
            fail_msg("HM_CONSUL_ADDR=%s was accepted", bad_addrs[i]);
        assert_non_null(strstr(err, "HM_CONSUL_ADDR"));
    }
    cfg.addr = "http://127.0.0.1:1";
    /* Nothing to advertise: all interfaces, no pod IP, no explicit address. */
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "0.0.0.0:5000", err, sizeof err));
    assert_non_null(strstr(err, "HM_SERVICE_ADDRESS"));
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "[::]:5000", err, sizeof err));
    assert_non_null(strstr(err, "HM_SERVICE_ADDRESS"));
    cfg.service_address = "host:80";
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "0.0.0.0:5000", err, sizeof err));
    assert_non_null(strstr(err, "HM_SERVICE_ADDRESS"));
    cfg.service_address = NULL;
    cfg.tags = "blue,bad tag";
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "127.0.0.1:5000", err, sizeof err));
    assert_non_null(strstr(err, "HM_CONSUL_TAGS"));
    cfg.tags = NULL;
    cfg.token = "a\nb";
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "127.0.0.1:5000", err, sizeof err));
    assert_non_null(strstr(err, "HM_CONSUL_TOKEN"));
    assert_null(strstr(err, "a\nb"));
    cfg.token = NULL;
    assert_null(hm_consul_create(&cfg, "svc", VERSION, "nohostport", err, sizeof err));
    assert_non_null(strstr(err, "HM_GRPC_ADDR"));
    assert_null(hm_consul_create(&cfg, "bad/name", VERSION, "127.0.0.1:5000", err, sizeof err));
}

/* The instance ID: name, advertised host (punctuation other than '.', '_' as '-'), port,
 * 8 random hex digits. */
static void assert_id(const hm_consul_t *c, const char *prefix)
{
    const char *id = hm_consul_service_id(c);
    size_t n = strlen(prefix);

    assert_non_null(id);
    if (strncmp(id, prefix, n) != 0 || strlen(id) != n + 8 ||
        strspn(id + n, "0123456789abcdef") != 8)
        fail_msg("ID \"%s\" is not \"%s\" + 8 hex digits", id, prefix);
}

static void test_addresses(void **state)
{
    hm_consul_config_t cfg = config(NULL);
    hm_consul_t *a, *b;

    (void)state;
    cfg.addr = "127.0.0.1:8500"; /* no scheme: http */
    a = client(&cfg, "svc", "127.0.0.1:5000");
    assert_id(a, "svc-127.0.0.1-5000-");
    b = client(&cfg, "svc", "127.0.0.1:5000");
    assert_string_not_equal(hm_consul_service_id(a), hm_consul_service_id(b));
    hm_consul_destroy(a);
    hm_consul_destroy(b);

    cfg.pod_ip = "10.1.2.3";
    a = client(&cfg, "svc", "0.0.0.0:5000");
    assert_id(a, "svc-10.1.2.3-5000-");
    hm_consul_destroy(a);
    cfg.service_address = "svc-0.svc.ns.svc.cluster.local";
    a = client(&cfg, "svc", "0.0.0.0:5000");
    assert_id(a, "svc-svc-0.svc.ns.svc.cluster.local-5000-");
    hm_consul_destroy(a);
    cfg.service_address = NULL;
    cfg.pod_ip = "fd00::1";
    a = client(&cfg, "svc", "[::]:5000");
    assert_id(a, "svc-fd00--1-5000-");
    hm_consul_destroy(a);
}

static void test_peer_addr_env(void **state)
{
    hm_consul_config_t cfg = config(NULL);
    hm_consul_t *off = client(&cfg, "privacyd", "127.0.0.1:5000");
    char out[64], tiny[4];

    (void)state;
    setenv("HM_BOOKINGD_ADDR", "bookingd.hm.svc:50051", 1);
    setenv("HM_DATA_SUBJECT_X_ADDR", "dsx:1", 1);
    unsetenv("HM_GUESTD_ADDR");
    assert_int_equal(hm_peer_addr(NULL, "bookingd", out, sizeof out), 0);
    assert_string_equal(out, "bookingd.hm.svc:50051");
    assert_int_equal(hm_peer_addr(off, "bookingd", out, sizeof out), 0);
    assert_string_equal(out, "bookingd.hm.svc:50051");
    assert_int_equal(hm_peer_addr(NULL, "data-subject.x", out, sizeof out), 0);
    assert_string_equal(out, "dsx:1");
    assert_int_equal(hm_peer_addr(NULL, "guestd", out, sizeof out), HM_ENOTFOUND);
    assert_string_equal(out, "");
    assert_int_equal(hm_peer_addr(NULL, "bookingd", tiny, sizeof tiny), HM_EINVAL);
    assert_int_equal(hm_peer_addr(NULL, "a/b", out, sizeof out), HM_EINVAL);
    assert_int_equal(hm_peer_addr(NULL, "", out, sizeof out), HM_EINVAL);
    unsetenv("HM_BOOKINGD_ADDR");
    unsetenv("HM_DATA_SUBJECT_X_ADDR");
    hm_consul_destroy(off);
}

/* ---- against the stand-in ---- */

static void test_register_shape(void **state)
{
    static const char *const service_keys[] = {"ID",   "Name", "Address", "Port",
                                               "Tags", "Meta", "Check",   NULL};
    static const char *const check_keys[] = {"GRPC", "GRPCUseTLS", "Interval",
                                             "DeregisterCriticalServiceAfter", NULL};
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *a, *b;
    json_t *reqs, *req, *body, *check, *tags, *list;
    hm_consul_stats_t st;
    char grpc[32], want[64], path[256], url[256];
    int port = 41000;
    regex_t re;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    cfg.tags = " blue , canary,,";
    snprintf(grpc, sizeof grpc, "127.0.0.1:%d", port);
    a = client(&cfg, "bookingd", grpc);
    assert_int_equal(hm_consul_add_tag(a, "data-subject"), 0);
    assert_int_equal(hm_consul_add_tag(a, "blue"), 0); /* already there */
    assert_int_equal(hm_consul_add_tag(a, "two words"), HM_EINVAL);
    assert_int_equal(hm_consul_add_tag(a, ""), HM_EINVAL);
    assert_int_equal(hm_consul_register(a), 0);

    reqs = recorded(&shared);
    req = last_request(reqs, "PUT", "/v1/agent/service/register");
    assert_string_equal(header(req, "X-Consul-Token"), TOKEN);
    assert_string_equal(header(req, "Content-Type"), "application/json");
    body = json_object_get(req, "json");
    assert_keys(body, service_keys);
    /* ID: "<name>-<host>-<port>-<random>". */
    snprintf(want, sizeof want, "^bookingd-127\\.0\\.0\\.1-%d-[0-9a-f]{8}$", port);
    assert_int_equal(regcomp(&re, want, REG_EXTENDED | REG_NOSUB), 0);
    assert_int_equal(regexec(&re, json_string_value(json_object_get(body, "ID")), 0, NULL, 0), 0);
    regfree(&re);
    assert_json_string(body, "ID", hm_consul_service_id(a));
    assert_json_string(body, "Name", "bookingd");
    assert_json_string(body, "Address", "127.0.0.1");
    assert_true(json_is_integer(json_object_get(body, "Port")));
    assert_int_equal(json_integer_value(json_object_get(body, "Port")), port);
    tags = json_object_get(body, "Tags");
    assert_int_equal(json_array_size(tags), 3);
    assert_string_equal(json_string_value(json_array_get(tags, 0)), "blue");
    assert_string_equal(json_string_value(json_array_get(tags, 1)), "canary");
    assert_string_equal(json_string_value(json_array_get(tags, 2)), "data-subject");
    assert_keys(json_object_get(body, "Meta"), (const char *const[]){"version", NULL});
    assert_json_string(json_object_get(body, "Meta"), "version", VERSION);
    check = json_object_get(body, "Check");
    assert_keys(check, check_keys);
    snprintf(want, sizeof want, "127.0.0.1:%d/readiness", port);
    assert_json_string(check, "GRPC", want);
    assert_true(json_is_false(json_object_get(check, "GRPCUseTLS")));
    assert_json_string(check, "Interval", "10s");
    assert_json_string(check, "DeregisterCriticalServiceAfter", "1m");
    json_decref(reqs);
    hm_consul_stats(a, &st);
    assert_int_equal(st.registered, 1);

    /* Another instance on the same address gets its own ID; other durations, TLS. */
    cfg.tags = NULL;
    cfg.check_interval_ms = 1500;
    cfg.deregister_after_ms = 90 * 60000;
    b = client(&cfg, "bookingd", grpc);
    hm_consul_set_check_tls(b, true);
    assert_int_equal(hm_consul_register(b), 0);
    assert_string_not_equal(hm_consul_service_id(a), hm_consul_service_id(b));
    reqs = recorded(&shared);
    assert_int_equal(count_requests(reqs, "PUT", "/v1/agent/service/register"), 2);
    body = json_object_get(last_request(reqs, "PUT", "/v1/agent/service/register"), "json");
    assert_json_string(body, "ID", hm_consul_service_id(b));
    assert_int_equal(json_array_size(json_object_get(body, "Tags")), 0);
    check = json_object_get(body, "Check");
    assert_true(json_is_true(json_object_get(check, "GRPCUseTLS")));
    assert_json_string(check, "Interval", "1500ms");
    assert_json_string(check, "DeregisterCriticalServiceAfter", "90m");
    json_decref(reqs);

    /* Both are listed; deregistration removes exactly one, with the token, without a body. */
    snprintf(url, sizeof url, "%s/v1/health/service/bookingd", shared.url);
    assert_int_equal(request("GET", url, NULL, &list), 200);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);
    assert_int_equal(hm_consul_deregister(a), 0);
    snprintf(path, sizeof path, "/v1/agent/service/deregister/%s", hm_consul_service_id(a));
    reqs = recorded(&shared);
    req = last_request(reqs, "PUT", path);
    assert_string_equal(header(req, "X-Consul-Token"), TOKEN);
    assert_string_equal(json_string_value(json_object_get(req, "body")), "");
    assert_string_equal(json_string_value(json_object_get(req, "query")), "");
    json_decref(reqs);
    assert_int_equal(request("GET", url, NULL, &list), 200);
    assert_int_equal(json_array_size(list), 1);
    assert_json_string(json_object_get(json_array_get(list, 0), "Service"), "ID",
                       hm_consul_service_id(b));
    json_decref(list);
    hm_consul_stats(a, &st);
    assert_int_equal(st.registered, 0);
    assert_int_equal(st.failures, 0);
    /* Deregistering again sends nothing. */
    assert_int_equal(hm_consul_deregister(a), 0);
    reqs = recorded(&shared);
    assert_int_equal(count_requests(reqs, "PUT", path), 1);
    json_decref(reqs);
    assert_int_equal(hm_consul_deregister(b), 0);
    hm_consul_destroy(a);
    hm_consul_destroy(b);
}

static void test_register_ipv6_and_token(void **state)
{
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *c;
    json_t *reqs, *body;
    hm_consul_stats_t st;
    char *text = NULL;
    size_t len = 0;
    FILE *m;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    c = client(&cfg, "guestd", "[::1]:7000");
    assert_int_equal(hm_consul_register(c), 0);
    reqs = recorded(&shared);
    body = json_object_get(last_request(reqs, "PUT", "/v1/agent/service/register"), "json");
    assert_json_string(body, "Address", "::1");
    assert_json_string(json_object_get(body, "Check"), "GRPC", "[::1]:7000/readiness");
    json_decref(reqs);
    assert_int_equal(hm_consul_deregister(c), 0);
    hm_consul_destroy(c);

    /* A token Consul refuses: HM_EPERM, and the token still went in the header. */
    cfg.token = "wrong";
    c = client(&cfg, "guestd", "127.0.0.1:7000");
    assert_int_equal(hm_consul_register(c), HM_EPERM);
    reqs = recorded(&shared);
    assert_string_equal(
        header(last_request(reqs, "PUT", "/v1/agent/service/register"), "X-Consul-Token"), "wrong");
    json_decref(reqs);
    hm_consul_stats(c, &st);
    assert_int_equal(st.registered, 0);
    assert_int_equal(st.failures, 1);
    m = open_memstream(&text, &len);
    hm_consul_metrics(c, m);
    fclose(m);
    assert_non_null(strstr(text, "hm_consul_registered 0\n"));
    assert_non_null(strstr(text, "hm_consul_requests_total{result=\"error\"} 1\n"));
    free(text);
    /* Deregistering what never registered sends nothing. */
    assert_int_equal(hm_consul_deregister(c), 0);
    hm_consul_destroy(c);
}

static void test_resolve_round_robin(void **state)
{
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *inst[3], *me;
    char out[HM_CONSUL_ADDR_MAX], first[3][HM_CONSUL_ADDR_MAX], tiny[8];
    json_t *reqs, *req;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    for (int i = 0; i < 3; i++)
        inst[i] = instance("rr-svc", 6001 + i, NULL);
    cfg.refresh_ms = 60000; /* one fetch for the whole test */
    me = client(&cfg, "caller", "127.0.0.1:6100");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hm_consul_resolve(me, "rr-svc", out, sizeof out), 0);
        snprintf(first[i], sizeof first[i], "%s", out);
    }
    /* Three different instances, sorted, then the same order again. */
    assert_string_equal(first[0], "127.0.0.1:6001");
    assert_string_equal(first[1], "127.0.0.1:6002");
    assert_string_equal(first[2], "127.0.0.1:6003");
    for (int i = 0; i < 6; i++) {
        assert_int_equal(hm_consul_resolve(me, "rr-svc", out, sizeof out), 0);
        assert_string_equal(out, first[i % 3]);
    }
    assert_int_equal(hm_consul_resolve(me, "rr-svc", tiny, sizeof tiny), HM_EINVAL);
    assert_int_equal(hm_consul_resolve(me, "no/such", out, sizeof out), HM_EINVAL);
    /* One request for all of them, with passing=true and the token. */
    reqs = recorded(&shared);
    assert_int_equal(count_requests(reqs, NULL, "/v1/health/service/rr-svc"), 1);
    req = last_request(reqs, "GET", "/v1/health/service/rr-svc");
    assert_string_equal(json_string_value(json_object_get(req, "query")), "passing=true");
    assert_string_equal(header(req, "X-Consul-Token"), TOKEN);
    json_decref(reqs);
    /* hm_peer_addr goes through Consul when it is configured. */
    setenv("HM_RR_SVC_ADDR", "env-must-not-win:1", 1);
    assert_int_equal(hm_peer_addr(me, "rr-svc", out, sizeof out), 0);
    assert_string_equal(out, first[0]);
    unsetenv("HM_RR_SVC_ADDR");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hm_consul_deregister(inst[i]), 0);
        hm_consul_destroy(inst[i]);
    }
    hm_consul_destroy(me);
}

static void test_critical_excluded(void **state)
{
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *a, *b, *me;
    char out[HM_CONSUL_ADDR_MAX];
    bool seen_a = false, seen_b = false;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    a = instance("crit-svc", 6201, NULL);
    b = instance("crit-svc", 6202, NULL);
    me = client(&cfg, "caller", "127.0.0.1:6100");
    for (int i = 0; i < 4; i++) {
        assert_int_equal(hm_consul_resolve(me, "crit-svc", out, sizeof out), 0);
        seen_a |= strcmp(out, "127.0.0.1:6201") == 0;
        seen_b |= strcmp(out, "127.0.0.1:6202") == 0;
    }
    assert_true(seen_a && seen_b);

    /* b's check fails: once the list is refreshed, only a is chosen. */
    set_health(&shared, hm_consul_service_id(b), "critical");
    sleep_ms(REFRESH_MS + 50);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(hm_consul_resolve(me, "crit-svc", out, sizeof out), 0);
        assert_string_equal(out, "127.0.0.1:6201");
    }
    /* A warning is not passing either; with no passing instance there is nothing to call. */
    set_health(&shared, hm_consul_service_id(a), "warning");
    sleep_ms(REFRESH_MS + 50);
    assert_int_equal(hm_consul_resolve(me, "crit-svc", out, sizeof out), HM_EUNAVAIL);
    /* Back to passing. */
    set_health(&shared, hm_consul_service_id(b), "passing");
    sleep_ms(REFRESH_MS + 50);
    assert_int_equal(hm_consul_resolve(me, "crit-svc", out, sizeof out), 0);
    assert_string_equal(out, "127.0.0.1:6202");
    hm_consul_destroy(a);
    hm_consul_destroy(b);
    hm_consul_destroy(me);
}

static void test_node_address_fallback(void **state)
{
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *me;
    char url[128], out[HM_CONSUL_ADDR_MAX];

    (void)state;
    SKIP_WITHOUT_STANDIN();
    /* Registered without an address (Consul then uses the agent's): callers use the node's. */
    snprintf(url, sizeof url, "%s/v1/agent/service/register", shared.url);
    assert_int_equal(request("PUT", url,
                             "{\"ID\":\"nodeaddr-1\",\"Name\":\"nodeaddr\",\"Address\":\"\","
                             "\"Port\":7000}",
                             NULL),
                     200);
    assert_int_equal(
        request("PUT", url, "{\"ID\":\"nodeaddr-2\",\"Name\":\"nodeaddr\",\"Port\":7001}", NULL),
        200);
    me = client(&cfg, "caller", "127.0.0.1:6100");
    assert_int_equal(hm_consul_resolve(me, "nodeaddr", out, sizeof out), 0);
    assert_string_equal(out, NODE_ADDR ":7000");
    assert_int_equal(hm_consul_resolve(me, "nodeaddr", out, sizeof out), 0);
    assert_string_equal(out, NODE_ADDR ":7001");
    hm_consul_destroy(me);
}

static void test_consul_down(void **state)
{
    static const char *const args[] = {"--port", "0", NULL};
    hm_consul_config_t cfg;
    hm_consul_t *inst, *me;
    standin_t own = {0};
    hm_consul_stats_t st;
    char grpc[] = "127.0.0.1:6301", out[HM_CONSUL_ADDR_MAX];
    int64_t t0;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    assert_true(standin_start(&own, args));
    cfg = config(&own);
    cfg.token = NULL;
    inst = client(&cfg, "down-svc", grpc);
    assert_int_equal(hm_consul_register(inst), 0);
    me = client(&cfg, "caller", "127.0.0.1:6100");
    assert_int_equal(hm_consul_resolve(me, "down-svc", out, sizeof out), 0);
    assert_string_equal(out, grpc);

    /* Consul goes away: the last list keeps serving, and quickly. */
    standin_stop(&own);
    sleep_ms(REFRESH_MS + 50);
    t0 = now_ms();
    for (int i = 0; i < 20; i++) {
        assert_int_equal(hm_consul_resolve(me, "down-svc", out, sizeof out), 0);
        assert_string_equal(out, grpc);
    }
    assert_true(now_ms() - t0 < 1000);
    /* A service never fetched has nothing to fall back on but the environment. */
    assert_int_equal(hm_consul_resolve(me, "never-seen", out, sizeof out), HM_EUNAVAIL);
    assert_int_equal(hm_peer_addr(me, "never-seen", out, sizeof out), HM_EUNAVAIL);
    setenv("HM_NEVER_SEEN_ADDR", "never-seen.hm.svc:50051", 1);
    assert_int_equal(hm_peer_addr(me, "never-seen", out, sizeof out), 0);
    assert_string_equal(out, "never-seen.hm.svc:50051");
    unsetenv("HM_NEVER_SEEN_ADDR");
    hm_consul_stats(me, &st);
    assert_true(st.failures >= 2);
    /* Deregistration with Consul gone fails, and says so. */
    assert_int_equal(hm_consul_deregister(inst), HM_EUNAVAIL);
    hm_consul_destroy(inst);
    hm_consul_destroy(me);
}

static void test_resolve_tagged(void **state)
{
    hm_consul_config_t cfg = config(&shared);
    hm_consul_t *guest, *booking, *reco, *me;
    hm_consul_peer_t peers[4];

    (void)state;
    SKIP_WITHOUT_STANDIN();
    guest = instance("guestd", 6401, "data-subject");
    booking = instance("bookingd", 6402, "data-subject");
    reco = instance("recommenderd", 6403, NULL);
    me = client(&cfg, "privacyd", "127.0.0.1:6100");
    assert_int_equal(hm_consul_resolve_tagged(me, "data-subject", peers, 4), 2);
    assert_string_equal(peers[0].service, "bookingd");
    assert_string_equal(peers[0].addr, "127.0.0.1:6402");
    assert_string_equal(peers[1].service, "guestd");
    assert_string_equal(peers[1].addr, "127.0.0.1:6401");
    /* The count says when out was too small. */
    memset(peers, 0, sizeof peers);
    assert_int_equal(hm_consul_resolve_tagged(me, "data-subject", peers, 1), 2);
    assert_string_equal(peers[0].service, "bookingd");
    assert_string_equal(peers[1].service, "");
    assert_int_equal(hm_consul_resolve_tagged(me, "no-such-tag", peers, 4), 0);
    assert_int_equal(hm_consul_resolve_tagged(me, "bad tag", peers, 4), HM_EINVAL);

    /* A participant that is down is still listed, without an address. */
    set_health(&shared, hm_consul_service_id(guest), "critical");
    sleep_ms(REFRESH_MS + 50);
    assert_int_equal(hm_consul_resolve_tagged(me, "data-subject", peers, 4), 2);
    assert_string_equal(peers[1].service, "guestd");
    assert_string_equal(peers[1].addr, "");
    assert_string_equal(peers[0].addr, "127.0.0.1:6402");
    hm_consul_destroy(guest);
    hm_consul_destroy(booking);
    hm_consul_destroy(reco);
    hm_consul_destroy(me);
}

static void test_tick(void **state)
{
    char port[16], url[64], out[HM_CONSUL_ADDR_MAX];
    const char *args[] = {"--port", port, NULL};
    hm_consul_config_t cfg = config(NULL);
    standin_t own = {0};
    hm_consul_stats_t st;
    hm_consul_t *c;
    json_t *reqs;
    int64_t t0;

    (void)state;
    SKIP_WITHOUT_STANDIN();
    snprintf(port, sizeof port, "%d", closed_port());
    snprintf(url, sizeof url, "http://127.0.0.1:%s", port);
    cfg.addr = url;
    cfg.token = NULL;
    c = client(&cfg, "late-svc", "127.0.0.1:6501");

    /* Consul is not there yet: registration fails, the tick retries after its backoff. */
    t0 = now_ms();
    assert_int_equal(hm_consul_register(c), HM_EUNAVAIL);
    hm_consul_tick(c);
    hm_consul_stats(c, &st);
    assert_int_equal(st.requests, 1); /* backing off: no second attempt yet */
    assert_int_equal(st.registered, 0);
    assert_true(standin_start(&own, args));
    if (now_ms() - t0 < 1100)
        sleep_ms(1100 - (now_ms() - t0));
    hm_consul_tick(c);
    hm_consul_stats(c, &st);
    assert_int_equal(st.registered, 1);
    reqs = recorded(&own);
    assert_int_equal(count_requests(reqs, "PUT", "/v1/agent/service/register"), 1);
    json_decref(reqs);

    /* The tick refreshes cached lists that are due, without anyone resolving. */
    assert_int_equal(hm_consul_resolve(c, "late-svc", out, sizeof out), 0);
    sleep_ms(REFRESH_MS + 50);
    hm_consul_tick(c);
    reqs = recorded(&own);
    assert_int_equal(count_requests(reqs, "GET", "/v1/health/service/late-svc"), 2);
    json_decref(reqs);

    /* After deregistration the tick no longer registers. */
    assert_int_equal(hm_consul_deregister(c), 0);
    hm_consul_tick(c);
    hm_consul_stats(c, &st);
    assert_int_equal(st.registered, 0);
    reqs = recorded(&own);
    assert_int_equal(count_requests(reqs, "PUT", "/v1/agent/service/register"), 1);
    json_decref(reqs);
    standin_stop(&own);
    hm_consul_destroy(c);
}

int main(void)
{
    static const char *const args[] = {"--port",         "0",       "--token", TOKEN,
                                       "--node-address", NODE_ADDR, NULL};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_config_table, setup),
        cmocka_unit_test_setup(test_disabled, setup),
        cmocka_unit_test_setup(test_create_errors, setup),
        cmocka_unit_test_setup(test_addresses, setup),
        cmocka_unit_test_setup(test_peer_addr_env, setup),
        cmocka_unit_test_setup(test_register_shape, setup),
        cmocka_unit_test_setup(test_register_ipv6_and_token, setup),
        cmocka_unit_test_setup(test_resolve_round_robin, setup),
        cmocka_unit_test_setup(test_critical_excluded, setup),
        cmocka_unit_test_setup(test_node_address_fallback, setup),
        cmocka_unit_test_setup(test_consul_down, setup),
        cmocka_unit_test_setup(test_resolve_tagged, setup),
        cmocka_unit_test_setup(test_tick, setup),
    };
    hm_log_level_t level;
    int failed;

    if (hm_log_level_parse(getenv("HM_TEST_LOG_LEVEL"), &level) != 0)
        level = HM_LOG_DEBUG;
    hm_log_init("test_consul", level);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    have_python =
        access(PYTHON, X_OK) == 0 && access(STANDIN, R_OK) == 0 && standin_start(&shared, args);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    standin_stop(&shared);
    curl_global_cleanup();
    if (failed == 0 && !have_python) {
        fprintf(stderr, "test_consul: %s cannot run the stand-in: Consul tests skipped\n", PYTHON);
        return 77;
    }
    return failed;
}
