/*
 * mesh.c - a daemon's place in the mesh, for hm_daemon_main(): its configuration tables
 * (HM_TLS_*, HM_PEER_TLS*, HM_REFLECTION, HM_DATA_SUBJECT_PEERS, plus those of hm/consul.h and
 * hm/ratelimit.h), the TLS material read from files at start, the Consul client (registration
 * once serving, deregistration before the drain, the main loop's tick), the rate limiter the
 * workers share, and the list of data-subject participants for privacyd.
 *
 * Everything here is set up by the main thread before the workers start and torn down after
 * they stopped; workers and the admin thread only read it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/client.h"
#include "hm/consul.h"
#include "hm/log.h"
#include "hm/peer.h"
#include "hm/ratelimit.h"
#include "internal.h"

#define PEM_MAX (1 << 20) /* largest certificate, key or CA bundle file read */

/* HM_TLS_CLIENT_AUTH values. */
enum { CLIENT_AUTH_REQUIRE, CLIENT_AUTH_OPTIONAL, CLIENT_AUTH_NONE };
/* HM_PEER_TLS values. */
enum { PEER_TLS_AUTO, PEER_TLS_ON, PEER_TLS_OFF };

typedef struct mesh_config {
    const char *tls_cert;           /* HM_TLS_CERT: file */
    const char *tls_key;            /* HM_TLS_KEY: file */
    const char *tls_ca;             /* HM_TLS_CA: file; client certificates must chain to it */
    int tls_client_auth;            /* HM_TLS_CLIENT_AUTH */
    int peer_tls;                   /* HM_PEER_TLS */
    const char *peer_ca;            /* HM_PEER_TLS_CA: file; default HM_TLS_CA */
    const char *peer_server_name;   /* HM_PEER_TLS_SERVER_NAME */
    bool reflection;                /* HM_REFLECTION */
    const char *data_subject_peers; /* HM_DATA_SUBJECT_PEERS: "guestd,bookingd,..." */
} mesh_config_t;

#define MESH(field, nm, ty, df, ch, hp)                                                            \
    HM_CFG_VAR(mesh_config_t, field, nm, ty, df, 1, 0, ch, 0, hp)

static const hm_cfg_var_t mesh_vars[] = {
    MESH(tls_cert, "HM_TLS_CERT", HM_CFG_STR, NULL, NULL,
         "PEM certificate chain of the gRPC port; set with HM_TLS_KEY to serve TLS"),
    MESH(tls_key, "HM_TLS_KEY", HM_CFG_STR, NULL, NULL, "PEM private key of HM_TLS_CERT (a file)"),
    MESH(tls_ca, "HM_TLS_CA", HM_CFG_STR, NULL, NULL,
         "PEM CA bundle clients' certificates must chain to (mTLS); also trusted for peers"),
    MESH(tls_client_auth, "HM_TLS_CLIENT_AUTH", HM_CFG_ENUM, "require", "require|optional|none",
         "with HM_TLS_CA: client certificate required, verified when sent, or not asked for"),
    MESH(peer_tls, "HM_PEER_TLS", HM_CFG_ENUM, "auto", "auto|on|off",
         "TLS to peers (hm_peer_call); auto = on when HM_TLS_CERT is set"),
    MESH(peer_ca, "HM_PEER_TLS_CA", HM_CFG_STR, NULL, NULL,
         "PEM CA bundle for peers' certificates; default HM_TLS_CA, else the system's"),
    MESH(peer_server_name, "HM_PEER_TLS_SERVER_NAME", HM_CFG_STR, NULL, NULL,
         "name expected in peers' certificates instead of the host dialled"),
    MESH(reflection, "HM_REFLECTION", HM_CFG_BOOL, "on", NULL,
         "answer grpc.reflection.v1 and v1alpha (list and describe services)"),
    MESH(data_subject_peers, "HM_DATA_SUBJECT_PEERS", HM_CFG_STR, NULL, NULL,
         "without Consul: the daemons serving DataSubjectService, comma-separated"),
};
static const size_t mesh_nvars = sizeof mesh_vars / sizeof mesh_vars[0];

