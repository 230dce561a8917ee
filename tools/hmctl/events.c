/*
 * events.c - `hmctl events`: what an operator needs on the event bus (docs/events.md): the
 * streams and how far each consumer group lags, the dead letters and their requeue, and the
 * replay of a group from an entry id or a time. A thin command line over hm/bus.h; Redis is
 * HM_REDIS_ADDR.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "hm/bus.h"
#include "hm/cache.h"
#include "hm/err.h"

#define DLQ_PAGE 100

static int events_usage(void)
{
    fprintf(stderr, "usage: hmctl events streams                                  (HM_REDIS_ADDR)\n"
                    "       hmctl events dlq list [--daemon D] [--count N]\n"
                    "       hmctl events dlq requeue ID|--all --daemon D [--maxlen N]\n"
                    "       hmctl events replay --daemon D --stream S --from ID|0|TIME|@MS\n"
                    "         S: hm:events:booking or booking; TIME: 2024-05-01T12:00:00Z\n");
    return 2;
}

/* Options shared by the subcommands. */
typedef struct opts {
    const char *daemon;
    const char *stream;
    const char *from;
    const char *id; /* first positional argument */
    long long count;
    long long maxlen;
    int all;
} opts_t;

static int parse_opts(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->count = DLQ_PAGE;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(a, "--all") == 0) {
            o->all = 1;
            continue;
        }
        if (a[0] != '-' || strcmp(a, "-") == 0) {
            if (o->id != NULL)
                return -1;
            o->id = a;
            continue;
        }
        if (v == NULL)
            return -1;
        if (strcmp(a, "--daemon") == 0)
            o->daemon = v;
        else if (strcmp(a, "--stream") == 0)
            o->stream = v;
        else if (strcmp(a, "--from") == 0)
            o->from = v;
        else if (strcmp(a, "--count") == 0)
            o->count = atoll(v);
        else if (strcmp(a, "--maxlen") == 0)
            o->maxlen = atoll(v);
        else
            return -1;
        i++;
    }
    return 0;
}

static int cmd_streams(hm_cache_t *cache, hm_arena_t *arena)
{
    hm_bus_stream_t *streams;
    size_t n;
    int rc = hm_bus_list_streams(cache, arena, "hm:", &streams, &n);

    if (rc != 0) {
        fprintf(stderr, "hmctl: events streams: %s\n", hm_strerror(rc));
        return 1;
    }
    printf("%-28s %9s  %-16s %9s %9s %9s  %s\n", "STREAM", "LENGTH", "GROUP", "CONSUMERS",
           "PENDING", "LAG", "LAST-DELIVERED");
    for (size_t i = 0; i < n; i++) {
        const hm_bus_stream_t *s = &streams[i];

        if (s->ngroups == 0)
            printf("%-28s %9lld  %-16s\n", s->name, s->length, "-");
        for (size_t g = 0; g < s->ngroups; g++) {
            const hm_bus_group_t *gr = &s->groups[g];
            char lag[24];

            if (gr->lag < 0)
                snprintf(lag, sizeof lag, "?");
            else
                snprintf(lag, sizeof lag, "%lld", gr->lag);
            printf("%-28s %9lld  %-16s %9lld %9lld %9s  %s\n", g == 0 ? s->name : "", s->length,
                   gr->name, gr->consumers, gr->pending, lag, gr->last_id);
        }
    }
    return 0;
}

/* Prints up to `max` dead letters of one daemon. */
static int list_one(hm_cache_t *cache, hm_arena_t *arena, const char *daemon, long long max,
                    bool *header)
{
    const char *after = NULL;
    long long shown = 0;

    while (shown < max) {
        hm_bus_dead_letter_t *d;
        size_t n;
        long long want = max - shown < DLQ_PAGE ? max - shown : DLQ_PAGE;
        int rc = hm_bus_dlq_list(cache, arena, daemon, after, (size_t)want, &d, &n);

        if (rc != 0) {
            fprintf(stderr, "hmctl: events dlq list: %s\n", hm_strerror(rc));
            return 1;
        }
        if (n == 0)
            break;
        if (!*header) {
            printf("%-14s %-22s %-20s %-36s %-34s %8s  %s\n", "DAEMON", "DLQ-ID", "STREAM",
                   "EVENT-ID", "TYPE", "ATTEMPTS", "ERROR");
            *header = true;
        }
        for (size_t i = 0; i < n; i++)
            printf("%-14s %-22s %-20s %-36s %-34s %8lld  %s\n", daemon, d[i].dlq_id, d[i].stream,
                   d[i].event_id, d[i].type, d[i].attempts, d[i].error);
        shown += (long long)n;
        after = d[n - 1].dlq_id;
    }
    return 0;
}

