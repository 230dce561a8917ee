/*
 * tasks.c - the daemon's periodic jobs (hm_task_t in hm/server.h) on one background thread
 * with its own Postgres and Redis connections.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "hm/cache.h"
#include "hm/db.h"
#include "hm/log.h"
#include "internal.h"

typedef struct task_state {
    int64_t next_ms;          /* CLOCK_MONOTONIC ms of the next run */
    atomic_ullong runs;       /* completed runs */
    atomic_ullong failures;   /* runs that returned an error */
    atomic_llong last_run_us; /* duration of the last run */
} task_state_t;

struct hm__tasks {
    const hm_task_t *tasks;
    size_t n;
    task_state_t *st;
    void *app;
    hm_db_t *db;
    hm_cache_t *cache;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
};

/* Waits until `until_ms` (CLOCK_MONOTONIC) or a stop; true when stopping. */
static bool wait_until(hm__tasks_t *t, int64_t until_ms)
{
    struct timespec ts = {(time_t)(until_ms / 1000), (long)(until_ms % 1000) * 1000000};
    bool stopping;

    pthread_mutex_lock(&t->lock);
    while (!t->stopping && pthread_cond_timedwait(&t->cond, &t->lock, &ts) == 0)
        ;
    stopping = t->stopping;
    pthread_mutex_unlock(&t->lock);
    return stopping;
}

static void *tasks_main(void *arg)
{
    hm__tasks_t *t = arg;
    hm_arena_t arena;

    hm_arena_init(&arena, 0);
    for (;;) {
        int64_t now = hm_mono_ms(), next = now + 60000;
        for (size_t i = 0; i < t->n; i++) {
            task_state_t *s = &t->st[i];
            if (s->next_ms <= now) {
                int64_t t0 = hm_mono_ns();
                int rc = t->tasks[i].run(t->db, t->cache, &arena, t->app);
                hm_arena_reset(&arena);
                atomic_store(&s->last_run_us, (hm_mono_ns() - t0) / 1000);
                atomic_fetch_add(&s->runs, 1);
                if (rc != 0) {
                    atomic_fetch_add(&s->failures, 1);
                    HM_WARN("task %s failed: %s", t->tasks[i].name, hm_strerror(rc));
                }
                now = hm_mono_ms();
                s->next_ms = now + t->tasks[i].interval_ms;
            }
            if (s->next_ms < next)
                next = s->next_ms;
        }
        if (wait_until(t, next))
            break;
    }
    hm_arena_deinit(&arena);
    return NULL;
}

hm__tasks_t *hm__tasks_start(const hm_task_t *tasks, size_t n, const hm_common_config_t *cfg,
                             void *app)
{
    pthread_condattr_t ca;
    hm__tasks_t *t;

    if (n == 0)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (tasks[i].run == NULL || tasks[i].interval_ms <= 0) {
            HM_ERROR("task %s: needs a run function and a positive interval",
                     tasks[i].name ? tasks[i].name : "?");
            return NULL;
        }
    t = hm_xcalloc(1, sizeof *t);
    t->tasks = tasks;
    t->n = n;
    t->app = app;
    t->st = hm_xcalloc(n, sizeof *t->st);
    t->db = hm_db_create(cfg->database_url, cfg->statement_timeout_ms);
    t->cache = hm_cache_create(cfg->redis_addr, cfg->redis_timeout_ms);
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (t->db == NULL || pthread_create(&t->thread, NULL, tasks_main, t) != 0) {
        HM_ERROR("tasks: cannot start");
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        hm_db_destroy(t->db);
        hm_cache_destroy(t->cache);
        free(t->st);
        free(t);
        return NULL;
    }
    return t;
}

void hm__tasks_stop(hm__tasks_t *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    hm_db_destroy(t->db);
    hm_cache_destroy(t->cache);
    free(t->st);
    free(t);
}

void hm__tasks_metrics(const hm__tasks_t *t, FILE *out)
{
    if (t == NULL)
        return;
    fprintf(out, "# HELP hm_task_runs_total Runs of the daemon's periodic tasks.\n"
                 "# TYPE hm_task_runs_total counter\n");
    for (size_t i = 0; i < t->n; i++)
        fprintf(out, "hm_task_runs_total{task=\"%s\"} %llu\n", t->tasks[i].name,
                (unsigned long long)atomic_load(&t->st[i].runs));
    fprintf(out, "# HELP hm_task_failures_total Task runs that returned an error.\n"
                 "# TYPE hm_task_failures_total counter\n");
    for (size_t i = 0; i < t->n; i++)
        fprintf(out, "hm_task_failures_total{task=\"%s\"} %llu\n", t->tasks[i].name,
                (unsigned long long)atomic_load(&t->st[i].failures));
    fprintf(out, "# HELP hm_task_last_run_seconds Duration of each task's last run.\n"
                 "# TYPE hm_task_last_run_seconds gauge\n");
    for (size_t i = 0; i < t->n; i++)
        fprintf(out, "hm_task_last_run_seconds{task=\"%s\"} %.6f\n", t->tasks[i].name,
                (double)atomic_load(&t->st[i].last_run_us) / 1e6);
}
