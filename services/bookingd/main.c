/*
 * bookingd - bookings, availability and the reservation saga.
 *
 * main.c holds the daemon's configuration table, its method table and start-up; the RPCs
 * arrive with the daemon's issue.
 */
#include "hm/migrate.h"
#include "hm/server.h"

extern const hm_migration_t bookingd_migrations[];
extern const size_t bookingd_nmigrations;

static const hm_service_t service = {"hospitality.booking.v1.BookingService", NULL, 0};
static const hm_service_t *const services[] = {&service};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "bookingd",
        .description = "bookings, availability and the reservation saga",
        .default_grpc_addr = "0.0.0.0:50052",
        .default_admin_addr = "0.0.0.0:9102",
        .services = services,
        .nservices = 1,
        .migrations = bookingd_migrations,
        .nmigrations = bookingd_nmigrations,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
