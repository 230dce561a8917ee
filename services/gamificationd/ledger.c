/*
 * ledger.c - the points ledger: awards, redemptions, balances, transactions (the SQL functions
 * of migration 002 do the arithmetic under the account's row lock), and the counters behind
 * achievements and challenges that every change goes through.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gm.h"
#include "hm/id.h"
#include "hospitality/events/v1/gamification_events.pb-c.h"

gm_config_t gm_cfg = {100, true};

#define TS(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

const char *gm_param_i64(hm_arena_t *a, int64_t v)
{
    return hm_db_param_int64(a, v);
}

int64_t gm_i64(const PGresult *r, int row, int col)
{
    int64_t v = 0;
    hm_db_get_int64(r, row, col, &v);
    return v;
}

Google__Protobuf__Timestamp *gm_ts(hm_arena_t *a, const PGresult *r, int row, int col)
{
    const char *s = gm_str(r, row, col);
    return s && *s ? hm_timestamp_from_us(a, gm_i64(r, row, col)) : NULL;
}

bool gm_valid_guest(const char *id)
{
    return id && hm_uuid_valid(id);
}

int gm_emit(gm_ctx_t *c, const char *type, const char *guest, const ProtobufCMessage *payload)
{
    if (c->call)
        return hm_call_publish(c->call, c->db, type, guest, payload);
    return hm_publish(c->db, c->arena, type, guest, c->traceparent, payload);
}

static const hm_stmt_t st_account = {"gm_account", "SELECT 1 FROM gm_account($1::uuid, $2)", 2};

int gm_ensure_account(gm_ctx_t *c, const char *guest, const char *tz)
{
    const char *p[2] = {guest, tz ? tz : ""};
    return hm_db_exec(c->db, &st_account, p, NULL, NULL, NULL);
}

static const hm_stmt_t st_award = {
    "gm_award",
    "SELECT txn::text, created, old_level, new_level FROM gm_award($1::uuid, $2::bigint, "
    "$3::smallint, $4, $5, $6, $7::bigint, to_timestamp(nullif($8::bigint, 0) / 1000000.0), "
    "to_timestamp(nullif($9::bigint, 0) / 1000000.0), $10, $11::bigint, $12::bigint)",
    12};
static const hm_stmt_t st_counter = {
    "gm_counter", "SELECT value FROM gm_counters WHERE guest_id = $1::uuid AND counter = $2", 2};
static const hm_stmt_t st_bump = {"gm_bump", "SELECT gm_bump($1::uuid, $2, $3::bigint)", 3};
static const hm_stmt_t st_due_unlocks = {
    "gm_due_unlocks",
    "SELECT a.achievement_id, t.tier, t.points, t.xp FROM gm_achievements a, "
    "jsonb_to_recordset(a.tiers) AS t(tier int, threshold bigint, points bigint, xp bigint) "
    "WHERE a.active AND a.counter = $2 AND t.threshold <= $3::bigint AND NOT EXISTS (SELECT 1 "
    "FROM gm_unlocks u WHERE u.guest_id = $1::uuid AND u.achievement_id = a.achievement_id AND "
    "u.tier = t.tier) ORDER BY t.threshold",
    3};
static const hm_stmt_t st_unlock = {
    "gm_unlock",
    "INSERT INTO gm_unlocks (guest_id, achievement_id, tier) VALUES ($1::uuid, $2, $3::smallint) "
    "ON CONFLICT DO NOTHING RETURNING 1",
    3};
static const hm_stmt_t st_progress = {
    "gm_progress",
    "UPDATE gm_participants p SET progress = progress + $3::bigint FROM gm_challenges ch "
    "WHERE p.challenge_id = ch.challenge_id AND p.guest_id = $1::uuid AND ch.counter = $2 AND "
    "now() >= ch.starts_at AND now() < ch.ends_at AND p.completed_at IS NULL "
    "RETURNING p.challenge_id, p.progress >= ch.target",
    3};
static const hm_stmt_t st_complete = {
    "gm_complete",
    "WITH ch AS (SELECT challenge_id, max_winners, reward_points FROM gm_challenges "
    "WHERE challenge_id = $1 FOR UPDATE), r AS (SELECT count(*) + 1 AS rank FROM gm_participants "
    "WHERE challenge_id = $1 AND completed_at IS NOT NULL) UPDATE gm_participants p SET "
    "completed_at = clock_timestamp(), rank = r.rank, winner = (ch.max_winners = 0 OR r.rank <= "
    "ch.max_winners) FROM ch, r WHERE p.challenge_id = $1 AND p.guest_id = $2::uuid AND "
    "p.completed_at IS NULL RETURNING p.rank, p.winner, ch.reward_points",
    2};

static int check_unlocks(gm_ctx_t *c, const char *guest, const char *counter, int64_t value);

/* Completes challenge `id` for the guest: rank, winner, reward, event. */
static int complete_challenge(gm_ctx_t *c, const char *guest, const char *id)
{
    const char *p[2] = {id, guest};
    PGresult *r;
    int rc = hm_db_exec_arena(c->db, c->arena, &st_complete, p, NULL, NULL, &r);
    if (rc != 0 || PQntuples(r) == 0)
        return rc;
    int rank = (int)gm_i64(r, 0, 0);
    bool winner = strcmp(gm_str(r, 0, 1), "t") == 0;
    int64_t reward = winner ? gm_i64(r, 0, 2) : 0;
    if (reward > 0) {
        gm_award_t a = {.guest_id = guest,
                        .points = reward,
                        .xp = -1,
                        .source =
                            HOSPITALITY__GAMIFICATION__V1__POINT_SOURCE__POINT_SOURCE_CHALLENGE,
                        .key = hm_arena_printf(c->arena, "challenge:%s", id),
                        .reason = "challenge completed",
                        .ref = hm_arena_printf(c->arena, "challenge:%s", id)};
        gm_award_result_t ar;
        if ((rc = gm_do_award(c, &a, &ar)) != 0)
            return rc;
    }
    Hospitality__Events__V1__GamificationChallengeCompleted ev =
        HOSPITALITY__EVENTS__V1__GAMIFICATION_CHALLENGE_COMPLETED__INIT;
    ev.guest_id = (char *)guest;
    ev.challenge_id = (char *)id;
    ev.rank = rank;
    ev.winner = winner;
    ev.reward_points = reward;
    return gm_emit(c, "gamification.challenge.completed", guest, &ev.base);
}

