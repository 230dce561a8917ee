/*
 * hm/arena.h - region allocator for everything one call (or one cycle of a background job)
 * allocates. Freed all at once by hm_arena_reset()/hm_arena_deinit(), which first run the
 * registered cleanup callbacks (newest first) so foreign objects (PGresult, redisReply, grpc
 * slices) die with the arena. Not thread-safe: an arena belongs to one thread at a time.
 * Allocation never returns NULL (out of memory aborts, see hm_xmalloc).
 */
#ifndef HM_ARENA_H
#define HM_ARENA_H

#include <stdarg.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef struct hm_arena_block hm_arena_block_t;
typedef struct hm_arena_cleanup hm_arena_cleanup_t;

typedef struct hm_arena {
    hm_arena_block_t *head;       /* current block; older blocks chained behind it */
    hm_arena_cleanup_t *cleanups; /* LIFO list, itself allocated in the arena */
    size_t block_size;            /* default size of new blocks */
    size_t total;                 /* bytes handed out since the last reset (statistics) */
    ProtobufCAllocator pb;        /* protobuf-c allocator drawing from this arena */
} hm_arena_t;

/* Embedded arena: init with a block size (0 = 8 KiB); deinit frees everything. */
void hm_arena_init(hm_arena_t *a, size_t block_size);
void hm_arena_deinit(hm_arena_t *a);

/* Runs cleanups and frees all but the first block, ready for the next call. */
void hm_arena_reset(hm_arena_t *a);

/* Memory aligned for any type; zeroed by the _z variant. */
void *hm_arena_alloc(hm_arena_t *a, size_t n);
void *hm_arena_zalloc(hm_arena_t *a, size_t n);
char *hm_arena_strdup(hm_arena_t *a, const char *s);
char *hm_arena_strndup(hm_arena_t *a, const char *s, size_t n);
void *hm_arena_memdup(hm_arena_t *a, const void *p, size_t n);
char *hm_arena_printf(hm_arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *hm_arena_vprintf(hm_arena_t *a, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* Registers fn(arg) to run at the next reset/deinit (LIFO). */
void hm_arena_defer(hm_arena_t *a, void (*fn)(void *), void *arg);

/* A protobuf-c allocator whose free() is a no-op: unpack into it, never free the message. */
static inline ProtobufCAllocator *hm_arena_pb(hm_arena_t *a)
{
    return &a->pb;
}

/* Heap helpers that abort on out-of-memory. */
void *hm_xmalloc(size_t n);
void *hm_xcalloc(size_t n, size_t size);
void *hm_xrealloc(void *p, size_t n);
char *hm_xstrdup(const char *s);

#endif
