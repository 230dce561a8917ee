/*
 * recommenderd - event tracking, features, recommendations and marketing content.
 *
 * main.c holds the daemon's configuration table, its method table and start-up; the RPCs
 * arrive with the daemon's issue.
 */
#include "hm/migrate.h"
#include "hm/server.h"

extern const hm_migration_t recommenderd_migrations[];
extern const size_t recommenderd_nmigrations;

static const hm_service_t service = {"hospitality.recommender.v1.RecommenderService", NULL, 0};
static const hm_service_t *const services[] = {&service};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "recommenderd",
        .description = "event tracking, features, recommendations and marketing content",
        .default_grpc_addr = "0.0.0.0:50053",
        .default_admin_addr = "0.0.0.0:9103",
        .services = services,
        .nservices = 1,
        .migrations = recommenderd_migrations,
        .nmigrations = recommenderd_nmigrations,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
