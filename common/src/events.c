/*
 * events.c - the event registry's look-ups and the envelope's build, validation and decoding
 * (hm/events.h). The table itself is generated (event_registry.c); this file only reads it.
 *
 * Refusals record a static reason and field in thread-local storage for
 * hm_event_last_error(), so the signatures stay plain HM_E* codes and the callers (the outbox,
 * the consumers, the ingest API) can still say what was wrong.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "google/protobuf/timestamp.pb-c.h"
#include "hm/err.h"
#include "hm/events.h"
#include "hm/id.h"
#include "hm/pb.h"

/* Longest traceparent accepted (version 00 is 55 characters; later versions may add fields). */
#define TRACEPARENT_MAX 512
/* Longest source name accepted. */
#define SOURCE_MAX 64

static _Thread_local const char *last_msg = "";
static _Thread_local const char *last_field = "";

static int refuse(const char *field, const char *msg)
{
    last_field = field;
    last_msg = msg;
    return HM_EINVAL;
}

static void accepted(void)
{
    last_field = "";
    last_msg = "";
}

const char *hm_event_last_error(const char **field)
{
    if (field != NULL)
        *field = last_field;
    return last_msg;
}

static int by_type(const void *key, const void *elem)
{
    return strcmp(key, ((const hm_event_type_t *)elem)->type);
}

const hm_event_type_t *hm_event_type_lookup(const char *type)
{
    if (type == NULL)
        return NULL;
    return bsearch(type, hm_event_types, hm_event_ntypes, sizeof hm_event_types[0], by_type);
}

const char *hm_event_stream(const char *type)
{
    const hm_event_type_t *t = hm_event_type_lookup(type);

    return t != NULL ? t->stream : NULL;
}

/* ---- field checks ---- */

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static bool hex_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_hex(s[i]))
            return false;
    }
    return true;
}

/* Canonical UUID with version 7 and the RFC 4122 variant. */
static bool uuid_v7(const char *s)
{
    return hm_uuid_valid(s) && s[14] == '7' && strchr("89abAB", s[19]) != NULL;
}

/* W3C trace context: "vv-<32 hex>-<16 hex>-ff", later versions may append "-...". */
static bool traceparent_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < 55 || n > TRACEPARENT_MAX)
        return false;
    if (!hex_run(s, 2) || s[2] != '-' || !hex_run(s + 3, 32) || s[35] != '-' ||
        !hex_run(s + 36, 16) || s[52] != '-' || !hex_run(s + 53, 2))
        return false;
    if (n > 55 && (s[55] != '-' || strncmp(s, "00", 2) == 0))
        return false;
    return strncmp(s, "ff", 2) != 0;
}

static bool string_ok(const char *s)
{
    return s == NULL || hm_utf8_valid(s);
}

/* Every string of the message and its submessages is valid UTF-8 (proto3 requires it, and
 * Postgres refuses invalid text). */
static bool strings_ok(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;

    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *member = (const char *)msg + f->offset;

        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)((const char *)msg + f->quantifier_offset);

            if (which != f->id)
                continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)msg + f->quantifier_offset);
            void *const *items = *(void *const *const *)member;

            for (size_t k = 0; k < n; k++) {
                if (items[k] == NULL)
                    continue;
                if (f->type == PROTOBUF_C_TYPE_STRING ? !string_ok(items[k])
                                                      : !strings_ok(items[k]))
                    return false;
            }
            continue;
        }
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            if (!string_ok(*(const char *const *)member))
                return false;
        } else {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;

            if (sub != NULL && !strings_ok(sub))
                return false;
        }
    }
    return true;
}

