/*
 * test_events.c - the event registry and envelope of common/src/events.c: the generated table
 * (sorted, complete, streams by domain), look-ups, build/decode round trips for every type, and
 * every refusal of hm_event_build, hm_event_validate and hm_event_decode (unknown type, wrong
 * payload message, malformed id/subject/traceparent/time, schema version, undecodable or
 * non-re-encodable payload, invalid UTF-8), each with its reason and field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "hm/arena.h"
#include "hm/err.h"
#include "hm/events.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/events/v1/guest_events.pb-c.h"

#define GUEST "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
#define TRACE "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static hm_arena_t arena;

static int setup(void **state)
{
    (void)state;
    hm_arena_init(&arena, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    hm_arena_deinit(&arena);
    return 0;
}

/* An initialized (empty) payload message of the type's descriptor. */
static ProtobufCMessage *empty_payload(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = hm_arena_zalloc(&arena, d->sizeof_message);

    d->message_init(m);
    return m;
}

static Hospitality__Events__V1__GuestProfileCreated *profile_created(void)
{
    Hospitality__Events__V1__GuestProfileCreated *p = hm_arena_alloc(&arena, sizeof *p);

    hospitality__events__v1__guest_profile_created__init(p);
    p->guest_id = GUEST;
    p->version = 1;
    return p;
}

static void assert_refused(int rc, const char *field, const char *msg_part)
{
    const char *f;
    const char *msg = hm_event_last_error(&f);

    assert_int_equal(rc, HM_EINVAL);
    assert_string_equal(f, field);
    assert_non_null(strstr(msg, msg_part));
}

static void test_registry_table(void **state)
{
    (void)state;
    assert_true(hm_event_ntypes >= 46);
    assert_true(hm_event_ntypes <= HM_EVENT_TYPES_MAX);
    for (size_t i = 0; i < hm_event_ntypes; i++) {
        const hm_event_type_t *t = &hm_event_types[i];
        const char *dot = strchr(t->type, '.');
        char want[64];

        assert_int_equal(t->index, i);
        assert_true(t->schema_version >= 1);
        assert_non_null(t->payload);
        assert_non_null(dot);
        snprintf(want, sizeof want, "hm:events:%.*s", (int)(dot - t->type), t->type);
        assert_string_equal(t->stream, want);
        if (i > 0)
            assert_true(strcmp(hm_event_types[i - 1].type, t->type) < 0);
        assert_ptr_equal(hm_event_type_lookup(t->type), t);
        assert_string_equal(hm_event_stream(t->type), t->stream);
    }
}

static void test_registry_names_the_seed_types(void **state)
{
    static const char *const types[] = {"guest.profile.created",
                                        "guest.profile.merged",
                                        "guest.preferences.category.removed",
                                        "guest.interaction.batch.recorded",
                                        "guest.consent.updated",
                                        "booking.status_changed",
                                        "booking.expired",
                                        "feedback.rating.submitted",
                                        "marketing.promotion.used",
                                        "order.items.selected",
                                        "recommendation.cross_sell.suggested",
                                        "gamification.streak.started",
                                        "privacy.erasure.requested",
                                        "guest.data.deleted",
                                        "recommender.feedback.recorded",
                                        "user.profile.synced",
                                        "marketplace.listing.created",
                                        "notification.read"};
    (void)state;

    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        assert_non_null(hm_event_type_lookup(types[i]));
    assert_ptr_equal(hm_event_type_lookup("booking.created")->payload,
                     &hospitality__events__v1__booking_created__descriptor);
    assert_string_equal(hm_event_stream("booking.created"), "hm:events:booking");
    assert_null(hm_event_type_lookup("booking.nonexistent"));
    assert_null(hm_event_type_lookup("booking"));
    assert_null(hm_event_type_lookup(""));
    assert_null(hm_event_type_lookup(NULL));
    assert_null(hm_event_stream("nope.nope"));
}

