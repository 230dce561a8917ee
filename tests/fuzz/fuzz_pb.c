/*
 * fuzz_pb.c - the protobuf checks fuzz_decode and fuzz_events share (see fuzz.h): unpack into
 * an arena as the server does, walk every field (checking the strings), re-pack, re-unpack,
 * compare. In a libFuzzer build the walk also reports which fields each input reached.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "hm/id.h"

/* Deeper nesting than any message of ours has; the walk stops there rather than recursing. */
#define WALK_MAX_DEPTH 64

#ifdef HM_FUZZ_LIBFUZZER
/*
 * Coverage for libFuzzer beyond the branches of instrumented code: protobuf-c is a system
 * library without instrumentation, so its decoding is invisible to the fuzzer except through
 * what it produced. A byte per (message type, field, state) in the section libFuzzer reads as
 * extra counters (cleared before each input) makes each newly reached field a new feature.
 */
#define NFEATURES 65536
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t features[NFEATURES];

static void feature(const void *type, unsigned field, unsigned state)
{
    uint64_t h = (uint64_t)(uintptr_t)type * 0x9E3779B97F4A7C15u;
    uint8_t *c;

    h ^= ((uint64_t)field << 16 | state) * 0xC2B2AE3D27D4EB4Fu;
    c = &features[(h ^ h >> 29) % NFEATURES];
    if (*c < UINT8_MAX)
        (*c)++;
}
#else
static void feature(const void *type, unsigned field, unsigned state)
{
    (void)type;
    (void)field;
    (void)state;
}
#endif

/* Pseudo field numbers of features: unknown fields (state: wire type), and a whole decode
 * (state: 1 decoded, 0 refused). */
#define FIELD_UNKNOWN 0xFFFFu
#define FIELD_DECODE  0xFFFEu

/* What a walk found. */
typedef struct walk_stats {
    size_t strings; /* string values visited */
    size_t tag0;    /* unknown fields with field number 0 (see fuzz_pb_roundtrip) */
} walk_stats_t;

/* Checks a string; its feature state says whether it is empty, valid or invalid UTF-8. */
static unsigned check_string(const char *s)
{
    FUZZ_CHECK(s != NULL);
    if (s[0] == '\0')
        return 1;
    if (!hm_utf8_valid(s))
        return 2;
    FUZZ_CHECK(hm_utf8_len(s) <= strlen(s));
    return 3;
}

/* A oneof member is only there when its case says so; other members alias its storage. */
static bool present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    uint32_t which;

    if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        return true;
    memcpy(&which, (const char *)m + f->quantifier_offset, sizeof which);
    return which == f->id;
}

/* Whether a singular scalar or bytes field differs from its zero value. */
static bool nonzero(const ProtobufCFieldDescriptor *f, const char *member)
{
    static const char zero[sizeof(ProtobufCBinaryData)];
    size_t n;

    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        n = 8;
        break;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)(const void *)member)->len > 0;
    default: /* 32-bit integers, float, enum, protobuf_c_boolean */
        n = 4;
        break;
    }
    return memcmp(member, zero, n) != 0;
}

/*
 * Visits every present field of m and its submessages: checks the strings, counts them and the
 * unknown fields numbered 0 into *st, and records a feature for each field reached.
 */
static void walk(const ProtobufCMessage *m, unsigned depth, walk_stats_t *st)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;

    if (depth > WALK_MAX_DEPTH)
        return;
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        st->tag0 += m->unknown_fields[i].tag == 0;
        feature(d, FIELD_UNKNOWN, m->unknown_fields[i].wire_type);
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *member = (const char *)m + f->offset;

        if (!present(m, f))
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            void *const *items;

            memcpy(&n, (const char *)m + f->quantifier_offset, sizeof n);
            memcpy(&items, member, sizeof items);
            FUZZ_CHECK(n == 0 || items != NULL);
            for (size_t j = 0; j < n; j++) {
                feature(d, i, 0);
                if (f->type == PROTOBUF_C_TYPE_STRING) {
                    FUZZ_CHECK(items[j] != NULL);
                    feature(d, i, check_string(items[j]));
                    st->strings++;
                } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                    FUZZ_CHECK(items[j] != NULL);
                    walk(items[j], depth + 1, st);
                }
            }
        } else if (f->type == PROTOBUF_C_TYPE_STRING) {
            const char *s;

            memcpy(&s, member, sizeof s);
            /* proto3 `optional` strings are NULL when absent; all others never are. */
            if (s == NULL && f->label == PROTOBUF_C_LABEL_OPTIONAL)
                continue;
            feature(d, i, check_string(s));
            st->strings++;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessage *sub;

            memcpy(&sub, member, sizeof sub);
            if (sub != NULL) {
                FUZZ_CHECK(sub->descriptor == f->descriptor);
                feature(d, i, 1);
                walk(sub, depth + 1, st);
            }
        } else if (nonzero(f, member)) {
            feature(d, i, 1);
        }
    }
}

/* Packs m into an arena buffer of exactly its packed size; *len receives that size. */
static uint8_t *pack(hm_arena_t *arena, const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = hm_arena_alloc(arena, n);

    FUZZ_CHECK(protobuf_c_message_pack(m, buf) == n);
    *len = n;
    return buf;
}

const ProtobufCMessage *fuzz_pb_roundtrip(hm_arena_t *arena, const ProtobufCMessageDescriptor *d,
                                          const uint8_t *data, size_t size)
{
    ProtobufCMessage *m, *again;
    uint8_t *first, *second;
    size_t first_len, second_len;
    walk_stats_t st = {0, 0}, st_again = {0, 0};

    m = protobuf_c_message_unpack(d, hm_arena_pb(arena), size, data);
    feature(d, FIELD_DECODE, m != NULL);
    if (m == NULL)
        return NULL;
    FUZZ_CHECK(m->descriptor == d);
    FUZZ_CHECK(protobuf_c_message_check(m));
    walk(m, 0, &st);
    first = pack(arena, m, &first_len);
    /*
     * protobuf-c (1.4.1 to 1.5.2) refuses field number 0 only in a one-byte tag: a longer
     * encoding of it ("80 00") becomes an unknown field, which pack() writes back as the
     * one-byte tag that unpack() then refuses. A daemon re-packing such a request would emit
     * bytes no decoder accepts. Until protobuf-c is fixed, the rest of the round trip is only
     * checked without such fields.
     */
    if (st.tag0 > 0)
        return m;

    /* What protobuf-c packed, it must accept again, and describe identically. */
    again = protobuf_c_message_unpack(d, hm_arena_pb(arena), first_len, first);
    FUZZ_CHECK(again != NULL);
    FUZZ_CHECK(protobuf_c_message_check(again));
    FUZZ_CHECK(protobuf_c_message_get_packed_size(again) == first_len);
    second = pack(arena, again, &second_len);
    FUZZ_CHECK(second_len == first_len && memcmp(first, second, first_len) == 0);
    walk(again, 0, &st_again);
    FUZZ_CHECK(st_again.strings == st.strings);
    return m;
}
