/*
 * arena.c - the per-call region allocator (see hm/arena.h). Blocks are malloc'd and chained;
 * reset keeps the first block so a steady-state call allocates nothing from malloc.
 */
#include "hm/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN         16u
#define ARENA_DEFAULT_BLOCK 8192u

struct hm_arena_block {
    hm_arena_block_t *next; /* older block, or NULL */
    size_t size;            /* usable bytes in data[] */
    size_t used;            /* bytes handed out from data[]; <= size */
    _Alignas(16) unsigned char data[];
};

struct hm_arena_cleanup {
    hm_arena_cleanup_t *next;
    void (*fn)(void *);
    void *arg;
};

static void oom(size_t n)
{
    fprintf(stderr, "{\"level\":\"error\",\"msg\":\"out of memory allocating %zu bytes\"}\n", n);
    abort();
}

void *hm_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *hm_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *hm_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *hm_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(hm_xmalloc(n), s, n);
}

static void *pb_alloc(void *data, size_t size)
{
    return hm_arena_alloc(data, size);
}

static void pb_free(void *data, void *p)
{
    (void)data;
    (void)p; /* freed with the arena */
}

static hm_arena_block_t *block_new(size_t size, hm_arena_block_t *next)
{
    hm_arena_block_t *b = hm_xmalloc(sizeof(*b) + size);
    b->next = next;
    b->size = size;
    b->used = 0;
    return b;
}

void hm_arena_init(hm_arena_t *a, size_t block_size)
{
    a->block_size = block_size ? block_size : ARENA_DEFAULT_BLOCK;
    a->head = NULL;
    a->cleanups = NULL;
    a->total = 0;
    a->pb.alloc = pb_alloc;
    a->pb.free = pb_free;
    a->pb.allocator_data = a;
}

static void run_cleanups(hm_arena_t *a)
{
    /* A cleanup may register another (rare); loop until the list stays empty. */
    while (a->cleanups) {
        hm_arena_cleanup_t *c = a->cleanups;
        a->cleanups = c->next;
        c->fn(c->arg);
    }
}

void hm_arena_reset(hm_arena_t *a)
{
    run_cleanups(a);
    hm_arena_block_t *b = a->head;
    if (!b)
        return;
    /* Keep the oldest block of the default size; free the rest. */
    hm_arena_block_t *keep = NULL;
    while (b) {
        hm_arena_block_t *next = b->next;
        if (!next && b->size == a->block_size)
            keep = b;
        else
            free(b);
        b = next;
    }
    if (keep) {
        keep->used = 0;
        keep->next = NULL;
    }
    a->head = keep;
    a->total = 0;
}

void hm_arena_deinit(hm_arena_t *a)
{
    run_cleanups(a);
    hm_arena_block_t *b = a->head;
    while (b) {
        hm_arena_block_t *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}

void *hm_arena_alloc(hm_arena_t *a, size_t n)
{
    if (n > SIZE_MAX / 2)
        oom(n); /* no request is that large: a size computation overflowed */
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need == 0)
        need = ARENA_ALIGN;
    hm_arena_block_t *b = a->head;
    if (!b || b->size - b->used < need) {
        if (need > a->block_size / 4) {
            /* Large allocation: its own block, behind the current one so the current
             * block's free space stays usable. */
            hm_arena_block_t *big = block_new(need, b ? b->next : NULL);
            big->used = need;
            if (b)
                b->next = big;
            else
                a->head = big;
            a->total += need;
            return big->data;
        }
        b = a->head = block_new(a->block_size, b);
    }
    void *p = b->data + b->used;
    b->used += need;
    a->total += need;
    return p;
}

void *hm_arena_zalloc(hm_arena_t *a, size_t n)
{
    return memset(hm_arena_alloc(a, n), 0, n);
}

void *hm_arena_memdup(hm_arena_t *a, const void *p, size_t n)
{
    return memcpy(hm_arena_alloc(a, n), p, n);
}

char *hm_arena_strndup(hm_arena_t *a, const char *s, size_t n)
{
    char *d = hm_arena_alloc(a, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *hm_arena_strdup(hm_arena_t *a, const char *s)
{
    return s ? hm_arena_strndup(a, s, strlen(s)) : NULL;
}

char *hm_arena_vprintf(hm_arena_t *a, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return hm_arena_strdup(a, "");
    char *d = hm_arena_alloc(a, (size_t)n + 1);
    if ((size_t)n < sizeof(small))
        memcpy(d, small, (size_t)n + 1);
    else
        vsnprintf(d, (size_t)n + 1, fmt, ap);
    return d;
}

char *hm_arena_printf(hm_arena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = hm_arena_vprintf(a, fmt, ap);
    va_end(ap);
    return s;
}

void hm_arena_defer(hm_arena_t *a, void (*fn)(void *), void *arg)
{
    hm_arena_cleanup_t *c = hm_arena_alloc(a, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    c->next = a->cleanups;
    a->cleanups = c;
}
