/*
 * health.c - the statuses grpc.health.v1 reports: "" (the whole server), "liveness",
 * "readiness" and each service name. Written by the main thread (start-up, the readiness
 * probe, shutdown), read by workers; statuses are atomics and a generation counter tells
 * Watch streams that something changed.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct health_entry {
    const char *name;  /* static: a service name or a built-in name */
    atomic_int status; /* HM__HEALTH_* */
} health_entry_t;

static health_entry_t *entries; /* immutable array after init */
static size_t nentries;
static atomic_uint generation;
static atomic_bool ready;

#define E_ALL       0
#define E_LIVENESS  1
#define E_READINESS 2

void hm__health_init(const hm_service_t *const *services, size_t n)
{
    nentries = 3 + n;
    entries = hm_xcalloc(nentries, sizeof(*entries));
    entries[E_ALL].name = "";
    entries[E_LIVENESS].name = "liveness";
    entries[E_READINESS].name = "readiness";
    for (size_t i = 0; i < n; i++)
        entries[3 + i].name = services[i]->name;
    for (size_t i = 0; i < nentries; i++)
        atomic_store(&entries[i].status, HM__HEALTH_NOT_SERVING);
    atomic_store(&entries[E_LIVENESS].status, HM__HEALTH_SERVING);
}

void hm__health_deinit(void)
{
    free(entries);
    entries = NULL;
    nentries = 0;
}

int hm__health_get(const char *name)
{
    for (size_t i = 0; i < nentries; i++)
        if (strcmp(entries[i].name, name) == 0)
            return atomic_load(&entries[i].status);
    return HM__HEALTH_SERVICE_UNKNOWN;
}

static bool set(size_t i, int st)
{
    return atomic_exchange(&entries[i].status, st) != st;
}

void hm__health_update(bool db_ok, bool draining, bool stopping)
{
    bool r = db_ok && !draining && !stopping;
    int st = r ? HM__HEALTH_SERVING : HM__HEALTH_NOT_SERVING;
    bool changed = false;
    for (size_t i = 0; i < nentries; i++)
        if (i != E_LIVENESS)
            changed |= set(i, st);
    changed |= set(E_LIVENESS, stopping ? HM__HEALTH_NOT_SERVING : HM__HEALTH_SERVING);
    atomic_store(&ready, r);
    if (changed)
        atomic_fetch_add(&generation, 1);
}

unsigned hm__health_generation(void)
{
    return atomic_load(&generation);
}

bool hm__health_ready(void)
{
    return atomic_load(&ready);
}
