/*
 * testd - a test-only daemon exercising the runtime's support for a daemon's own background
 * work (hm/server.h): a handler publishing through the outbox in its transaction
 * (hm_call_publish), the declared event consumer (exactly-once effects, the erasure
 * suppression list) and periodic tasks. Driven by test_daemon_background.py; never installed.
 *
 * Method /hm.test.Runtime/Publish takes a hospitality.events.v1.NotificationSent: it records
 * the notification in `sent` and publishes notification.sent about req.guest_id in the same
 * transaction. The consumer applies each notification.sent by inserting into `effects` (a
 * primary key: a second application would fail loudly). The task "tick" counts its runs in
 * `ticks`.
 */
#include <string.h>

#include "hm/db.h"
#include "hm/migrate.h"
#include "hm/server.h"
#include "hospitality/events/v1/external_events.pb-c.h"

extern const hm_migration_t testd_migrations[];
extern const size_t testd_nmigrations;

static const hm_stmt_t insert_sent = {"testd_sent",
                                      "INSERT INTO sent (notification_id) VALUES ($1)", 1};
static const hm_stmt_t insert_effect = {
    "testd_effect", "INSERT INTO effects (notification_id, guest_id) VALUES ($1, $2)", 2};
static const hm_stmt_t tick = {"testd_tick", "UPDATE ticks SET n = n + 1", 0};

typedef struct publish_tx {
    hm_call_t *call;
    const Hospitality__Events__V1__NotificationSent *req;
} publish_tx_t;

static int publish_in_tx(hm_db_t *db, void *arg)
{
    publish_tx_t *p = arg;
    const char *params[1] = {p->req->notification_id};
    int rc = hm_db_exec(db, &insert_sent, params, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    return hm_call_publish(p->call, db, "notification.sent", p->req->guest_id, &p->req->base);
}

static hm_status_t publish(hm_call_t *call, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
    publish_tx_t p = {call, (const Hospitality__Events__V1__NotificationSent *)req};
    (void)resp;
    if (p.req->notification_id[0] == '\0')
        return hm_call_invalid(call, "notification_id", "notification_id is required");
    int rc = hm_db_tx(call->db, publish_in_tx, &p, HM_DB_READ_COMMITTED);
    return rc == 0 ? HM_STATUS_OK : hm_call_fail(call, rc, "publish");
}

static int apply(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                 const ProtobufCMessage *payload, void *app)
{
    const Hospitality__Events__V1__NotificationSent *n =
        (const Hospitality__Events__V1__NotificationSent *)payload;
    const char *params[2] = {n->notification_id, env->subject};
    (void)arena;
    (void)app;
    return hm_db_exec(db, &insert_effect, params, NULL, NULL, NULL);
}

static int run_tick(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)arena;
    (void)app;
    return hm_db_exec(db, &tick, NULL, NULL, NULL, NULL);
}

static const hm_method_t methods[] = {
    {"/hm.test.Runtime/Publish",
     &hospitality__events__v1__notification_sent__descriptor,
     &hospitality__events__v1__notification_sent__descriptor,
     publish,
     {.roles = HM_ROLES_ANY}},
};
static const hm_service_t service = {"hm.test.Runtime", methods, 1};
static const hm_service_t *const services[] = {&service};

static const char *const streams[] = {"hm:events:notification"};
static const char *const types[] = {"notification.sent"};
static const hm_daemon_consumer_t consumer = {streams, 1, types, 1, apply, true};
static const hm_task_t tasks[] = {{"tick", 200, run_tick}};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "testd",
        .description = "test daemon for the runtime's background work",
        .services = services,
        .nservices = 1,
        .migrations = testd_migrations,
        .nmigrations = testd_nmigrations,
        .consumer = &consumer,
        .tasks = tasks,
        .ntasks = 1,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
