/*
 * guestd - guest profiles, identity, preferences, interactions and personalization context.
 *
 * main.c holds the daemon's method table and start-up. Handlers live in one .c per group of
 * RPCs (profile.c, ...); SQL in store.c.
 */
#include "guestd.h"
#include "hm/migrate.h"
#include "hospitality/guest/v1/guest.pb-c.h"

extern const hm_migration_t guestd_migrations[];
extern const size_t guestd_nmigrations;

#define GUEST_METHOD(rpc, snake, fn, ...)                                                          \
    {                                                                                              \
        "/hospitality.guest.v1.GuestService/" #rpc,                                                \
            &hospitality__guest__v1__##snake##_request__descriptor,                                \
            &hospitality__guest__v1__##snake##_response__descriptor, fn, __VA_ARGS__               \
    }

/* Guests act on themselves; staff, admin and services on anyone. */
#define SELF                                                                                       \
    {                                                                                              \
        .roles = HM_ROLES_ANY, .self_field = "guest_id"                                            \
    }
#define ANY                                                                                        \
    {                                                                                              \
        .roles = HM_ROLES_ANY                                                                      \
    }

static const hm_method_t guest_methods[] = {
    GUEST_METHOD(CreateGuest, create_guest, guest_create_guest, ANY),
    GUEST_METHOD(GetProfile, get_profile, guest_get_profile, SELF),
};

static const hm_service_t guest_service = {"hospitality.guest.v1.GuestService", guest_methods,
                                           sizeof(guest_methods) / sizeof(guest_methods[0])};
/* Events from producers outside the mesh: service callers only (admin is always allowed). */
static const hm_method_t ingest_methods[] = {
    {"/hospitality.guest.v1.EventIngestService/PublishEvents",
     &hospitality__guest__v1__publish_events_request__descriptor,
     &hospitality__guest__v1__publish_events_response__descriptor,
     guest_publish_events,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t ingest_service = {"hospitality.guest.v1.EventIngestService",
                                            ingest_methods, 1};

static const hm_service_t *const services[] = {&guest_service, &ingest_service};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "guestd",
        .description = "guest profiles, identity, preferences, interactions and personalization "
                       "context",
        .default_grpc_addr = "0.0.0.0:50051",
        .default_admin_addr = "0.0.0.0:9101",
        .services = services,
        .nservices = 2,
        .migrations = guestd_migrations,
        .nmigrations = guestd_nmigrations,
        .needs_crypto = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
