/*
 * admin.c - the admin HTTP port (libmicrohttpd, its own thread): Prometheus metrics on
 * /metrics, liveness on /healthz and readiness on /readyz. Never on the gRPC port, so probes
 * and scrapes keep working while the gRPC workers are saturated.
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hm/log.h"
#include "internal.h"

static struct MHD_Daemon *mhd;

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *type,
                             char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload, (void)upload_size, (void)state;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, 405, "text/plain", strdup("method not allowed\n"), 19);
    if (strcmp(url, "/metrics") == 0) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
            return MHD_NO;
        hm__server_metrics(f);
        hm__metrics_extra(f);
        fclose(f);
        return reply(conn, 200, "text/plain; version=0.0.4", buf, len);
    }
    if (strcmp(url, "/healthz") == 0)
        return reply(conn, 200, "text/plain", strdup("ok\n"), 3);
    if (strcmp(url, "/readyz") == 0) {
        bool r = hm__health_ready();
        return reply(conn, r ? 200 : 503, "text/plain", strdup(r ? "ready\n" : "not ready\n"),
                     r ? 6 : 10);
    }
    return reply(conn, 404, "text/plain", strdup("not found\n"), 10);
}

int hm__admin_start(const char *addr, char *err, size_t errlen)
{
    const char *colon = strrchr(addr, ':');
    if (!colon) {
        snprintf(err, errlen, "HM_ADMIN_ADDR: expected host:port");
        return HM_EINVAL;
    }
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)atoi(colon + 1));
    char host[64];
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof(host))
        hl = sizeof(host) - 1;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sin.sin_addr) != 1) {
        snprintf(err, errlen, "HM_ADMIN_ADDR: not an IPv4 address: %s", host);
        return HM_EINVAL;
    }
    mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                           handle, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
                           MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!mhd) {
        snprintf(err, errlen, "HM_ADMIN_ADDR: cannot listen on %s", addr);
        return HM_EIO;
    }
    HM_INFO("admin HTTP (metrics, healthz, readyz) on %s", addr);
    return 0;
}

void hm__admin_stop(void)
{
    if (mhd)
        MHD_stop_daemon(mhd);
    mhd = NULL;
}
