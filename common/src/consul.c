/*
 * consul.c - the Consul client of hm/consul.h: registration and deregistration of this
 * instance, cached peer lists refreshed lazily or by the main thread's tick, round-robin
 * picks, services by tag, and the HM_<PEER>_ADDR fallback.
 *
 * Every HTTP request uses its own curl easy handle (a handle is not thread-safe and a request
 * is rare: one per list per HM_CONSUL_REFRESH), never a proxy from the environment (the agent
 * is local or cluster-internal), and is bounded by HM_CONSUL_TIMEOUT.
 *
 * Cached lists are entries of one linked list, keyed by (kind, name): the instances of a
 * service ("host:port" strings, sorted so round-robin survives a refresh that changes nothing)
 * or the services carrying a tag (names, sorted). Entries are added, never removed before
 * hm_consul_destroy(), so a pointer to one stays valid while c->lock is released around a
 * fetch. At most one thread fetches an entry at a time (`refreshing`); the others use the old
 * list, or wait on c->fetched when there is none yet.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "hm/arena.h"
#include "hm/consul.h"
#include "hm/id.h"
#include "hm/err.h"
#include "hm/log.h"
#include "hm/server.h"

#define SEC  1000LL
#define MIN  (60LL * SEC)
#define HOUR (60LL * MIN)

#define CONSUL_TAG_MAX         128        /* longest tag, bytes */
#define CONSUL_TAGS_MAX        32         /* most tags per registration */
#define CONSUL_BODY_MAX        (8 << 20)  /* largest response accepted, bytes */
#define CONSUL_FIRST_RETRY_MS  SEC        /* nothing known yet: ask again after this */
#define CONSUL_REG_BACKOFF_MIN SEC        /* registration retries: first pause */
#define CONSUL_REG_BACKOFF_MAX (30 * SEC) /* ... doubling up to this */
#define CONSUL_ECHO_MAX        200        /* bytes of a response quoted in logs */
#define CONSUL_HOST_MAX        253        /* longest advertised host (a DNS name) */

/* ---- configuration table ---- */

#define CONSUL(field, nm, ty, df, lo, hi, ch, fl, hp)                                              \
    HM_CFG_VAR(hm_consul_config_t, field, nm, ty, df, lo, hi, ch, fl, hp)

const hm_cfg_var_t hm_consul_config_vars[] = {
    CONSUL(addr, "HM_CONSUL_ADDR", HM_CFG_STR, NULL, 1, 0, NULL, 0,
           "Consul agent HTTP API \"http://host:port\"; empty = peers from HM_<PEER>_ADDR"),
    CONSUL(token, "HM_CONSUL_TOKEN", HM_CFG_STR, NULL, 1, 0, NULL, HM_CFG_SECRET,
           "Consul ACL token, sent as X-Consul-Token"),
    CONSUL(service_address, "HM_SERVICE_ADDRESS", HM_CFG_STR, NULL, 1, 0, NULL, 0,
           "address registered in Consul; default: the gRPC listen host, or HM_POD_IP"),
    CONSUL(pod_ip, "HM_POD_IP", HM_CFG_STR, NULL, 1, 0, NULL, 0,
           "this pod's IP, registered when gRPC listens on all interfaces"),
    CONSUL(tags, "HM_CONSUL_TAGS", HM_CFG_STR, NULL, 1, 0, NULL, 0,
           "extra Consul tags of this instance, comma-separated"),
    CONSUL(check_interval_ms, "HM_CONSUL_CHECK_INTERVAL", HM_CFG_DURATION, "10s", SEC, 10 * MIN,
           NULL, 0, "how often Consul runs the gRPC readiness check"),
    CONSUL(deregister_after_ms, "HM_CONSUL_DEREGISTER_AFTER", HM_CFG_DURATION, "1m", MIN, 72 * HOUR,
           NULL, 0, "Consul removes an instance critical for this long"),
    CONSUL(refresh_ms, "HM_CONSUL_REFRESH", HM_CFG_DURATION, "5s", 100, 10 * MIN, NULL, 0,
           "age at which cached peer lists are fetched again"),
    CONSUL(timeout_ms, "HM_CONSUL_TIMEOUT", HM_CFG_DURATION, "2s", 100, MIN, NULL, 0,
           "bound on one request to Consul"),
};

const size_t hm_consul_config_nvars =
    sizeof hm_consul_config_vars / sizeof hm_consul_config_vars[0];

/* ---- state ---- */

