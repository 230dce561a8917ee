/*
 * ingest.c - EventIngestService/PublishEvents: events produced outside the mesh (feedback,
 * marketing, order, user, marketplace and notification services) enter the bus here
 * (issue 4, item 5; docs/events.md).
 *
 * The batch is all-or-nothing: every envelope is validated against the registry first
 * (hm_event_validate: registered type, schema version, UUIDv7 id, payload that decodes as the
 * type's message, ...) and must be of an external domain (the mesh's own events are published
 * only by their owners); then all are added to the outbox in one transaction. An event whose id
 * is already in the outbox is acknowledged as a duplicate, so a producer may retry a batch.
 */
#include <stdio.h>
#include <string.h>

#include "guestd.h"
#include "hm/db.h"
#include "hm/outbox.h"
#include "hospitality/guest/v1/guest.pb-c.h"

#define MAX_BATCH 500

/* Domains (first segment of the type) that producers outside the mesh may publish. */
static const char *const external_domains[] = {"feedback", "marketing",   "order",
                                               "user",     "marketplace", "notification"};

static bool external_type(const char *type)
{
    const char *dot = strchr(type, '.');
    size_t n = dot ? (size_t)(dot - type) : strlen(type);
    for (size_t i = 0; i < sizeof external_domains / sizeof external_domains[0]; i++)
        if (strlen(external_domains[i]) == n && strncmp(type, external_domains[i], n) == 0)
            return true;
    return false;
}

typedef struct ingest_tx {
    hm_arena_t *arena;
    const Hospitality__Guest__V1__PublishEventsRequest *req;
    bool *dup; /* per event: already in the outbox */
} ingest_tx_t;

static int ingest_in_tx(hm_db_t *db, void *arg)
{
    ingest_tx_t *t = arg;
    for (size_t i = 0; i < t->req->n_events; i++) {
        int rc = hm_outbox_add(db, t->arena, t->req->events[i]);
        t->dup[i] = rc == HM_EEXIST;
        if (rc != 0 && rc != HM_EEXIST)
            return rc;
    }
    return 0;
}

hm_status_t guest_publish_events(hm_call_t *call, const ProtobufCMessage *in,
                                 ProtobufCMessage **out)
{
    const Hospitality__Guest__V1__PublishEventsRequest *req =
        (const Hospitality__Guest__V1__PublishEventsRequest *)in;

    if (req->n_events == 0)
        return hm_call_invalid(call, "events", "at least one event is required");
    if (req->n_events > MAX_BATCH)
        return hm_call_invalid(call, "events", "at most %d events per batch", MAX_BATCH);
    for (size_t i = 0; i < req->n_events; i++) {
        const Hospitality__Events__V1__Event *ev = req->events[i];
        if (hm_event_validate(&call->arena, ev, NULL) != 0) {
            const char *field = NULL;
            const char *why = hm_event_last_error(&field);
            return hm_call_invalid(call,
                                   hm_arena_printf(&call->arena, "events[%zu].%s", i,
                                                   field && *field ? field : "event"),
                                   "%s", why);
        }
        if (!external_type(ev->type)) {
            hm_status_t st = hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                                           "%s events are published by the mesh itself, not "
                                           "through ingest",
                                           ev->type);
            st.field = hm_arena_printf(&call->arena, "events[%zu].type", i);
            return st;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(req->events[j]->id, ev->id) == 0) {
                return hm_call_invalid(call, hm_arena_printf(&call->arena, "events[%zu].id", i),
                                       "the same id as events[%zu]", j);
            }
    }

    ingest_tx_t t = {&call->arena, req, hm_arena_zalloc(&call->arena, req->n_events)};
    int rc = hm_db_tx(call->db, ingest_in_tx, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "publish events");
    call->published = true; /* the runtime wakes the relay */

    Hospitality__Guest__V1__PublishEventsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__publish_events_response__init(resp);
    resp->n_results = req->n_events;
    resp->results = hm_arena_alloc(&call->arena, req->n_events * sizeof *resp->results);
    for (size_t i = 0; i < req->n_events; i++) {
        Hospitality__Guest__V1__PublishEventResult *r = hm_arena_alloc(&call->arena, sizeof *r);
        hospitality__guest__v1__publish_event_result__init(r);
        r->event_id = req->events[i]->id;
        r->duplicate = t.dup[i];
        resp->results[i] = r;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}