static int cmd_dlq_list(hm_cache_t *cache, hm_arena_t *arena, const opts_t *o)
{
    bool header = false;
    hm_bus_stream_t *streams;
    size_t n;
    int rc;

    if (o->daemon != NULL)
        rc = list_one(cache, arena, o->daemon, o->count, &header);
    else {
        rc = hm_bus_list_streams(cache, arena, HM_BUS_DLQ_PREFIX, &streams, &n);
        if (rc != 0) {
            fprintf(stderr, "hmctl: events dlq list: %s\n", hm_strerror(rc));
            return 1;
        }
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = list_one(cache, arena, streams[i].name + strlen(HM_BUS_DLQ_PREFIX), o->count,
                          &header);
    }
    if (rc == 0 && !header)
        printf("no dead letters\n");
    return rc;
}

static int cmd_dlq_requeue(hm_cache_t *cache, hm_arena_t *arena, const opts_t *o)
{
    long long done = 0;
    int rc;

    if (o->daemon == NULL || (o->id == NULL) == !o->all) {
        fprintf(stderr, "hmctl: events dlq requeue: give --daemon and either an ID or --all\n");
        return events_usage();
    }
    if (!o->all) {
        rc = hm_bus_dlq_requeue(cache, arena, o->daemon, o->id, o->maxlen);
        if (rc != 0) {
            fprintf(stderr, "hmctl: events dlq requeue %s: %s\n", o->id,
                    rc == HM_ENOTFOUND ? "no such dead letter" : hm_strerror(rc));
            return 1;
        }
        printf("requeued %s\n", o->id);
        return 0;
    }
    for (;;) {
        hm_bus_dead_letter_t *d;
        size_t n;

        rc = hm_bus_dlq_list(cache, arena, o->daemon, NULL, DLQ_PAGE, &d, &n);
        if (rc == 0 && n == 0)
            break;
        for (size_t i = 0; rc == 0 && i < n; i++) {
            rc = hm_bus_dlq_requeue(cache, arena, o->daemon, d[i].dlq_id, o->maxlen);
            if (rc == HM_EINVAL) {
                fprintf(stderr, "hmctl: events dlq requeue: %s is malformed; left in place\n",
                        d[i].dlq_id);
                printf("requeued %lld\n", done);
                return 1;
            }
            done += rc == 0;
        }
        if (rc != 0) {
            fprintf(stderr, "hmctl: events dlq requeue: %s (after %lld)\n", hm_strerror(rc), done);
            return 1;
        }
    }
    printf("requeued %lld\n", done);
    return 0;
}

static int cmd_replay(hm_cache_t *cache, hm_arena_t *arena, const opts_t *o)
{
    const char *stream = o->stream;
    int rc;

    if (o->daemon == NULL || stream == NULL || o->from == NULL) {
        fprintf(stderr, "hmctl: events replay: --daemon, --stream and --from are required\n");
        return events_usage();
    }
    if (strchr(stream, ':') == NULL)
        stream = hm_arena_printf(arena, "%s%s", HM_BUS_STREAM_PREFIX, stream);
    rc = hm_bus_replay(cache, arena, o->daemon, stream, o->from);
    if (rc != 0) {
        fprintf(stderr, "hmctl: events replay: %s\n",
                rc == HM_EINVAL      ? "--from must be an entry id, 0, a UTC time or @<ms>"
                : rc == HM_ENOTFOUND ? "no such stream or group"
                                     : hm_strerror(rc));
        return rc == HM_EINVAL ? 2 : 1;
    }
    printf("group %s on %s now reads after %s\n", o->daemon, stream, o->from);
    return 0;
}

int hmctl_events(int argc, char **argv)
{
    const char *addr = getenv("HM_REDIS_ADDR");
    const char *verb = argc > 0 ? argv[0] : NULL;
    hm_cache_t *cache;
    hm_arena_t arena;
    opts_t o;
    int rc;

    if (verb == NULL)
        return events_usage();
    if (addr == NULL || addr[0] == '\0') {
        fprintf(stderr, "hmctl: HM_REDIS_ADDR is not set\n");
        return 2;
    }
    cache = hm_cache_create(addr, 5000);
    if (cache == NULL) {
        fprintf(stderr, "hmctl: HM_REDIS_ADDR: want host:port or a socket path\n");
        return 2;
    }
    hm_arena_init(&arena, 0);
    if (strcmp(verb, "streams") == 0 && argc == 1) {
        rc = cmd_streams(cache, &arena);
    } else if (strcmp(verb, "dlq") == 0 && argc >= 2 && parse_opts(argc - 2, argv + 2, &o) == 0) {
        if (strcmp(argv[1], "list") == 0 && o.id == NULL)
            rc = cmd_dlq_list(cache, &arena, &o);
        else if (strcmp(argv[1], "requeue") == 0)
            rc = cmd_dlq_requeue(cache, &arena, &o);
        else
            rc = events_usage();
    } else if (strcmp(verb, "replay") == 0 && parse_opts(argc - 1, argv + 1, &o) == 0 &&
               o.id == NULL) {
        rc = cmd_replay(cache, &arena, &o);
    } else {
        rc = events_usage();
    }
    hm_arena_deinit(&arena);
    hm_cache_destroy(cache);
    return rc;
}