typedef enum entry_kind {
    ENTRY_SERVICE, /* items: "host:port" of passing instances of service `key` */
    ENTRY_TAG,     /* items: names of services carrying tag `key` */
} entry_kind_t;

/* A cached list. All fields but next, kind and key are guarded by hm_consul.lock. */
typedef struct entry {
    struct entry *next;               /* older entry; immutable once linked */
    entry_kind_t kind;                /* immutable */
    char key[HM_CONSUL_NAME_MAX + 1]; /* service name or tag; immutable */
    char **items;                     /* owned, sorted, nitems strings (each owned) */
    size_t nitems;
    unsigned rr;     /* round-robin position (ENTRY_SERVICE) */
    int64_t due_ms;  /* monotonic ms from which the list is refetched */
    bool known;      /* a list was fetched once (maybe empty) */
    bool refreshing; /* a thread is fetching; others must not */
    bool failing;    /* the last fetch failed (logged once per outage) */
} entry_t;

struct hm_consul {
    /* Immutable after creation, except tags and check_tls before registration. */
    char *base_url;     /* owned; "http://host:port" without a trailing '/'; NULL = disabled */
    char *token_header; /* owned; "X-Consul-Token: ..." or NULL */
    char *name;         /* owned; service name */
    char *version;      /* owned */
    char *address;      /* owned; advertised host, without brackets */
    int port;           /* advertised port */
    char *id;           /* owned; instance ID */
    char *tags[CONSUL_TAGS_MAX]; /* owned, ntags strings, unique */
    size_t ntags;
    bool check_tls;        /* GRPCUseTLS */
    int64_t interval_ms;   /* check Interval */
    int64_t deregister_ms; /* check DeregisterCriticalServiceAfter */
    int64_t refresh_ms;    /* age of a list before it is fetched again */
    long timeout_ms;       /* per HTTP request */
    /* Main thread only. */
    bool want_registered;   /* register() was called and deregister() was not */
    int64_t reg_retry_ms;   /* monotonic ms of the next registration attempt by tick */
    int64_t reg_backoff_ms; /* last pause between attempts; 0 after a success */
    /* Shared. */
    pthread_mutex_t lock;   /* guards entries and every entry's mutable fields */
    pthread_cond_t fetched; /* broadcast when an entry's fetch ends */
    entry_t *entries;       /* newest first */
    struct {
        _Atomic uint64_t requests, failures, registered;
    } st;
};

#define INC(p) atomic_fetch_add_explicit((p), 1, memory_order_relaxed)
#define GET(p) atomic_load_explicit((p), memory_order_relaxed)

/* ---- small helpers ---- */

static bool name_ok(const char *s)
{
    return s != NULL && hm_str_is_token(s, strlen(s), HM_CONSUL_NAME_MAX);
}

/* Printable ASCII, no spaces (Consul recommends DNS labels; JSON needs valid UTF-8). */
static bool tag_ok(const char *s, size_t n)
{
    if (n == 0 || n > CONSUL_TAG_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    }
    return true;
}

/* A Go duration string for Consul: "10s", "1m", "1500ms". */
static void go_duration(int64_t ms, char *out, size_t n)
{
    if (ms % MIN == 0)
        snprintf(out, n, "%lldm", (long long)(ms / MIN));
    else if (ms % SEC == 0)
        snprintf(out, n, "%llds", (long long)(ms / SEC));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

/* "host:port", bracketing IPv6 hosts; false when it does not fit. */
static bool join_hostport(const char *host, long port, char *out, size_t n)
{
    int w = strchr(host, ':') != NULL ? snprintf(out, n, "[%s]:%ld", host, port)
                                      : snprintf(out, n, "%s:%ld", host, port);

    return w > 0 && (size_t)w < n;
}

/* Splits "host:port" / "[v6]:port"; false when malformed. host gets at most hostlen - 1. */
static bool split_hostport(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(addr, ':'), *h = addr;
    size_t hlen;
    long p = 0;

    if (colon == NULL || colon[1] == '\0')
        return false;
    for (const char *d = colon + 1; *d != '\0'; d++) {
        if (!isdigit((unsigned char)*d) || p > 65535)
            return false;
        p = p * 10 + (*d - '0');
    }
    if (p < 1 || p > 65535)
        return false;
    hlen = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (hlen < 2 || colon[-1] != ']')
            return false;
        h++;
        hlen -= 2;
    }
    if (hlen >= hostlen)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return true;
}

static bool wildcard_host(const char *h)
{
    return h[0] == '\0' || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0 || strcmp(h, "*") == 0;
}

