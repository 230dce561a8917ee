/*
 * privacyd - consent, data access and erasure across the mesh.
 *
 * main.c holds the daemon's configuration table, its method table and start-up; the RPCs
 * arrive with the daemon's issue.
 */
#include "hm/migrate.h"
#include "hm/server.h"

extern const hm_migration_t privacyd_migrations[];
extern const size_t privacyd_nmigrations;

static const hm_service_t service = {"hospitality.privacy.v1.PrivacyService", NULL, 0};
static const hm_service_t *const services[] = {&service};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "privacyd",
        .description = "consent, data access and erasure across the mesh",
        .default_grpc_addr = "0.0.0.0:50055",
        .default_admin_addr = "0.0.0.0:9105",
        .services = services,
        .nservices = 1,
        .migrations = privacyd_migrations,
        .nmigrations = privacyd_nmigrations,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