/* The checks hm_event_build and hm_event_validate share, on the envelope's own fields. */
static int check_common(const char *source, const char *subject, const char *traceparent)
{
    if (source == NULL || source[0] == '\0')
        return refuse("source", "missing source");
    if (strlen(source) > SOURCE_MAX || !hm_utf8_valid(source))
        return refuse("source", "malformed source");
    if (subject != NULL && subject[0] != '\0' && !hm_uuid_valid(subject))
        return refuse("subject", "subject must be a guest id (UUID) or empty");
    if (traceparent != NULL && traceparent[0] != '\0' && !traceparent_ok(traceparent))
        return refuse("traceparent", "malformed traceparent");
    return 0;
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- public API ---- */

int hm_event_build(hm_arena_t *arena, const char *type, const char *source, const char *subject,
                   const char *traceparent, const ProtobufCMessage *payload,
                   Hospitality__Events__V1__Event **out)
{
    const hm_event_type_t *t = hm_event_type_lookup(type);
    Hospitality__Events__V1__Event *ev;
    char id[HM_UUID_LEN + 1];
    size_t n;
    int rc;

    *out = NULL;
    if (t == NULL)
        return refuse("type", "unknown event type");
    if (payload == NULL || payload->descriptor != t->payload)
        return refuse("payload", "payload is not the message of the event type");
    rc = check_common(source, subject, traceparent);
    if (rc != 0)
        return rc;
    if (!hm_pb_repackable(payload) || !strings_ok(payload))
        return refuse("payload", "payload does not encode");
    n = protobuf_c_message_get_packed_size(payload);
    if (n > HM_EVENT_MAX_BYTES)
        return refuse("payload", "payload too large");

    ev = hm_arena_alloc(arena, sizeof *ev);
    hospitality__events__v1__event__init(ev);
    hm_uuid_v7(id);
    ev->id = hm_arena_strdup(arena, id);
    ev->type = (char *)t->type;
    ev->source = hm_arena_strdup(arena, source);
    ev->subject = hm_arena_strdup(arena, subject != NULL ? subject : "");
    ev->time = hm_timestamp_from_us(arena, now_us());
    ev->traceparent = hm_arena_strdup(arena, traceparent != NULL ? traceparent : "");
    ev->schema_version = t->schema_version;
    ev->payload.data = hm_arena_alloc(arena, n > 0 ? n : 1);
    ev->payload.len = protobuf_c_message_pack(payload, ev->payload.data);
    accepted();
    *out = ev;
    return 0;
}

int hm_event_validate(hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                      const ProtobufCMessage **payload)
{
    const hm_event_type_t *t;
    ProtobufCMessage *p;
    int rc;

    if (payload != NULL)
        *payload = NULL;
    if (env == NULL)
        return refuse("", "missing envelope");
    if (!hm_pb_repackable(&env->base))
        return refuse("", "envelope does not re-encode");
    if (!string_ok(env->type) || (t = hm_event_type_lookup(env->type)) == NULL)
        return refuse("type", "unknown event type");
    if (!string_ok(env->id) || !uuid_v7(env->id))
        return refuse("id", "event id must be a UUIDv7");
    if (env->schema_version != t->schema_version)
        return refuse("schema_version", "unsupported schema version for the event type");
    if (!string_ok(env->subject) || !string_ok(env->traceparent))
        return refuse("subject", "malformed text");
    rc = check_common(env->source, env->subject, env->traceparent);
    if (rc != 0)
        return rc;
    if (env->time == NULL || env->time->seconds <= 0 || env->time->nanos < 0 ||
        env->time->nanos > 999999999)
        return refuse("time", "missing or malformed time");
    if (env->payload.len > HM_EVENT_MAX_BYTES)
        return refuse("payload", "payload too large");
    p = protobuf_c_message_unpack(t->payload, hm_arena_pb(arena), env->payload.len,
                                  env->payload.data);
    if (p == NULL)
        return refuse("payload", "payload does not decode as the event type's message");
    if (!hm_pb_repackable(p) || !strings_ok(p))
        return refuse("payload", "payload does not re-encode");
    accepted();
    if (payload != NULL)
        *payload = p;
    return 0;
}

int hm_event_decode(hm_arena_t *arena, const uint8_t *bytes, size_t n,
                    const Hospitality__Events__V1__Event **env, const ProtobufCMessage **payload)
{
    Hospitality__Events__V1__Event *ev;
    const ProtobufCMessage *p;
    int rc;

    *env = NULL;
    *payload = NULL;
    if (bytes == NULL || n == 0)
        return refuse("", "empty envelope");
    if (n > HM_EVENT_MAX_BYTES)
        return refuse("", "envelope too large");
    ev = hospitality__events__v1__event__unpack(hm_arena_pb(arena), n, bytes);
    if (ev == NULL)
        return refuse("", "envelope does not decode");
    rc = hm_event_validate(arena, ev, &p);
    if (rc != 0)
        return rc;
    *env = ev;
    *payload = p;
    return 0;
}

int hm_event_pack(hm_arena_t *arena, const Hospitality__Events__V1__Event *env, uint8_t **bytes,
                  size_t *n)
{
    size_t len = hospitality__events__v1__event__get_packed_size(env);

    *bytes = NULL;
    *n = 0;
    if (len > HM_EVENT_MAX_BYTES)
        return refuse("", "envelope too large");
    *bytes = hm_arena_alloc(arena, len > 0 ? len : 1);
    *n = hospitality__events__v1__event__pack(env, *bytes);
    return 0;
}