/* A host to advertise: no spaces, controls, slashes or ports. */
static bool host_ok(const char *h)
{
    size_t colons = 0, n = strlen(h);

    if (n == 0 || n > CONSUL_HOST_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];

        if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '[' || ch == ']')
            return false;
        colons += ch == ':';
    }
    return colons != 1; /* one colon is a port; IPv6 has at least two */
}

/* Normalises HM_CONSUL_ADDR to "scheme://authority"; NULL when it is no such URL. */
static char *base_url(const char *addr)
{
    const char *sep = strstr(addr, "://"), *auth = sep != NULL ? sep + 3 : addr;
    size_t n = strlen(auth);
    char *url;

    if (sep != NULL && !(sep - addr == 4 && strncmp(addr, "http", 4) == 0) &&
        !(sep - addr == 5 && strncmp(addr, "https", 5) == 0))
        return NULL;
    if (n > 0 && auth[n - 1] == '/')
        n--;
    if (n == 0 || auth[0] == ':')
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)auth[i];

        if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '?' || ch == '#' || ch == '@')
            return NULL;
    }
    url = hm_xmalloc((size_t)(auth - addr) + n + 8);
    snprintf(url, (size_t)(auth - addr) + n + 8, "%s%.*s", sep != NULL ? "" : "http://",
             (int)((size_t)(auth - addr) + n), addr);
    return url;
}