static struct mesh {
    mesh_config_t cfg;
    hm_consul_config_t consul_cfg;
    hm_ratelimit_config_t rl_cfg;
    hm__tls_t tls;           /* server TLS; tls.on false = plaintext */
    hm_client_tls_t peer;    /* client TLS; strings point into tls, peer_root, cfg */
    bool peer_on;            /* peers are called with TLS */
    char *peer_root;         /* owned PEM of HM_PEER_TLS_CA (when it differs from HM_TLS_CA) */
    hm_consul_t *consul;     /* NULL before load */
    hm_ratelimit_t *limiter; /* NULL before load */
} mesh;

/* Reads a whole PEM file into a NUL-terminated string; NULL with err naming `var`. */
static char *read_pem(const char *var, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read %s", var, path);
        return NULL;
    }
    char *buf = hm_xmalloc(PEM_MAX + 1);
    size_t n = fread(buf, 1, PEM_MAX + 1, f);
    fclose(f);
    if (n > PEM_MAX || n == 0 || !strstr(buf, "-----BEGIN ")) {
        snprintf(err, errlen, "%s: %s is not a PEM file (or larger than 1 MiB)", var, path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static bool set(const char *s)
{
    return s && *s;
}

static int load_tls(char *err, size_t errlen)
{
    mesh_config_t *c = &mesh.cfg;
    if (set(c->tls_cert) != set(c->tls_key)) {
        snprintf(err, errlen, "%s: required with %s",
                 set(c->tls_cert) ? "HM_TLS_KEY" : "HM_TLS_CERT",
                 set(c->tls_cert) ? "HM_TLS_CERT" : "HM_TLS_KEY");
        return HM_EINVAL;
    }
    if (set(c->tls_ca) && !set(c->tls_cert)) {
        snprintf(err, errlen, "HM_TLS_CA: needs HM_TLS_CERT and HM_TLS_KEY (mTLS is over TLS)");
        return HM_EINVAL;
    }
    if (set(c->tls_cert)) {
        mesh.tls.on = true;
        if (!(mesh.tls.cert_pem = read_pem("HM_TLS_CERT", c->tls_cert, err, errlen)) ||
            !(mesh.tls.key_pem = read_pem("HM_TLS_KEY", c->tls_key, err, errlen)))
            return HM_EINVAL;
        if (set(c->tls_ca)) {
            if (!(mesh.tls.ca_pem = read_pem("HM_TLS_CA", c->tls_ca, err, errlen)))
                return HM_EINVAL;
            mesh.tls.client_auth = c->tls_client_auth == CLIENT_AUTH_REQUIRE    ? HM__TLS_REQUIRE
                                   : c->tls_client_auth == CLIENT_AUTH_OPTIONAL ? HM__TLS_OPTIONAL
                                                                                : HM__TLS_NONE;
        }
    }
    mesh.peer_on = c->peer_tls == PEER_TLS_ON || (c->peer_tls == PEER_TLS_AUTO && mesh.tls.on);
    if (!mesh.peer_on)
        return 0;
    if (set(c->peer_ca)) {
        if (!(mesh.peer_root = read_pem("HM_PEER_TLS_CA", c->peer_ca, err, errlen)))
            return HM_EINVAL;
        mesh.peer.root_pem = mesh.peer_root;
    } else {
        mesh.peer.root_pem = mesh.tls.ca_pem; /* NULL: the system's roots */
    }
    mesh.peer.cert_pem = mesh.tls.cert_pem; /* our own certificate doubles as client's */
    mesh.peer.key_pem = mesh.tls.key_pem;
    mesh.peer.server_name = set(c->peer_server_name) ? c->peer_server_name : NULL;
    return 0;
}

int hm__mesh_load(const hm_daemon_t *d, const hm_common_config_t *common, char *err, size_t errlen)
{
    if (hm_config_load(mesh_vars, mesh_nvars, &mesh.cfg, err, errlen) ||
        hm_config_load(hm_consul_config_vars, hm_consul_config_nvars, &mesh.consul_cfg, err,
                       errlen) ||
        hm_config_load(hm_ratelimit_config_vars, hm_ratelimit_config_nvars, &mesh.rl_cfg, err,
                       errlen))
        return HM_EINVAL;
    int rc = load_tls(err, errlen);
    if (rc)
        return rc;
    mesh.limiter = hm_ratelimit_create(&mesh.rl_cfg, d->name, err, errlen);
    if (!mesh.limiter)
        return HM_EINVAL;
    mesh.consul =
        hm_consul_create(&mesh.consul_cfg, d->name, HM_VERSION, common->grpc_addr, err, errlen);
    if (!mesh.consul)
        return HM_EINVAL;
    if (d->data_subject && hm_consul_add_tag(mesh.consul, HM_DATA_SUBJECT_TAG) != 0) {
        snprintf(err, errlen, "HM_CONSUL_TAGS: too many tags to add %s", HM_DATA_SUBJECT_TAG);
        return HM_EINVAL;
    }
    hm_consul_set_check_tls(mesh.consul, mesh.tls.on);
    return 0;
}

void hm__mesh_help(FILE *out)
{
    fprintf(out, "\nTLS, reflection and peers:\n");
    hm_config_help(out, mesh_vars, mesh_nvars);
    fprintf(out, "\nRate limits:\n");
    hm_config_help(out, hm_ratelimit_config_vars, hm_ratelimit_config_nvars);
    fprintf(out, "\nConsul:\n");
    hm_config_help(out, hm_consul_config_vars, hm_consul_config_nvars);
}

void hm__mesh_client(hm_client_t *client)
{
    if (mesh.peer_on)
        hm_client_set_tls(client, &mesh.peer);
}

void hm__mesh_serving(void)
{
    if (!hm_consul_enabled(mesh.consul))
        return;
    /* A failure is logged by hm_consul_register; the tick retries with backoff. */
    (void)hm_consul_register(mesh.consul);
}

void hm__mesh_tick(void)
{
    hm_consul_tick(mesh.consul);
}

void hm__mesh_leaving(void)
{
    (void)hm_consul_deregister(mesh.consul);
}

void hm__mesh_metrics(FILE *out)
{
    hm_ratelimit_metrics(mesh.limiter, out);
    hm_consul_metrics(mesh.consul, out);
}

void hm__mesh_unload(void)
{
    hm_consul_destroy(mesh.consul);
    hm_ratelimit_destroy(mesh.limiter);
    free(mesh.tls.cert_pem);
    free(mesh.tls.key_pem);
    free(mesh.tls.ca_pem);
    free(mesh.peer_root);
    memset(&mesh, 0, sizeof mesh);
}

hm_consul_t *hm__consul(void)
{
    return mesh.consul;
}

hm_ratelimit_t *hm__ratelimit(void)
{
    return mesh.limiter;
}

const hm__tls_t *hm__server_tls(void)
{
    return &mesh.tls;
}

bool hm__reflection_enabled(void)
{
    return mesh.cfg.reflection;
}

static int cmp_peer(const void *a, const void *b)
{
    return strcmp(((const hm_consul_peer_t *)a)->service, ((const hm_consul_peer_t *)b)->service);
}

int hm_peer_data_subjects(hm_consul_peer_t *out, size_t cap)
{
    if (hm_consul_enabled(mesh.consul))
        return hm_consul_resolve_tagged(mesh.consul, HM_DATA_SUBJECT_TAG, out, cap);
    /* Without Consul: HM_DATA_SUBJECT_PEERS, each resolved from HM_<PEER>_ADDR. */
    const char *list = mesh.cfg.data_subject_peers;
    size_t n = 0;
    for (const char *p = list ? list : "", *next; *p; p = next) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        next = comma ? comma + 1 : end;
        while (p < end && *p == ' ')
            p++;
        while (end > p && end[-1] == ' ')
            end--;
        if (end == p || (size_t)(end - p) > HM_CONSUL_NAME_MAX)
            continue;
        if (n < cap) {
            hm_consul_peer_t *e = &out[n];
            memcpy(e->service, p, (size_t)(end - p));
            e->service[end - p] = '\0';
            if (hm_peer_addr(NULL, e->service, e->addr, sizeof e->addr) != 0)
                e->addr[0] = '\0';
        }
        n++;
    }
    qsort(out, n < cap ? n : cap, sizeof *out, cmp_peer);
    return (int)n;
}
