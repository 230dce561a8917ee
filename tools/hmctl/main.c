/*
 * hmctl - the operator's command line for the mesh.
 *
 *   hmctl health ADDR [SERVICE] [--timeout MS] [--attempts N]
 *                                        grpc.health.v1 Check; exit 0 when SERVING
 *                                        (retries UNAVAILABLE up to N attempts)
 *   hmctl token --sub ID --role ROLE ...  a development HS256 token (HM_JWT_HS256_SECRET)
 *   hmctl events streams|dlq|replay ...  streams, dead letters and replays (HM_REDIS_ADDR)
 *   hmctl migrate status|up|down N --service NAME
 *                                        schema migrations of one daemon's database
 *                                        (HM_DATABASE_URL names the database)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "hm/client.h"
#include "hm/db.h"
#include "hm/migrate.h"
#include "events.h"
#include "token.h"

#define MIGRATIONS(d)                                                                              \
    extern const hm_migration_t d##_migrations[];                                                  \
    extern const size_t d##_nmigrations;
MIGRATIONS(guestd)
MIGRATIONS(bookingd)
MIGRATIONS(recommenderd)
MIGRATIONS(gamificationd)
MIGRATIONS(privacyd)

typedef struct service_migrations {
    const char *name;
    const hm_migration_t *migs;
    const size_t *n;
} service_migrations_t;

static const service_migrations_t all_migrations[] = {
    {"guestd", guestd_migrations, &guestd_nmigrations},
    {"bookingd", bookingd_migrations, &bookingd_nmigrations},
    {"recommenderd", recommenderd_migrations, &recommenderd_nmigrations},
    {"gamificationd", gamificationd_migrations, &gamificationd_nmigrations},
    {"privacyd", privacyd_migrations, &privacyd_nmigrations},
};

static int usage(void)
{
    fprintf(
        stderr,
        "usage: hmctl health ADDR [SERVICE] [--timeout MS] [--attempts N]\n"
        "       hmctl migrate status|up|down VERSION --service NAME   (HM_DATABASE_URL)\n"
        "       hmctl token --sub ID --role guest|staff|admin|service [--venue V]... [--ttl 1h]\n"
        "                   [--kid K] [--iss ISS] [--aud AUD]     (HM_JWT_HS256_SECRET)\n"
        "       hmctl events streams | dlq list [--daemon D] | dlq requeue ID|--all --daemon D\n"
        "                    | replay --daemon D --stream S --from ID|TIME  (HM_REDIS_ADDR)\n");
    return 2;
}

static int cmd_health(int argc, char **argv)
{
    if (argc < 1)
        return usage();
    const char *addr = argv[0];
    const char *service = "";
    int64_t timeout = 2000;
    int attempts = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            timeout = atoll(argv[++i]);
        else if (strcmp(argv[i], "--attempts") == 0 && i + 1 < argc)
            attempts = atoi(argv[++i]);
        else
            service = argv[i];
    }
    hm_client_t *client = hm_client_create(0);
    hm_arena_t arena;
    hm_arena_init(&arena, 0);
    Grpc__Health__V1__HealthCheckRequest req;
    grpc__health__v1__health_check_request__init(&req);
    req.service = (char *)service;
    hm_client_opts_t opts = {.timeout_ms = timeout, .max_attempts = attempts};
    ProtobufCMessage *resp = NULL;
    hm_status_t st =
        hm_client_unary(client, addr, "/grpc.health.v1.Health/Check", &req.base,
                        &grpc__health__v1__health_check_response__descriptor, &arena, &opts, &resp);
    int rc;
    if (!hm_status_ok(st)) {
        printf("%s: %s (%s)\n", addr, hm_code_name(st.code), st.message ? st.message : "");
        rc = 1;
    } else {
        const Grpc__Health__V1__HealthCheckResponse *r = (const void *)resp;
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
            &grpc__health__v1__health_check_response__serving_status__descriptor, r->status);
        printf("%s: %s\n", addr, v ? v->name : "?");
        rc = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
    }
    hm_arena_deinit(&arena);
    hm_client_destroy(client);
    return rc;
}

static int cmd_migrate(int argc, char **argv)
{
    const char *verb = argc > 0 ? argv[0] : NULL;
    const char *service = NULL;
    long target = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--service") == 0 && i + 1 < argc)
            service = argv[++i];
        else
            target = strtol(argv[i], NULL, 10);
    }
    const service_migrations_t *sm = NULL;
    for (size_t i = 0; service && i < sizeof(all_migrations) / sizeof(all_migrations[0]); i++)
        if (strcmp(all_migrations[i].name, service) == 0)
            sm = &all_migrations[i];
    const char *url = getenv("HM_DATABASE_URL");
    if (!verb || !sm || !url || (strcmp(verb, "down") == 0 && target < 0)) {
        if (!sm)
            fprintf(stderr, "hmctl: --service must name a daemon (guestd, bookingd, "
                            "recommenderd, gamificationd, privacyd)\n");
        if (!url)
            fprintf(stderr, "hmctl: HM_DATABASE_URL is not set\n");
        return usage();
    }
    hm_db_t *db = hm_db_create(url, 60000);
    char err[512] = "";
    int rc;
    if (strcmp(verb, "status") == 0)
        rc = hm_migrate_status(db, sm->name, sm->migs, *sm->n, stdout);
    else if (strcmp(verb, "up") == 0)
        rc = hm_migrate_up(db, sm->name, sm->migs, *sm->n, err, sizeof(err));
    else if (strcmp(verb, "down") == 0)
        rc = hm_migrate_down(db, sm->name, sm->migs, *sm->n, (int)target, err, sizeof(err));
    else
        rc = usage();
    if (rc < 0)
        fprintf(stderr, "hmctl: migrate %s: %s\n", verb, err[0] ? err : hm_strerror(rc));
    hm_db_destroy(db);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "health") == 0)
        return cmd_health(argc - 2, argv + 2);
    if (strcmp(argv[1], "migrate") == 0)
        return cmd_migrate(argc - 2, argv + 2);
    if (strcmp(argv[1], "token") == 0)
        return hmctl_token(argc - 2, argv + 2);
    if (strcmp(argv[1], "events") == 0)
        return hmctl_events(argc - 2, argv + 2);
    return usage();
}
