/*
 * fuzz_decode.c - fuzzes request decoding: every request message type the mesh serves (the
 * input type of each method of every service in the build's protobuf-c headers, health
 * included), unpacked into an arena with its protobuf-c allocator as the server does.
 *
 * Input: one byte choosing the type (modulo their number; see build_table() for the order,
 * which make-corpus.py repeats), then the message bytes.
 * Asserts (fuzz_pb_roundtrip): protobuf-c's own check passes on what it decoded; a decoded
 * message packs to bytes that decode to a message of the same packed size and re-pack
 * identically; every string field reached is non-NULL and goes through hm_utf8_valid and
 * hm_utf8_len. No crash, and no leak: hm_arena_deinit() frees everything, which LeakSanitizer
 * checks.
 */
#include <string.h>

#include "fuzz.h"

#define MAX_TYPES 256

static const ProtobufCMessageDescriptor *types[MAX_TYPES]; /* distinct; see build_table() */
static size_t ntypes;                                      /* 0 until built */

static int by_name(const void *a, const void *b)
{
    const ProtobufCServiceDescriptor *const *x = a, *const *y = b;

    return strcmp((*x)->name, (*y)->name);
}

/*
 * Collects the distinct method input types: services sorted by full name
 * ("grpc.health.v1.Health" first), each service's methods in declaration order, a type kept
 * at its first appearance.
 */
static void build_table(void)
{
    const ProtobufCServiceDescriptor *services[64];

    FUZZ_CHECK(fuzz_nservices <= sizeof services / sizeof services[0]);
    memcpy(services, fuzz_services, fuzz_nservices * sizeof services[0]);
    qsort(services, fuzz_nservices, sizeof services[0], by_name);
    for (size_t s = 0; s < fuzz_nservices; s++) {
        for (unsigned m = 0; m < services[s]->n_methods; m++) {
            const ProtobufCMessageDescriptor *in = services[s]->methods[m].input;
            size_t i = 0;

            while (i < ntypes && types[i] != in)
                i++;
            if (i < ntypes)
                continue;
            FUZZ_CHECK(ntypes < MAX_TYPES);
            types[ntypes++] = in;
        }
    }
    FUZZ_CHECK(ntypes > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hm_arena_t arena;

    if (ntypes == 0)
        build_table();
    if (size == 0)
        return 0;
    hm_arena_init(&arena, 0);
    fuzz_pb_roundtrip(&arena, types[data[0] % ntypes], data + 1, size - 1);
    hm_arena_deinit(&arena);
    return 0;
}