int gm_count(gm_ctx_t *c, const char *guest, const char *counter, int64_t delta)
{
    int rc = gm_ensure_account(c, guest, NULL);
    if (rc != 0)
        return rc;
    const char *p[3] = {guest, counter, gm_param_i64(c->arena, delta)};
    PGresult *r;
    if ((rc = hm_db_exec_arena(c->db, c->arena, &st_bump, p, NULL, NULL, &r)) != 0)
        return rc;
    int64_t value = gm_i64(r, 0, 0);
    if ((rc = hm_db_exec_arena(c->db, c->arena, &st_progress, p, NULL, NULL, &r)) != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++)
        if (strcmp(gm_str(r, i, 1), "t") == 0 &&
            (rc = complete_challenge(c, guest, hm_arena_strdup(c->arena, gm_str(r, i, 0)))) != 0)
            return rc;
    return check_unlocks(c, guest, counter, value);
}

static int check_unlocks(gm_ctx_t *c, const char *guest, const char *counter, int64_t value)
{
    const char *p[3] = {guest, counter, gm_param_i64(c->arena, value)};
    PGresult *r;
    int rc = hm_db_exec_arena(c->db, c->arena, &st_due_unlocks, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        const char *ach = hm_arena_strdup(c->arena, gm_str(r, i, 0));
        const char *tier = hm_arena_strdup(c->arena, gm_str(r, i, 1));
        int64_t pts = gm_i64(r, i, 2), xp = gm_i64(r, i, 3);
        const char *up[3] = {guest, ach, tier};
        PGresult *u;
        if ((rc = hm_db_exec_arena(c->db, c->arena, &st_unlock, up, NULL, NULL, &u)) != 0)
            return rc;
        if (PQntuples(u) == 0)
            continue; /* unlocked concurrently: exactly once */
        if (pts <= 0 && (rc = gm_ensure_account(c, guest, NULL)) == 0) {
            static const hm_stmt_t touch = {
                "gm_touch", "UPDATE gm_accounts SET updated_at = now() WHERE guest_id = $1::uuid",
                1};
            const char *tp[1] = {guest};
            rc = hm_db_exec(c->db, &touch, tp, NULL, NULL, NULL); /* the boards notice */
        }
        if (rc != 0)
            return rc;
        if (pts > 0) {
            gm_award_t a = {
                .guest_id = guest,
                .points = pts,
                .xp = xp,
                .source = HOSPITALITY__GAMIFICATION__V1__POINT_SOURCE__POINT_SOURCE_ACHIEVEMENT,
                .key = hm_arena_printf(c->arena, "achievement:%s:%s", ach, tier),
                .reason = hm_arena_printf(c->arena, "achievement %s", ach),
                .ref = hm_arena_printf(c->arena, "achievement:%s", ach)};
            gm_award_result_t ar;
            if ((rc = gm_do_award(c, &a, &ar)) != 0)
                return rc;
        }
        Hospitality__Events__V1__GamificationAchievementUnlocked ev =
            HOSPITALITY__EVENTS__V1__GAMIFICATION_ACHIEVEMENT_UNLOCKED__INIT;
        ev.guest_id = (char *)guest;
        ev.achievement_id = (char *)ach;
        ev.tier = atoi(tier);
        ev.points_awarded = pts;
        if ((rc = gm_emit(c, "gamification.achievement.unlocked", guest, &ev.base)) != 0)
            return rc;
    }
    return 0;
}

