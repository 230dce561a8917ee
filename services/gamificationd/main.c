/*
 * gamificationd - points ledger, levels, achievements, challenges, leaderboards and streaks.
 *
 * main.c holds the daemon's configuration table, its method table and start-up; the RPCs
 * arrive with the daemon's issue.
 */
#include "hm/migrate.h"
#include "hm/server.h"

extern const hm_migration_t gamificationd_migrations[];
extern const size_t gamificationd_nmigrations;

static const hm_service_t service = {"hospitality.gamification.v1.GamificationService", NULL, 0};
static const hm_service_t *const services[] = {&service};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "gamificationd",
        .description = "points ledger, levels, achievements, challenges, leaderboards and streaks",
        .default_grpc_addr = "0.0.0.0:50054",
        .default_admin_addr = "0.0.0.0:9104",
        .services = services,
        .nservices = 1,
        .migrations = gamificationd_migrations,
        .nmigrations = gamificationd_nmigrations,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
