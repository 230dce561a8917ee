/*
 * bookingd - bookings, availability and the reservation saga (docs/bookingd.md).
 *
 * main.c holds the daemon's configuration table, its method tables, the periodic tasks and
 * start-up. Handlers are in booking.c, the sagas with the partners in saga.c, shared
 * machinery in store.c, the data-subject interface in subject.c.
 */
#include <stddef.h>

#include "bk.h"
#include "hm/migrate.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

extern const hm_migration_t bookingd_migrations[];
extern const size_t bookingd_nmigrations;

static const hm_cfg_var_t config_vars[] = {
    HM_CFG_VAR(bk_config_t, time_zone, "HM_BOOKING_TIME_ZONE", HM_CFG_STR, "UTC", 0, 0, NULL, 0,
               "IANA time zone booking dates and times are read in"),
    HM_CFG_VAR(bk_config_t, pending_ttl_ms, "HM_BOOKING_PENDING_TTL", HM_CFG_DURATION, "15m", 1000,
               7LL * 24 * 3600 * 1000, NULL, 0,
               "a PENDING booking expires this long after creation"),
    HM_CFG_VAR(bk_config_t, default_price, "HM_BOOKING_DEFAULT_PRICE", HM_CFG_INT, "5000", 0,
               100000000, NULL, 0,
               "price per person (and night) in minor units when pricing is down (flagged)"),
    HM_CFG_VAR(bk_config_t, currency, "HM_BOOKING_CURRENCY", HM_CFG_STR, "EUR", 0, 0, NULL, 0,
               "currency of prices (ISO 4217)"),
    HM_CFG_VAR(bk_config_t, partner_timeout_ms, "HM_BOOKING_PARTNER_TIMEOUT", HM_CFG_DURATION, "5s",
               100, 60000, NULL, 0, "deadline of each partner call, retries included"),
    HM_CFG_VAR(bk_config_t, avail_ttl_ms, "HM_BOOKING_AVAILABILITY_TTL", HM_CFG_DURATION, "2s", 1,
               600000, NULL, 0, "how long availability answers are cached"),
    HM_CFG_VAR(bk_config_t, ref_ttl_ms, "HM_BOOKING_REFERENCE_TTL", HM_CFG_DURATION, "10m", 1,
               86400000, NULL, 0, "how long reference look-ups are cached"),
};

#define BK(rpc, snake, fn, ...)                                                                    \
    {                                                                                              \
        "/hospitality.booking.v1.BookingService/" #rpc,                                            \
            &hospitality__booking__v1__##snake##_request__descriptor,                              \
            &hospitality__booking__v1__##snake##_response__descriptor, fn, __VA_ARGS__             \
    }

/* Guests book for themselves, staff for their venues; per-booking checks in the handlers. */
static const hm_method_t methods[] = {
    BK(CreateBooking, create_booking, bk_create_booking,
       {.roles = HM_ROLE_GUEST | HM_ROLE_STAFF,
        .self_field = "guest_id",
        .venue_field = "venue_id"}),
    BK(GetBooking, get_booking, bk_get_booking, {.roles = HM_ROLES_ANY}),
    BK(GetBookingByReference, get_booking_by_reference, bk_get_booking_by_reference,
       {.roles = HM_ROLES_ANY}),
    BK(UpdateBooking, update_booking, bk_update_booking, {.roles = HM_ROLES_ANY}),
    BK(CancelBooking, cancel_booking, bk_cancel_booking, {.roles = HM_ROLES_ANY}),
    BK(UpdateBookingStatus, update_booking_status, bk_update_booking_status,
       {.roles = HM_ROLE_STAFF}),
    BK(ListGuestBookings, list_guest_bookings, bk_list_guest_bookings,
       {.roles = HM_ROLE_GUEST, .self_field = "guest_id"}),
    BK(ListVenueBookings, list_venue_bookings, bk_list_venue_bookings,
       {.roles = HM_ROLE_STAFF, .venue_field = "venue_id"}),
    BK(CheckAvailability, check_availability, bk_check_availability, {.roles = HM_ROLES_ANY}),
};
static const hm_service_t service = {"hospitality.booking.v1.BookingService", methods,
                                     sizeof methods / sizeof methods[0]};

/* privacyd's fan-out: service callers only (admin is always allowed). */
static const hm_method_t subject_methods[] = {
    {"/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
     &hospitality__privacy__v1__export_subject_data_request__descriptor,
     &hospitality__privacy__v1__export_subject_data_response__descriptor,
     bk_export_subject,
     {.roles = HM_ROLE_SERVICE}},
    {"/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
     &hospitality__privacy__v1__erase_subject_data_request__descriptor,
     &hospitality__privacy__v1__erase_subject_data_response__descriptor,
     bk_erase_subject,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t subject_service = {"hospitality.privacy.v1.DataSubjectService",
                                             subject_methods, 2};
static const hm_service_t *const services[] = {&service, &subject_service};

/* Replica-safe: recovery takes a saga only with its advisory lock, the sweeper and the
 * partner actions claim rows with SKIP LOCKED. */
static const hm_task_t tasks[] = {
    {"saga-recovery", 2000, bk_task_recover},
    {"pending-expiry", 1000, bk_task_expire},
    {"partner-actions", 1000, bk_task_actions},
};

static int bk_init(const hm_common_config_t *common, void **app)
{
    (void)common, (void)app;
    hm_metrics_hook(bk_metrics, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "bookingd",
        .description = "bookings, availability and the reservation saga",
        .default_grpc_addr = "0.0.0.0:50052",
        .default_admin_addr = "0.0.0.0:9102",
        .services = services,
        .nservices = 2,
        .config_vars = config_vars,
        .nconfig_vars = sizeof config_vars / sizeof config_vars[0],
        .config = &bk_cfg,
        .migrations = bookingd_migrations,
        .nmigrations = bookingd_nmigrations,
        .needs_crypto = true,
        .init = bk_init,
        .tasks = tasks,
        .ntasks = sizeof tasks / sizeof tasks[0],
        .data_subject = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