int gm_do_award(gm_ctx_t *c, const gm_award_t *a, gm_award_result_t *out)
{
    const char *p[12] = {a->guest_id,
                         gm_param_i64(c->arena, a->points),
                         gm_param_i64(c->arena, a->source),
                         a->key,
                         a->reason ? a->reason : "",
                         a->rule_id ? a->rule_id : "",
                         gm_param_i64(c->arena, a->rule_version),
                         gm_param_i64(c->arena, a->pending_until_us),
                         gm_param_i64(c->arena, a->expires_us),
                         a->ref ? a->ref : "",
                         a->xp < 0 ? NULL : gm_param_i64(c->arena, a->xp),
                         gm_param_i64(c->arena, gm_cfg.level_base)};
    PGresult *r;
    int rc = hm_db_exec_arena(c->db, c->arena, &st_award, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    out->txn_id = hm_arena_strdup(c->arena, gm_str(r, 0, 0));
    out->created = strcmp(gm_str(r, 0, 1), "t") == 0;
    out->old_level = (int)gm_i64(r, 0, 2);
    out->new_level = (int)gm_i64(r, 0, 3);
    if (!out->created)
        return 0;
    Hospitality__Events__V1__GamificationPointsEarned ev =
        HOSPITALITY__EVENTS__V1__GAMIFICATION_POINTS_EARNED__INIT;
    ev.guest_id = (char *)a->guest_id;
    ev.transaction_id = (char *)out->txn_id;
    ev.points = a->points;
    ev.rule_id = (char *)(a->rule_id ? a->rule_id : "");
    ev.source_event_id = (char *)(c->source_event_id ? c->source_event_id : "");
    if ((rc = gm_emit(c, "gamification.points.earned", a->guest_id, &ev.base)) != 0)
        return rc;
    if (out->new_level > out->old_level) {
        Hospitality__Events__V1__GamificationLevelUp lv =
            HOSPITALITY__EVENTS__V1__GAMIFICATION_LEVEL_UP__INIT;
        lv.guest_id = (char *)a->guest_id;
        lv.previous_level = out->old_level;
        lv.level = out->new_level;
        if ((rc = gm_emit(c, "gamification.level.up", a->guest_id, &lv.base)) != 0)
            return rc;
    }
    const char *cp[2] = {a->guest_id, "points_earned"};
    if ((rc = hm_db_exec_arena(c->db, c->arena, &st_counter, cp, NULL, NULL, &r)) != 0)
        return rc;
    return check_unlocks(c, a->guest_id, "points_earned", PQntuples(r) ? gm_i64(r, 0, 0) : 0);
}

/* ---- reading ---- */

#define TXN_COLS                                                                                   \
    "txn_id::text, guest_id::text, type, points, source, coalesce(idem_key, ''), rule_id, "        \
    "rule_version, reward_id, reason, coalesce(reverses::text, ''), " TS("created_at") ", " TS(    \
        "available_at") ", " TS("expires_at") ", available_after"

static const hm_stmt_t st_txn = {
    "gm_txn", "SELECT " TXN_COLS " FROM gm_transactions WHERE txn_id = $1::uuid", 1};
static const hm_stmt_t st_entries = {
    "gm_entries",
    "SELECT account, amount FROM gm_entries WHERE txn_id = $1::uuid ORDER BY entry_id", 1};

static Hospitality__Gamification__V1__PointTransaction *txn_row(hm_db_t *db, hm_arena_t *a,
                                                                const PGresult *r, int i)
{
    Hospitality__Gamification__V1__PointTransaction *t = hm_arena_alloc(a, sizeof *t);
    hospitality__gamification__v1__point_transaction__init(t);
    t->transaction_id = hm_arena_strdup(a, gm_str(r, i, 0));
    t->guest_id = hm_arena_strdup(a, gm_str(r, i, 1));
    t->type = (int)gm_i64(r, i, 2);
    t->points = gm_i64(r, i, 3);
    t->source = (int)gm_i64(r, i, 4);
    t->idempotency_key = hm_arena_strdup(a, gm_str(r, i, 5));
    t->rule_id = hm_arena_strdup(a, gm_str(r, i, 6));
    t->rule_version = gm_i64(r, i, 7);
    t->reward_id = hm_arena_strdup(a, gm_str(r, i, 8));
    t->reason = hm_arena_strdup(a, gm_str(r, i, 9));
    t->reverses_transaction_id = hm_arena_strdup(a, gm_str(r, i, 10));
    t->created_at = gm_ts(a, r, i, 11);
    t->available_at = gm_ts(a, r, i, 12);
    t->expires_at = gm_ts(a, r, i, 13);
    t->available_after = gm_i64(r, i, 14);
    const char *p[1] = {t->transaction_id};
    PGresult *e;
    if (hm_db_exec_arena(db, a, &st_entries, p, NULL, NULL, &e) == 0) {
        t->n_entries = (size_t)PQntuples(e);
        t->entries = hm_arena_alloc(a, t->n_entries * sizeof *t->entries + 1);
        for (size_t k = 0; k < t->n_entries; k++) {
            Hospitality__Gamification__V1__LedgerEntry *le = hm_arena_alloc(a, sizeof *le);
            hospitality__gamification__v1__ledger_entry__init(le);
            le->account = hm_arena_strdup(a, gm_str(e, (int)k, 0));
            le->amount = gm_i64(e, (int)k, 1);
            t->entries[k] = le;
        }
    }
    return t;
}

Hospitality__Gamification__V1__PointTransaction *gm_load_txn(hm_db_t *db, hm_arena_t *arena,
                                                             const char *txn_id)
{
    const char *p[1] = {txn_id};
    PGresult *r;
    if (hm_db_exec_arena(db, arena, &st_txn, p, NULL, NULL, &r) != 0 || PQntuples(r) == 0)
        return NULL;
    return txn_row(db, arena, r, 0);
}

static const hm_stmt_t st_balance = {
    "gm_balance",
    "SELECT earned, available, redeemed, pending, expired, reversed FROM gm_accounts "
    "WHERE guest_id = $1::uuid",
    1};

Hospitality__Gamification__V1__PointsBalance *gm_load_balance(hm_db_t *db, hm_arena_t *arena,
                                                              const char *guest)
{
    Hospitality__Gamification__V1__PointsBalance *b = hm_arena_alloc(arena, sizeof *b);
    hospitality__gamification__v1__points_balance__init(b);
    const char *p[1] = {guest};
    PGresult *r;
    if (hm_db_exec_arena(db, arena, &st_balance, p, NULL, NULL, &r) == 0 && PQntuples(r) == 1) {
        b->total_earned = gm_i64(r, 0, 0);
        b->available = gm_i64(r, 0, 1);
        b->redeemed = gm_i64(r, 0, 2);
        b->pending = gm_i64(r, 0, 3);
        b->expired = gm_i64(r, 0, 4);
        b->reversed = gm_i64(r, 0, 5);
    }
    return b;
}

hm_status_t gm_fail(hm_call_t *call, hm_db_t *db, int rc, const char *what)
{
    if (strcmp(hm_db_last_sqlstate(db), "HM001") == 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "INSUFFICIENT_POINTS", "%s",
                             hm_arena_strdup(&call->arena, hm_db_last_message(db)));
    return hm_call_fail(call, rc, what);
}

/* ---- RPCs ---- */

static const hm_stmt_t st_stats = {
    "gm_stats",
    "SELECT a.level, a.xp, a.streak_current, a.streak_longest, a.time_zone, "
    "coalesce(to_char(a.streak_last, 'YYYY-MM-DD'), ''), " TS(
        "a.updated_at") ", "
                        "(SELECT count(*) FROM gm_unlocks u WHERE u.guest_id = a.guest_id), "
                        "(SELECT count(*) FROM gm_participants p WHERE p.guest_id = a.guest_id AND "
                        "p.completed_at IS "
                        "NOT NULL) FROM gm_accounts a WHERE a.guest_id = $1::uuid",
    1};

static int64_t level_xp(int level)
{
    return gm_cfg.level_base * (int64_t)(level - 1) * (int64_t)(level - 1);
}

GM_HANDLER(gm_get_stats)
{
    const Hospitality__Gamification__V1__GetStatsRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    const char *p[1] = {req->guest_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_stats, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "load stats");
    Hospitality__Gamification__V1__UserStats *s = hm_arena_alloc(&call->arena, sizeof *s);
    hospitality__gamification__v1__user_stats__init(s);
    s->guest_id = req->guest_id;
    s->points = gm_load_balance(call->db, &call->arena, req->guest_id);
    s->level = 1;
    s->time_zone = "UTC";
    if (PQntuples(r) == 1) {
        s->level = (int)gm_i64(r, 0, 0);
        s->xp = gm_i64(r, 0, 1);
        s->current_streak_days = (int)gm_i64(r, 0, 2);
        s->longest_streak_days = (int)gm_i64(r, 0, 3);
        s->time_zone = hm_arena_strdup(&call->arena, gm_str(r, 0, 4));
        const char *day = gm_str(r, 0, 5);
        if (*day) {
            Hospitality__Common__V1__Date *d = hm_arena_alloc(&call->arena, sizeof *d);
            hospitality__common__v1__date__init(d);
            sscanf(day, "%d-%d-%d", &d->year, &d->month, &d->day);
            s->last_active_day = d;
        }
        s->updated_at = gm_ts(&call->arena, r, 0, 6);
        s->achievements_unlocked = (int)gm_i64(r, 0, 7);
        s->challenges_completed = (int)gm_i64(r, 0, 8);
    }
    s->level_start_xp = level_xp(s->level);
    s->next_level_xp = level_xp(s->level + 1);
    Hospitality__Gamification__V1__GetStatsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__get_stats_response__init(resp);
    resp->stats = s;
    *out = &resp->base;
    return HM_STATUS_OK;
}

typedef struct award_tx {
    gm_ctx_t ctx;
    gm_award_t a;
    gm_award_result_t res;
} award_tx_t;

static int award_in_tx(hm_db_t *db, void *arg)
{
    award_tx_t *t = arg;
    t->ctx.db = db;
    return gm_do_award(&t->ctx, &t->a, &t->res);
}

GM_HANDLER(gm_award_points)
{
    const Hospitality__Gamification__V1__AwardPointsRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->points <= 0 || req->points > 1000000)
        return hm_call_invalid(call, "points", "points must be between 1 and 1000000");
    if (!req->idempotency_key[0] || strlen(req->idempotency_key) > 200)
        return hm_call_invalid(call, "idempotency_key",
                               "an idempotency key (at most 200 characters) is required");
    if (!protobuf_c_enum_descriptor_get_value(
            &hospitality__gamification__v1__point_source__descriptor, req->source) ||
        req->source == 0)
        return hm_call_invalid(call, "source", "a point source is required");
    int64_t now_us = hm_now_ms() * 1000;
    award_tx_t t = {.ctx = {.call = call, .arena = &call->arena},
                    .a = {.guest_id = req->guest_id,
                          .points = req->points,
                          .xp = -1,
                          .source = req->source,
                          .key = hm_arena_printf(&call->arena, "api:%s", req->idempotency_key),
                          .reason = req->reason,
                          .ref = ""}};
    if (req->pending_period) {
        if (req->pending_period->seconds < 0 || req->pending_period->seconds > 365 * 86400)
            return hm_call_invalid(call, "pending_period", "between 0 and 365 days");
        t.a.pending_until_us = now_us + req->pending_period->seconds * 1000000;
    }
    if (req->expires_at) {
        t.a.expires_us = hm_timestamp_to_us(req->expires_at);
        if (t.a.expires_us <= now_us)
            return hm_call_invalid(call, "expires_at", "expires_at must be in the future");
    }
    int rc = hm_db_tx(call->db, award_in_tx, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return gm_fail(call, call->db, rc, "award points");
    /* the leaderboards follow within the board task's period (250 ms) */
    Hospitality__Gamification__V1__AwardPointsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__award_points_response__init(resp);
    resp->transaction = gm_load_txn(call->db, &call->arena, t.res.txn_id);
    resp->balance = gm_load_balance(call->db, &call->arena, req->guest_id);
    resp->level = t.res.new_level;
    resp->leveled_up = t.res.new_level > t.res.old_level;
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_redeem = {
    "gm_redeem", "SELECT txn::text, created FROM gm_redeem($1::uuid, $2::bigint, $3, $4, $5)", 5};

typedef struct redeem_tx {
    const char *const *params;
    const char *txn;
    hm_arena_t *arena;
} redeem_tx_t;

static int redeem_in_tx(hm_db_t *db, void *arg)
{
    redeem_tx_t *t = arg;
    PGresult *r;
    int rc = hm_db_exec_arena(db, t->arena, &st_redeem, t->params, NULL, NULL, &r);
    if (rc == 0)
        t->txn = hm_arena_strdup(t->arena, gm_str(r, 0, 0));
    return rc;
}

GM_HANDLER(gm_redeem_points)
{
    const Hospitality__Gamification__V1__RedeemPointsRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->points <= 0 || req->points > 100000000)
        return hm_call_invalid(call, "points", "points must be positive");
    if (!req->idempotency_key[0] || strlen(req->idempotency_key) > 200)
        return hm_call_invalid(call, "idempotency_key",
                               "an idempotency key (at most 200 characters) is required");
    const char *p[5] = {req->guest_id, gm_param_i64(&call->arena, req->points),
                        hm_arena_printf(&call->arena, "api:%s", req->idempotency_key),
                        req->reward_id, req->reason};
    redeem_tx_t t = {p, NULL, &call->arena};
    int rc = hm_db_tx(call->db, redeem_in_tx, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return gm_fail(call, call->db, rc, "redeem points");
    Hospitality__Gamification__V1__RedeemPointsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__redeem_points_response__init(resp);
    resp->transaction = gm_load_txn(call->db, &call->arena, t.txn);
    resp->balance = gm_load_balance(call->db, &call->arena, req->guest_id);
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_list_txns = {
    "gm_list_txns",
    "SELECT " TXN_COLS " FROM gm_transactions WHERE guest_id = $1::uuid "
    "AND ($2::smallint[] IS NULL OR type = ANY($2::smallint[])) "
    "AND ($3::bigint = 0 OR created_at >= to_timestamp($3::bigint / 1000000.0)) "
    "AND ($4::bigint = 0 OR created_at < to_timestamp($4::bigint / 1000000.0)) "
    "AND ($5::bigint = 0 OR (extract(epoch FROM created_at) * 1000000)::bigint < $5::bigint) "
    "ORDER BY created_at DESC, txn_id LIMIT $6::int",
    6};

GM_HANDLER(gm_list_transactions)
{
    const Hospitality__Gamification__V1__ListTransactionsRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    int size = req->page && req->page->page_size > 0 ? req->page->page_size : 50;
    if (size > 500)
        size = 500;
    int64_t before = 0;
    if (req->page && req->page->page_token[0]) {
        char *end;
        before = strtoll(req->page->page_token, &end, 10);
        if (*end || before <= 0)
            return hm_call_invalid(call, "page.page_token", "not a token this service issued");
    }
    char *types = NULL;
    if (req->n_types) {
        size_t cap = req->n_types * 12 + 3, len = 1;
        types = hm_arena_alloc(&call->arena, cap);
        strcpy(types, "{");
        for (size_t i = 0; i < req->n_types; i++)
            len += (size_t)snprintf(types + len, cap - len, "%s%d", i ? "," : "", req->types[i]);
        strcat(types, "}");
    }
    int64_t from = req->time_range ? hm_timestamp_to_us(req->time_range->start_time) : 0;
    int64_t to = req->time_range ? hm_timestamp_to_us(req->time_range->end_time) : 0;
    const char *p[6] = {req->guest_id,
                        types,
                        gm_param_i64(&call->arena, from),
                        gm_param_i64(&call->arena, to),
                        gm_param_i64(&call->arena, before),
                        gm_param_i64(&call->arena, size + 1)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_list_txns, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list transactions");
    int n = PQntuples(r);
    Hospitality__Gamification__V1__ListTransactionsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__list_transactions_response__init(resp);
    resp->n_transactions = (size_t)(n > size ? size : n);
    resp->transactions = hm_arena_alloc(&call->arena, resp->n_transactions * sizeof(void *) + 1);
    for (size_t i = 0; i < resp->n_transactions; i++)
        resp->transactions[i] = txn_row(call->db, &call->arena, r, (int)i);
    Hospitality__Common__V1__PageResponse *pg = hm_arena_alloc(&call->arena, sizeof *pg);
    hospitality__common__v1__page_response__init(pg);
    pg->next_page_token = "";
    if (n > size) /* ties at the same microsecond are rare; the token is the last time seen */
        pg->next_page_token =
            hm_arena_printf(&call->arena, "%lld", (long long)gm_i64(r, size - 1, 11));
    resp->page = pg;
    *out = &resp->base;
    return HM_STATUS_OK;
}