static void test_build_and_decode_round_trip(void **state)
{
    Hospitality__Events__V1__Event *ev;
    const Hospitality__Events__V1__Event *back;
    const ProtobufCMessage *payload;
    const char *field;
    uint8_t *bytes;
    size_t n;
    (void)state;

    assert_int_equal(hm_event_build(&arena, "guest.profile.created", "guestd", GUEST, TRACE,
                                    &profile_created()->base, &ev),
                     0);
    assert_string_equal(hm_event_last_error(&field), "");
    assert_string_equal(field, "");
    assert_int_equal(strlen(ev->id), 36);
    assert_int_equal(ev->id[14], '7');
    assert_string_equal(ev->type, "guest.profile.created");
    assert_string_equal(ev->source, "guestd");
    assert_string_equal(ev->subject, GUEST);
    assert_string_equal(ev->traceparent, TRACE);
    assert_int_equal(ev->schema_version, 1);
    assert_non_null(ev->time);
    assert_true(ev->time->seconds > 1700000000);

    assert_int_equal(hm_event_pack(&arena, ev, &bytes, &n), 0);
    assert_int_equal(hm_event_decode(&arena, bytes, n, &back, &payload), 0);
    assert_string_equal(back->id, ev->id);
    assert_ptr_equal(payload->descriptor,
                     &hospitality__events__v1__guest_profile_created__descriptor);
    assert_string_equal(((const Hospitality__Events__V1__GuestProfileCreated *)payload)->guest_id,
                        GUEST);
    assert_int_equal(((const Hospitality__Events__V1__GuestProfileCreated *)payload)->version, 1);

    /* Two events never share an id; no subject and no trace context are fine. */
    Hospitality__Events__V1__Event *ev2;
    assert_int_equal(hm_event_build(&arena, "guest.profile.created", "guestd", NULL, NULL,
                                    &profile_created()->base, &ev2),
                     0);
    assert_string_not_equal(ev2->id, ev->id);
    assert_string_equal(ev2->subject, "");
    assert_string_equal(ev2->traceparent, "");
    assert_int_equal(hm_event_validate(&arena, ev2, NULL), 0);
}

static void test_every_type_round_trips(void **state)
{
    (void)state;
    for (size_t i = 0; i < hm_event_ntypes; i++) {
        const hm_event_type_t *t = &hm_event_types[i];
        Hospitality__Events__V1__Event *ev;
        const Hospitality__Events__V1__Event *back;
        const ProtobufCMessage *payload;
        uint8_t *bytes;
        size_t n;

        assert_int_equal(
            hm_event_build(&arena, t->type, "test", GUEST, "", empty_payload(t->payload), &ev), 0);
        assert_int_equal(hm_event_pack(&arena, ev, &bytes, &n), 0);
        assert_int_equal(hm_event_decode(&arena, bytes, n, &back, &payload), 0);
        assert_string_equal(back->type, t->type);
        assert_ptr_equal(payload->descriptor, t->payload);
    }
}

static void test_build_refusals(void **state)
{
    Hospitality__Events__V1__Event *ev = (void *)1;
    ProtobufCMessage *p = &profile_created()->base;
    (void)state;

    assert_refused(hm_event_build(&arena, "booking.nonexistent", "bookingd", GUEST, NULL, p, &ev),
                   "type", "unknown event type");
    assert_null(ev);
    assert_refused(hm_event_build(&arena, NULL, "bookingd", GUEST, NULL, p, &ev), "type",
                   "unknown event type");
    /* The payload must be the type's own message. */
    assert_refused(hm_event_build(&arena, "booking.created", "bookingd", GUEST, NULL, p, &ev),
                   "payload", "not the message");
    assert_refused(hm_event_build(&arena, "booking.created", "bookingd", GUEST, NULL, NULL, &ev),
                   "payload", "not the message");
    assert_refused(hm_event_build(&arena, "guest.profile.created", "", GUEST, NULL, p, &ev),
                   "source", "missing source");
    assert_refused(hm_event_build(&arena, "guest.profile.created", NULL, GUEST, NULL, p, &ev),
                   "source", "missing source");
    assert_refused(hm_event_build(&arena, "guest.profile.created", "guestd", "alice@example.com",
                                  NULL, p, &ev),
                   "subject", "UUID");
    assert_refused(
        hm_event_build(&arena, "guest.profile.created", "guestd", GUEST, "00-xyz", p, &ev),
        "traceparent", "malformed");
    assert_refused(hm_event_build(&arena, "guest.profile.created", "guestd", GUEST,
                                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", p,
                                  &ev),
                   "traceparent", "malformed");

    /* Invalid UTF-8 in the payload never reaches the outbox. */
    Hospitality__Events__V1__GuestProfileCreated *bad = profile_created();
    bad->guest_id = "\xff\xfe";
    assert_refused(
        hm_event_build(&arena, "guest.profile.created", "guestd", GUEST, NULL, &bad->base, &ev),
        "payload", "does not encode");
}

