/*
 * hm/events.h - the event registry and the envelope (DESIGN.md §6, docs/events.md).
 *
 * Every event on the bus is a hospitality.events.v1.Event envelope whose `payload` holds the
 * message its `type` names. The registry, generated at build time from the protos by
 * tools/gen-event-registry.py, maps each type string to its payload descriptor, its schema
 * version and its stream ("hm:events:<first segment of the type>"). Publishing
 * (hm_event_build, hm_outbox_add) and consuming (hm_event_decode) validate against it: an
 * unknown type, a payload that does not decode as the type's message or a malformed envelope
 * is refused as a whole, never half-applied.
 *
 * All functions are thread-safe; the registry is constant data.
 */
#ifndef HM_EVENTS_H
#define HM_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "hm/arena.h"
#include "hospitality/events/v1/events.pb-c.h"

/* Upper bound of the registry's size (fixed-size per-type counters use it). */
#define HM_EVENT_TYPES_MAX 128

/* Largest envelope accepted, packed (payloads carry ids, never documents). */
#define HM_EVENT_MAX_BYTES (256 * 1024)

/* One registered event type. */
typedef struct hm_event_type {
    const char *type;                          /* "booking.created", lower-case dotted */
    const ProtobufCMessageDescriptor *payload; /* the payload message of the type */
    int32_t schema_version;                    /* >= 1; Event.schema_version must equal it */
    const char *stream;                        /* "hm:events:booking" */
    unsigned index;                            /* position in hm_event_types[] */
} hm_event_type_t;

/* The registry, sorted by type (generated: build/common/event_registry.c). */
extern const hm_event_type_t hm_event_types[];
extern const size_t hm_event_ntypes;

/* The registered type named `type`, or NULL (also for NULL). */
const hm_event_type_t *hm_event_type_lookup(const char *type);

/*
 * Builds an envelope in the arena: id = a new UUIDv7, time = now, schema_version from the
 * registry, payload = `payload` packed. `source` is the producer (daemon name or registered
 * external app, non-empty), `subject` the guest id (a UUID, or NULL/"" for events about no
 * guest), `traceparent` the W3C trace context (NULL/"" for none). Strings are copied.
 *
 * Returns 0 with *out set, or HM_EINVAL (nothing built) when the type is unknown ("unknown
 * event type"), the payload is not the type's message, or a field is malformed; see
 * hm_event_last_error() for which.
 */
int hm_event_build(hm_arena_t *arena, const char *type, const char *source, const char *subject,
                   const char *traceparent, const ProtobufCMessage *payload,
                   Hospitality__Events__V1__Event **out);

/*
 * Checks a decoded envelope against the registry and decodes its payload into the arena:
 * id a UUIDv7; type registered; schema_version the type's; source non-empty; subject empty or
 * a UUID; time set; traceparent empty or W3C-shaped; every string valid UTF-8; payload
 * decodes as the type's message, is valid UTF-8 throughout and re-packs (hm_pb_repackable).
 * Used on the consuming side by hm_event_decode() and by the ingest API on envelopes the
 * runtime decoded. Returns 0 with *payload set (may be NULL: then not returned), or HM_EINVAL
 * (see hm_event_last_error()).
 */
int hm_event_validate(hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                      const ProtobufCMessage **payload);

/*
 * Decodes envelope bytes (as the relay publishes them, field "env" of a stream entry) into the
 * arena and validates them as hm_event_validate() does. Returns 0 with *env and *payload set,
 * or HM_EINVAL with both NULL (see hm_event_last_error()).
 */
int hm_event_decode(hm_arena_t *arena, const uint8_t *bytes, size_t n,
                    const Hospitality__Events__V1__Event **env, const ProtobufCMessage **payload);

/*
 * Packs an envelope into the arena (*bytes, *n). 0, or HM_EINVAL when it would exceed
 * HM_EVENT_MAX_BYTES.
 */
int hm_event_pack(hm_arena_t *arena, const Hospitality__Events__V1__Event *env, uint8_t **bytes,
                  size_t *n);

/*
 * Why the last hm_event_* (or hm_outbox_add) call of this thread refused its input: a short
 * static message ("unknown event type"), with the offending envelope field ("type", "payload",
 * "id", ...) in *field when field is not NULL. "" and "" when the last call succeeded.
 */
const char *hm_event_last_error(const char **field);

/* The stream of a type: its registered stream, NULL for an unknown type. */
const char *hm_event_stream(const char *type);

#endif
