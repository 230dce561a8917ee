/*
 * fuzz_events.c - fuzzes what an event consumer decodes from the bus: the
 * hospitality.events.v1.Event envelope, then its payload as the message its type names (each
 * payload message of the .proto files, by its event_type option; see gen-tables.py). An
 * unknown type leaves the payload undecoded, as a consumer skips it.
 *
 * Input: the envelope bytes.
 * Asserts, for the envelope and for a payload that decodes (fuzz_pb_roundtrip): protobuf-c's
 * check passes, pack(unpack(x)) decodes to the same packed size and re-packs identically,
 * every string is non-NULL and goes through the UTF-8 checks; hm_uuid_valid() runs on the id
 * and the subject. No crash, no leak (everything lives in one arena).
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "hm/id.h"
#include "hospitality/events/v1/events.pb-c.h"

static int by_type(const void *key, const void *elem)
{
    return strcmp(key, ((const fuzz_event_type_t *)elem)->type);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const Hospitality__Events__V1__Event *ev;
    const fuzz_event_type_t *t;
    hm_arena_t arena;
    static bool sorted;

    if (!sorted) {
        for (size_t i = 1; i < fuzz_nevent_types; i++)
            FUZZ_CHECK(strcmp(fuzz_event_types[i - 1].type, fuzz_event_types[i].type) < 0);
        sorted = true;
    }
    hm_arena_init(&arena, 0);
    ev = (const Hospitality__Events__V1__Event *)fuzz_pb_roundtrip(
        &arena, &hospitality__events__v1__event__descriptor, data, size);
    if (ev == NULL)
        goto out;
    (void)hm_uuid_valid(ev->id);
    (void)hm_uuid_valid(ev->subject);
    t = bsearch(ev->type, fuzz_event_types, fuzz_nevent_types, sizeof fuzz_event_types[0], by_type);
    if (t != NULL)
        fuzz_pb_roundtrip(&arena, t->payload, ev->payload.data, ev->payload.len);
out:
    hm_arena_deinit(&arena);
    return 0;
}