/* Envelope bytes of ev after `mutate` changed a copy of it. */
static void pack(const Hospitality__Events__V1__Event *ev, uint8_t **bytes, size_t *n)
{
    assert_int_equal(hm_event_pack(&arena, ev, bytes, n), 0);
}

static void test_decode_refusals(void **state)
{
    Hospitality__Events__V1__Event *good, ev;
    const Hospitality__Events__V1__Event *out = (void *)1;
    const ProtobufCMessage *payload = (void *)1;
    uint8_t *bytes;
    size_t n;
    (void)state;

    assert_int_equal(hm_event_build(&arena, "guest.profile.created", "guestd", GUEST, TRACE,
                                    &profile_created()->base, &good),
                     0);

    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01};
    assert_refused(hm_event_decode(&arena, garbage, sizeof garbage, &out, &payload), "",
                   "does not decode");
    assert_null(out);
    assert_null(payload);
    assert_refused(hm_event_decode(&arena, garbage, 0, &out, &payload), "", "empty");

    ev = *good;
    ev.type = "booking.nonexistent";
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "type", "unknown event type");

    ev = *good;
    ev.type = "booking.created"; /* payload bytes of another message that do not parse as it */
    static uint8_t wrong[] = {0x0a, 0x05, 'x'};
    ev.payload.data = wrong;
    ev.payload.len = sizeof wrong;
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "payload", "does not decode");

    ev = *good;
    ev.id = "0190a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b"; /* a v4 */
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "id", "UUIDv7");

    ev = *good;
    ev.id = "not-a-uuid";
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "id", "UUIDv7");

    ev = *good;
    ev.schema_version = 2;
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "schema_version",
                   "schema version");

    ev = *good;
    ev.time = NULL;
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "time", "time");

    ev = *good;
    ev.source = "";
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "source", "source");

    ev = *good;
    ev.subject = "\xc3\x28";
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "subject", "");

    /* A payload whose string is not UTF-8 (protobuf-c does not check). */
    static uint8_t bad_utf8[] = {0x0a, 0x02, 0xff, 0xfe};
    ev = *good;
    ev.payload.data = bad_utf8;
    ev.payload.len = sizeof bad_utf8;
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "payload", "re-encode");

    /* Field number 0 in a multi-byte tag: decodes, but would not re-pack. */
    static uint8_t field0[] = {0x80, 0x00, 0x01};
    ev = *good;
    ev.payload.data = field0;
    ev.payload.len = sizeof field0;
    pack(&ev, &bytes, &n);
    assert_refused(hm_event_decode(&arena, bytes, n, &out, &payload), "payload", "re-encode");

    /* The good one still decodes; validate() accepts it without returning the payload. */
    pack(good, &bytes, &n);
    assert_int_equal(hm_event_decode(&arena, bytes, n, &out, &payload), 0);
    assert_int_equal(hm_event_validate(&arena, good, NULL), 0);
    assert_refused(hm_event_validate(&arena, NULL, NULL), "", "missing envelope");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_registry_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_names_the_seed_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_and_decode_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_type_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decode_refusals, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
