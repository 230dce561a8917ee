/*
 * gm.h - gamificationd's internals shared by its files: the context a change runs in (an RPC
 * or the event consumer), the ledger operations every path uses, and the leaderboards.
 *
 * Files: main.c (method table, consumer, tasks), ledger.c (points RPCs and the ledger
 * operations), game.c (rules, achievements, streaks, challenges, the consumer's handler,
 * DataSubjectService), board.c (leaderboards in Redis sorted sets, rebuilt from Postgres).
 */
#ifndef GM_H
#define GM_H

#include <stdbool.h>
#include <stdint.h>

#include "hm/cache.h"
#include "hm/db.h"
#include "hm/server.h"
#include "hospitality/gamification/v1/gamification.pb-c.h"

typedef struct gm_config {
    long long level_base; /* HM_LEVEL_BASE: XP for level 2; level n needs base*(n-1)^2 */
    bool streak_grace;    /* HM_STREAK_GRACE: one missed day forgiven per streak */
} gm_config_t;

extern gm_config_t gm_cfg;

/* Where a change happens: in an RPC (call set) or in the consumer (call NULL). */
typedef struct gm_ctx {
    hm_call_t *call;
    hm_db_t *db;
    hm_arena_t *arena;
    const char *traceparent; /* consumer: the event's */
    const char *source_event_id;
} gm_ctx_t;

/* Publishes an event in the context's transaction. */
int gm_emit(gm_ctx_t *c, const char *type, const char *guest, const ProtobufCMessage *payload);

/* An award to make. */
typedef struct gm_award {
    const char *guest_id;
    int64_t points, xp; /* xp < 0: same as points */
    int source;
    const char *key; /* idempotency key (required) */
    const char *reason, *rule_id, *ref;
    int64_t rule_version;
    int64_t pending_until_us, expires_us; /* 0: none */
} gm_award_t;

typedef struct gm_award_result {
    const char *txn_id;
    bool created;
    int old_level, new_level;
} gm_award_result_t;

/* Awards inside the context's open transaction; publishes points.earned (and level.up) when
 * the award is new and bumps the points counter behind achievements. 0 or an HM_E* code. */
int gm_do_award(gm_ctx_t *c, const gm_award_t *a, gm_award_result_t *out);

/* Adds delta to a guest's counter (creating the account) and unlocks what it reaches,
 * advancing joined challenges on that counter. 0 or an HM_E* code. */
int gm_count(gm_ctx_t *c, const char *guest, const char *counter, int64_t delta);

/* Ensures the account exists (with a time zone when given). */
int gm_ensure_account(gm_ctx_t *c, const char *guest, const char *tz);

/* Loads a transaction as a message. */
Hospitality__Gamification__V1__PointTransaction *gm_load_txn(hm_db_t *db, hm_arena_t *arena,
                                                             const char *txn_id);
/* Balance of a guest (zeros when unknown). */
Hospitality__Gamification__V1__PointsBalance *gm_load_balance(hm_db_t *db, hm_arena_t *arena,
                                                              const char *guest);

/* Recomputes a guest's entries on every board from Postgres (absolute values: idempotent). */
int gm_board_refresh(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, const char *guest);
/* Removes a guest from every board (erasure). */
int gm_board_forget(hm_cache_t *cache, hm_arena_t *arena, const char *guest);
/* Task: refreshes the entries of accounts changed since its last run (the consumer's changes;
 * RPCs refresh right after their commit). */
int gm_board_task(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* Maps an HM_E* error of a ledger statement to a status (insufficient points and friends). */
hm_status_t gm_fail(hm_call_t *call, hm_db_t *db, int rc, const char *what);

/* Handlers. */
#define GM_HANDLER(fn)                                                                             \
    hm_status_t fn(hm_call_t *call, const ProtobufCMessage *in, ProtobufCMessage **out)
GM_HANDLER(gm_get_stats);
GM_HANDLER(gm_award_points);
GM_HANDLER(gm_redeem_points);
GM_HANDLER(gm_list_transactions);
GM_HANDLER(gm_list_achievements);
GM_HANDLER(gm_get_achievement_progress);
GM_HANDLER(gm_list_challenges);
GM_HANDLER(gm_join_challenge);
GM_HANDLER(gm_get_challenge_progress);
GM_HANDLER(gm_get_leaderboard);
GM_HANDLER(gm_get_rank);
GM_HANDLER(gm_record_activity);
GM_HANDLER(gm_upsert_rule);
GM_HANDLER(gm_list_rules);
GM_HANDLER(gm_export_subject);
GM_HANDLER(gm_erase_subject);

/* The consumer's handler and the tasks. */
int gm_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                    const ProtobufCMessage *payload, void *app);
int gm_task_release_expire(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);
int gm_task_challenges(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app);

/* Small helpers. gm_str: a text value, "" for SQL NULL (never NULL). */
static inline const char *gm_str(const PGresult *r, int row, int col)
{
    const char *v = hm_db_get(r, row, col);
    return v ? v : "";
}
const char *gm_param_i64(hm_arena_t *a, int64_t v);
int64_t gm_i64(const PGresult *r, int row, int col);
Google__Protobuf__Timestamp *gm_ts(hm_arena_t *a, const PGresult *r, int row, int col);
bool gm_valid_guest(const char *id);

#endif