/* A response body made printable and short, for logs. */
static void echo(const char *body, size_t len, char *out, size_t n)
{
    size_t i, k = 0;

    for (i = 0; i < len && k + 4 < n && i < CONSUL_ECHO_MAX; i++) {
        unsigned char ch = (unsigned char)body[i];

        out[k++] = ch < 0x20 || ch >= 0x7f ? ' ' : (char)ch;
    }
    while (k > 0 && out[k - 1] == ' ')
        k--;
    if (i < len && k + 4 < n) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_items(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

/* ---- HTTP ---- */

typedef struct body {
    char *data; /* owned, NUL-terminated; NULL while empty */
    size_t len, cap;
    bool overflow; /* the response exceeded CONSUL_BODY_MAX (the transfer was aborted) */
} body_t;

static size_t on_data(char *p, size_t size, size_t nmemb, void *arg)
{
    body_t *b = arg;
    size_t n = size * nmemb;

    if (b->len + n > CONSUL_BODY_MAX) {
        b->overflow = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = hm_xrealloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/*
 * One request: `method` "GET" or "PUT", `path` from "/v1/...", `json` the PUT body or NULL.
 * Returns 0 with *status and the response in *resp (freed by the caller) when Consul
 * answered, whatever the status; HM_EUNAVAIL with the reason in why when it could not be
 * reached. Counts requests, and failures (transport errors and statuses other than 200).
 */
static int http(hm_consul_t *c, const char *method, const char *path, const char *json,
                long *status, body_t *resp, char *why, size_t whylen)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    size_t ulen = strlen(c->base_url) + strlen(path) + 1;
    char *url = hm_xmalloc(ulen);
    CURL *h = curl_easy_init();
    CURLcode rc;

    *status = 0;
    memset(resp, 0, sizeof *resp);
    INC(&c->st.requests);
    if (h == NULL) {
        free(url);
        INC(&c->st.failures);
        snprintf(why, whylen, "curl_easy_init failed");
        return HM_EUNAVAIL;
    }
    snprintf(url, ulen, "%s%s", c->base_url, path);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (json != NULL)
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (c->token_header != NULL)
        hdrs = curl_slist_append(hdrs, c->token_header);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "libhm/" HM_VERSION);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    if (strcmp(method, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, json != NULL ? json : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)(json != NULL ? strlen(json) : 0));
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    else if (resp->overflow)
        snprintf(why, whylen, "response larger than %d bytes", CONSUL_BODY_MAX);
    else
        snprintf(why, whylen, "%s", errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    free(url);
    if (rc != CURLE_OK || *status != 200)
        INC(&c->st.failures);
    if (rc != CURLE_OK) {
        free(resp->data);
        memset(resp, 0, sizeof *resp);
        return HM_EUNAVAIL;
    }
    return 0;
}

/* "HTTP 403: Permission denied" into why. */
static void status_why(long status, const body_t *b, char *why, size_t whylen)
{
    char text[CONSUL_ECHO_MAX + 8];

    echo(b->data != NULL ? b->data : "", b->len, text, sizeof text);
    snprintf(why, whylen, "HTTP %ld%s%s", status, text[0] != '\0' ? ": " : "", text);
}

/* ---- creation ---- */

static int add_tag(hm_consul_t *c, const char *tag, size_t n)
{
    if (!tag_ok(tag, n))
        return HM_EINVAL;
    for (size_t i = 0; i < c->ntags; i++) {
        if (strlen(c->tags[i]) == n && memcmp(c->tags[i], tag, n) == 0)
            return 0;
    }
    if (c->ntags == CONSUL_TAGS_MAX)
        return HM_EINVAL;
    c->tags[c->ntags] = hm_xmalloc(n + 1);
    memcpy(c->tags[c->ntags], tag, n);
    c->tags[c->ntags][n] = '\0';
    c->ntags++;
    return 0;
}

/* Chooses the advertised address; 0 or HM_EINVAL with err naming the variable. */
static int choose_address(hm_consul_t *c, const hm_consul_config_t *cfg, const char *grpc_addr,
                          char *err, size_t errlen)
{
    char host[CONSUL_HOST_MAX + 3];
    const char *adv;

    if (grpc_addr == NULL || !split_hostport(grpc_addr, host, sizeof host, &c->port)) {
        snprintf(err, errlen, "HM_GRPC_ADDR: want host:port to register in Consul");
        return HM_EINVAL;
    }
    if (cfg->service_address != NULL && cfg->service_address[0] != '\0') {
        adv = cfg->service_address;
        if (!host_ok(adv)) {
            snprintf(err, errlen, "HM_SERVICE_ADDRESS: want a host name or IP without a port");
            return HM_EINVAL;
        }
    } else if (!wildcard_host(host)) {
        adv = host;
    } else if (cfg->pod_ip != NULL && cfg->pod_ip[0] != '\0') {
        adv = cfg->pod_ip;
        if (!host_ok(adv)) {
            snprintf(err, errlen, "HM_POD_IP: want an IP address");
            return HM_EINVAL;
        }
    } else {
        snprintf(err, errlen,
                 "HM_SERVICE_ADDRESS: required with HM_CONSUL_ADDR when gRPC listens on all "
                 "interfaces and HM_POD_IP is unset");
        return HM_EINVAL;
    }
    c->address = hm_xstrdup(adv);
    return 0;
}

/* "<name>-<host>-<port>-<8 hex>", the host's characters outside [A-Za-z0-9._] as '-'. */
static void make_id(hm_consul_t *c)
{
    unsigned char rnd[4];
    size_t n = strlen(c->name) + strlen(c->address) + 32;

    hm_random_bytes(rnd, sizeof rnd);
    c->id = hm_xmalloc(n);
    snprintf(c->id, n, "%s-%s-%d-%02x%02x%02x%02x", c->name, c->address, c->port, rnd[0], rnd[1],
             rnd[2], rnd[3]);
    for (char *p = c->id + strlen(c->name) + 1; *p != '\0'; p++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            *p = '-';
    }
}

hm_consul_t *hm_consul_create(const hm_consul_config_t *cfg, const char *service_name,
                              const char *version, const char *grpc_addr, char *err, size_t errlen)
{
    hm_consul_t *c = hm_xcalloc(1, sizeof *c);

    if (errlen > 0)
        err[0] = '\0';
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->fetched, NULL);
    c->name = hm_xstrdup(service_name);
    c->version = hm_xstrdup(version != NULL ? version : "");
    c->interval_ms = cfg->check_interval_ms > 0 ? cfg->check_interval_ms : 10 * SEC;
    c->deregister_ms = cfg->deregister_after_ms > 0 ? cfg->deregister_after_ms : MIN;
    c->refresh_ms = cfg->refresh_ms > 0 ? cfg->refresh_ms : 5 * SEC;
    c->timeout_ms = cfg->timeout_ms > 0 ? (long)cfg->timeout_ms : 2000L;
    if (cfg->addr == NULL || cfg->addr[0] == '\0')
        return c; /* disabled */

    if (!name_ok(service_name)) {
        snprintf(err, errlen, "consul: bad service name \"%.64s\"", service_name);
        goto fail;
    }
    c->base_url = base_url(cfg->addr);
    if (c->base_url == NULL) {
        snprintf(err, errlen, "HM_CONSUL_ADDR: want http://host:port or https://host:port");
        goto fail;
    }
    if (cfg->token != NULL && cfg->token[0] != '\0') {
        size_t n = strlen(cfg->token) + 17;

        for (const char *p = cfg->token; *p != '\0'; p++) {
            if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) {
                snprintf(err, errlen, "HM_CONSUL_TOKEN: control characters are not allowed");
                goto fail;
            }
        }
        c->token_header = hm_xmalloc(n);
        snprintf(c->token_header, n, "X-Consul-Token: %s", cfg->token);
    }
    /* Comma-separated; spaces around a tag and empty elements are ignored. */
    for (const char *p = cfg->tags != NULL ? cfg->tags : "", *next; *p != '\0'; p = next) {
        const char *comma = strchr(p, ','), *end = comma != NULL ? comma : p + strlen(p);

        next = comma != NULL ? comma + 1 : end;
        while (p < end && *p == ' ')
            p++;
        while (end > p && end[-1] == ' ')
            end--;
        if (end > p && add_tag(c, p, (size_t)(end - p)) != 0) {
            snprintf(err, errlen,
                     "HM_CONSUL_TAGS: tags are 1-128 printable characters without spaces, at "
                     "most %d",
                     CONSUL_TAGS_MAX);
            goto fail;
        }
    }
    if (choose_address(c, cfg, grpc_addr, err, errlen) != 0)
        goto fail;
    make_id(c);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return c;

fail:
    free(c->base_url);
    c->base_url = NULL; /* destroy must not clean curl up: it was never initialised */
    hm_consul_destroy(c);
    return NULL;
}

void hm_consul_destroy(hm_consul_t *c)
{
    if (c == NULL)
        return;
    for (entry_t *e = c->entries, *next; e != NULL; e = next) {
        next = e->next;
        free_items(e->items, e->nitems);
        free(e);
    }
    for (size_t i = 0; i < c->ntags; i++)
        free(c->tags[i]);
    if (c->base_url != NULL)
        curl_global_cleanup();
    free(c->base_url);
    free(c->token_header);
    free(c->name);
    free(c->version);
    free(c->address);
    free(c->id);
    pthread_cond_destroy(&c->fetched);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

bool hm_consul_enabled(const hm_consul_t *c)
{
    return c != NULL && c->base_url != NULL;
}

int hm_consul_add_tag(hm_consul_t *c, const char *tag)
{
    return c != NULL && tag != NULL ? add_tag(c, tag, strlen(tag)) : HM_EINVAL;
}

void hm_consul_set_check_tls(hm_consul_t *c, bool use_tls)
{
    if (c != NULL)
        c->check_tls = use_tls;
}

const char *hm_consul_service_id(const hm_consul_t *c)
{
    return hm_consul_enabled(c) ? c->id : NULL;
}

/* ---- registration ---- */

/* The body of PUT /v1/agent/service/register (free()), or NULL when jansson fails. */
static char *registration_json(const hm_consul_t *c)
{
    char grpc[HM_CONSUL_ADDR_MAX + sizeof "/" HM_CONSUL_CHECK_HEALTH_NAME];
    char interval[32], deregister[32];
    json_t *tags = json_array(), *body;
    char *s;

    for (size_t i = 0; i < c->ntags; i++)
        json_array_append_new(tags, json_string(c->tags[i]));
    join_hostport(c->address, c->port, grpc, sizeof grpc);
    strcat(grpc, "/" HM_CONSUL_CHECK_HEALTH_NAME);
    go_duration(c->interval_ms, interval, sizeof interval);
    go_duration(c->deregister_ms, deregister, sizeof deregister);
    body = json_pack("{s:s, s:s, s:s, s:i, s:o, s:{s:s}, s:{s:s, s:b, s:s, s:s}}", "ID", c->id,
                     "Name", c->name, "Address", c->address, "Port", c->port, "Tags", tags, "Meta",
                     "version", c->version, "Check", "GRPC", grpc, "GRPCUseTLS", (int)c->check_tls,
                     "Interval", interval, "DeregisterCriticalServiceAfter", deregister);
    if (body == NULL)
        return NULL;
    s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return s;
}

int hm_consul_register(hm_consul_t *c)
{
    char why[CONSUL_ECHO_MAX + 64];
    char *json;
    body_t resp;
    long status;
    int rc;

    if (!hm_consul_enabled(c))
        return 0;
    c->want_registered = true;
    json = registration_json(c);
    if (json == NULL) {
        HM_ERROR("consul: cannot encode the registration of %s", c->id);
        return HM_EINTERNAL;
    }
    rc = http(c, "PUT", "/v1/agent/service/register", json, &status, &resp, why, sizeof why);
    free(json);
    if (rc == 0 && status == 200) {
        atomic_store(&c->st.registered, 1);
        c->reg_backoff_ms = 0;
        HM_INFO("consul: registered %s (%s) at %s:%d", c->id, c->name, c->address, c->port);
        free(resp.data);
        return 0;
    }
    if (rc == 0) {
        status_why(status, &resp, why, sizeof why);
        rc = status == 400 ? HM_EINVAL : status == 401 || status == 403 ? HM_EPERM : HM_EUNAVAIL;
    }
    free(resp.data);
    c->reg_backoff_ms = c->reg_backoff_ms == 0 ? CONSUL_REG_BACKOFF_MIN : c->reg_backoff_ms * 2;
    if (c->reg_backoff_ms > CONSUL_REG_BACKOFF_MAX)
        c->reg_backoff_ms = CONSUL_REG_BACKOFF_MAX;
    c->reg_retry_ms = hm_mono_ms() + c->reg_backoff_ms;
    HM_ERROR("consul: registration of %s failed: %s; retrying in %lld ms", c->id, why,
             (long long)c->reg_backoff_ms);
    return rc;
}

int hm_consul_deregister(hm_consul_t *c)
{
    char why[CONSUL_ECHO_MAX + 64], path[HM_CONSUL_ADDR_MAX + 64];
    body_t resp;
    long status;
    int rc;

    if (!hm_consul_enabled(c))
        return 0;
    c->want_registered = false;
    if (GET(&c->st.registered) == 0)
        return 0;
    snprintf(path, sizeof path, "/v1/agent/service/deregister/%s", c->id);
    rc = http(c, "PUT", path, NULL, &status, &resp, why, sizeof why);
    if (rc == 0 && (status == 200 || status == 404)) {
        atomic_store(&c->st.registered, 0);
        HM_INFO("consul: deregistered %s", c->id);
        free(resp.data);
        return 0;
    }
    if (rc == 0)
        status_why(status, &resp, why, sizeof why);
    free(resp.data);
    HM_WARN("consul: deregistration of %s failed: %s; Consul removes it %lld ms after its check "
            "turns critical",
            c->id, why, (long long)c->deregister_ms);
    return HM_EUNAVAIL;
}

/* ---- fetching lists ---- */

/* Passing instances of `service` as sorted "host:port" strings. */
static int fetch_instances(hm_consul_t *c, const char *service, char ***items, size_t *nitems,
                           char *why, size_t whylen)
{
    char path[HM_CONSUL_NAME_MAX + 64];
    json_error_t jerr;
    json_t *root, *inst;
    body_t resp;
    long status;
    size_t i;
    int rc;

    snprintf(path, sizeof path, "/v1/health/service/%s?passing=true", service);
    rc = http(c, "GET", path, NULL, &status, &resp, why, whylen);
    if (rc != 0)
        return rc;
    if (status != 200) {
        status_why(status, &resp, why, whylen);
        free(resp.data);
        return HM_EUNAVAIL;
    }
    root = json_loadb(resp.data != NULL ? resp.data : "", resp.len, 0, &jerr);
    free(resp.data);
    if (!json_is_array(root)) {
        snprintf(why, whylen, "health of %s: not a JSON array", service);
        json_decref(root);
        return HM_EUNAVAIL;
    }
    *items = hm_xcalloc(json_array_size(root) + 1, sizeof **items);
    *nitems = 0;
    json_array_foreach(root, i, inst)
    {
        const char *saddr =
            json_string_value(json_object_get(json_object_get(inst, "Service"), "Address"));
        const char *naddr =
            json_string_value(json_object_get(json_object_get(inst, "Node"), "Address"));
        json_t *port = json_object_get(json_object_get(inst, "Service"), "Port");
        const char *host = saddr != NULL && saddr[0] != '\0' ? saddr : naddr;
        char buf[HM_CONSUL_ADDR_MAX + 1];

        if (host == NULL || host[0] == '\0' || !json_is_integer(port) ||
            json_integer_value(port) < 1 || json_integer_value(port) > 65535 ||
            !join_hostport(host, (long)json_integer_value(port), buf, sizeof buf)) {
            HM_DEBUG("consul: instance %zu of %s has no usable address", i, service);
            continue;
        }
        (*items)[(*nitems)++] = hm_xstrdup(buf);
    }
    json_decref(root);
    qsort(*items, *nitems, sizeof **items, cmp_str);
    return 0;
}

/* Names of the catalog's services carrying `tag`, sorted. */
static int fetch_tagged(hm_consul_t *c, const char *tag, char ***items, size_t *nitems, char *why,
                        size_t whylen)
{
    json_error_t jerr;
    json_t *root, *tags;
    const char *name;
    body_t resp;
    long status;
    int rc;

    rc = http(c, "GET", "/v1/catalog/services", NULL, &status, &resp, why, whylen);
    if (rc != 0)
        return rc;
    if (status != 200) {
        status_why(status, &resp, why, whylen);
        free(resp.data);
        return HM_EUNAVAIL;
    }
    root = json_loadb(resp.data != NULL ? resp.data : "", resp.len, 0, &jerr);
    free(resp.data);
    if (!json_is_object(root)) {
        snprintf(why, whylen, "catalog services: not a JSON object");
        json_decref(root);
        return HM_EUNAVAIL;
    }
    *items = hm_xcalloc(json_object_size(root) + 1, sizeof **items);
    *nitems = 0;
    json_object_foreach(root, name, tags)
    {
        size_t i;
        json_t *t;

        if (!name_ok(name))
            continue;
        json_array_foreach(tags, i, t)
        {
            if (json_is_string(t) && strcmp(json_string_value(t), tag) == 0) {
                (*items)[(*nitems)++] = hm_xstrdup(name);
                break;
            }
        }
    }
    json_decref(root);
    qsort(*items, *nitems, sizeof **items, cmp_str);
    return 0;
}

/* ---- the cache ---- */

/* With c->lock held: the entry for (kind, key), created when missing. */
static entry_t *entry_get(hm_consul_t *c, entry_kind_t kind, const char *key)
{
    entry_t *e;

    for (e = c->entries; e != NULL; e = e->next) {
        if (e->kind == kind && strcmp(e->key, key) == 0)
            return e;
    }
    e = hm_xcalloc(1, sizeof *e);
    e->kind = kind;
    snprintf(e->key, sizeof e->key, "%s", key);
    e->next = c->entries;
    c->entries = e;
    return e;
}

/* With c->lock held and e->refreshing set by the caller: fetches e's list with the lock
 * released, installs it (or keeps the old one on failure), clears refreshing, wakes waiters. */
static void refresh(hm_consul_t *c, entry_t *e)
{
    const char *what = e->kind == ENTRY_SERVICE ? "instances of" : "services tagged";
    char why[CONSUL_ECHO_MAX + 64] = "";
    char **items = NULL;
    size_t nitems = 0;
    int rc;

    pthread_mutex_unlock(&c->lock);
    if (e->kind == ENTRY_SERVICE)
        rc = fetch_instances(c, e->key, &items, &nitems, why, sizeof why);
    else
        rc = fetch_tagged(c, e->key, &items, &nitems, why, sizeof why);
    pthread_mutex_lock(&c->lock);

    if (rc == 0) {
        if (e->failing)
            HM_INFO("consul: %s %s fetched again (%zu)", what, e->key, nitems);
        else if (!e->known || nitems != e->nitems)
            HM_DEBUG("consul: %zu %s %s", nitems, what, e->key);
        free_items(e->items, e->nitems);
        e->items = items;
        e->nitems = nitems;
        e->known = true;
        e->failing = false;
        e->due_ms = hm_mono_ms() + c->refresh_ms;
    } else {
        if (!e->failing) {
            if (e->known)
                HM_WARN("consul: cannot fetch %s %s: %s; keeping the %zu known", what, e->key, why,
                        e->nitems);
            else
                HM_WARN("consul: cannot fetch %s %s: %s", what, e->key, why);
        }
        e->failing = true;
        e->due_ms = hm_mono_ms() + (e->known || c->refresh_ms < CONSUL_FIRST_RETRY_MS
                                        ? c->refresh_ms
                                        : CONSUL_FIRST_RETRY_MS);
    }
    e->refreshing = false;
    pthread_cond_broadcast(&c->fetched);
}

/* With c->lock held: brings e up to date enough to answer from (see the file head). */
static void ensure(hm_consul_t *c, entry_t *e)
{
    for (;;) {
        if (hm_mono_ms() < e->due_ms)
            return;
        if (!e->refreshing)
            break;
        if (e->known)
            return; /* another thread fetches: the old list will do */
        pthread_cond_wait(&c->fetched, &c->lock);
    }
    e->refreshing = true;
    refresh(c, e);
}

void hm_consul_tick(hm_consul_t *c)
{
    if (!hm_consul_enabled(c))
        return;
    if (c->want_registered && GET(&c->st.registered) == 0 && hm_mono_ms() >= c->reg_retry_ms)
        (void)hm_consul_register(c);
    pthread_mutex_lock(&c->lock);
    for (entry_t *e = c->entries; e != NULL; e = e->next) {
        if (!e->refreshing && hm_mono_ms() >= e->due_ms) {
            e->refreshing = true;
            refresh(c, e); /* entries are never unlinked: e->next stays valid */
        }
    }
    pthread_mutex_unlock(&c->lock);
}

int hm_consul_resolve(hm_consul_t *c, const char *service, char *out, size_t n)
{
    entry_t *e;
    int rc = 0;

    if (n > 0)
        out[0] = '\0';
    if (!name_ok(service))
        return HM_EINVAL;
    if (!hm_consul_enabled(c))
        return HM_EUNAVAIL;
    pthread_mutex_lock(&c->lock);
    e = entry_get(c, ENTRY_SERVICE, service);
    ensure(c, e);
    if (e->nitems == 0) {
        rc = HM_EUNAVAIL;
    } else {
        const char *a = e->items[e->rr % e->nitems];

        if (strlen(a) >= n) {
            rc = HM_EINVAL;
        } else {
            memcpy(out, a, strlen(a) + 1);
            e->rr++;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int hm_consul_resolve_tagged(hm_consul_t *c, const char *tag, hm_consul_peer_t *out, size_t cap)
{
    char **names;
    size_t count;
    entry_t *e;

    if (tag == NULL || !tag_ok(tag, strlen(tag)) || strlen(tag) > HM_CONSUL_NAME_MAX)
        return HM_EINVAL;
    if (!hm_consul_enabled(c))
        return HM_EUNAVAIL;
    pthread_mutex_lock(&c->lock);
    e = entry_get(c, ENTRY_TAG, tag);
    ensure(c, e);
    if (!e->known) {
        pthread_mutex_unlock(&c->lock);
        return HM_EUNAVAIL;
    }
    count = e->nitems;
    names = hm_xcalloc(count + 1, sizeof *names);
    for (size_t i = 0; i < count; i++)
        names[i] = hm_xstrdup(e->items[i]);
    pthread_mutex_unlock(&c->lock);

    for (size_t i = 0; i < count && i < cap; i++) {
        snprintf(out[i].service, sizeof out[i].service, "%s", names[i]);
        if (hm_consul_resolve(c, names[i], out[i].addr, sizeof out[i].addr) != 0)
            out[i].addr[0] = '\0';
    }
    free_items(names, count);
    return (int)count;
}

int hm_peer_addr(hm_consul_t *c, const char *service, char *out, size_t n)
{
    char var[HM_CONSUL_NAME_MAX + 16];
    const char *v;
    size_t k = 0;
    int rc = HM_ENOTFOUND;

    if (n > 0)
        out[0] = '\0';
    if (!name_ok(service))
        return HM_EINVAL;
    if (hm_consul_enabled(c)) {
        rc = hm_consul_resolve(c, service, out, n);
        if (rc != HM_EUNAVAIL)
            return rc;
    }
    k += (size_t)snprintf(var, sizeof var, "HM_");
    for (const char *p = service; *p != '\0'; p++)
        var[k++] = *p == '-' || *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    snprintf(var + k, sizeof var - k, "_ADDR");
    v = getenv(var);
    if (v == NULL || v[0] == '\0')
        return rc;
    if (strlen(v) >= n)
        return HM_EINVAL;
    if (rc == HM_EUNAVAIL)
        HM_DEBUG("consul: no instance of %s: using %s", service, var);
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

/* ---- counters ---- */

void hm_consul_stats(const hm_consul_t *c, hm_consul_stats_t *out)
{
    hm_consul_t *m = (hm_consul_t *)c; /* atomic loads take non-const pointers in C17 */

    memset(out, 0, sizeof *out);
    if (m == NULL)
        return;
    out->requests = GET(&m->st.requests);
    out->failures = GET(&m->st.failures);
    out->registered = GET(&m->st.registered);
}

void hm_consul_metrics(const hm_consul_t *c, FILE *out)
{
    hm_consul_stats_t st;

    if (!hm_consul_enabled(c))
        return;
    hm_consul_stats(c, &st);
    fprintf(out,
            "# HELP hm_consul_registered 1 while this instance is registered in Consul.\n"
            "# TYPE hm_consul_registered gauge\n"
            "hm_consul_registered %llu\n"
            "# HELP hm_consul_requests_total Requests to the Consul agent by result.\n"
            "# TYPE hm_consul_requests_total counter\n"
            "hm_consul_requests_total{result=\"ok\"} %llu\n"
            "hm_consul_requests_total{result=\"error\"} %llu\n",
            (unsigned long long)st.registered, (unsigned long long)(st.requests - st.failures),
            (unsigned long long)st.failures);
}
