/*
 * board.c - leaderboards in Redis sorted sets, computed from Postgres.
 *
 * Each board ("points:all", "points:w:2026-W48", "points:m:2026-11", "level:all",
 * "achievements:all", "streak:all") is a sorted set hm:gamificationd:lb:<board> whose members
 * are "<9999999999999 - reach ms, 13 digits>|<guest id>" with the score: among equal scores
 * ZREVRANGE's reverse lexicographic order puts the guest who reached the score first on top
 * (the documented tie-break). A hash <key>:m maps guest -> member, <key>:p keeps each guest's
 * previous rank (rank change). Entries are absolute values read from Postgres (gm_board_rows),
 * so refreshing twice is harmless and a board lost with Redis is rebuilt identical: a board is
 * trusted only while its <key>:built marker exists.
 *
 * The RPC that made a change refreshes the guest right after its commit; the consumer's
 * changes are picked up by a task from gm_accounts.updated_at a moment later (only committed
 * data is ever read, so a rolled back transaction never shows on a board).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gm.h"
#include "hm/id.h"
#include "hm/log.h"

#define PREFIX    "hm:gamificationd:lb:"
#define REACH_MAX 9999999999999LL

/* KEYS: board, prev, built. ARGV: first and last rank (0-based). Returns -1 when the board is
 * not built, else {card, member1, score1, prev1, member2, ...}: one round trip per page. */
static const char PAGE_LUA[] =
    "if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end "
    "local out = {redis.call('ZCARD', KEYS[1])} "
    "local r = redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES') "
    "for i = 1, #r, 2 do "
    "  local g = string.sub(r[i], 15) "
    "  out[#out + 1] = r[i] out[#out + 1] = r[i + 1] "
    "  out[#out + 1] = redis.call('HGET', KEYS[2], g) or '' "
    "end "
    "return out";

/* KEYS: board, map, prev. ARGV: guest, score, member. */
static const char SET_LUA[] =
    "local old = redis.call('HGET', KEYS[2], ARGV[1]) "
    "if old then "
    "  local r = redis.call('ZREVRANK', KEYS[1], old) "
    "  if r and old ~= ARGV[3] then redis.call('HSET', KEYS[3], ARGV[1], r + 1) end "
    "  redis.call('ZREM', KEYS[1], old) "
    "end "
    "if tonumber(ARGV[2]) > 0 then "
    "  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3]) "
    "  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) "
    "else redis.call('HDEL', KEYS[2], ARGV[1]) end "
    "return 1";

static const hm_stmt_t st_rows = {"gm_board_rows",
                                  "SELECT board, score, coalesce((extract(epoch FROM reach) * "
                                  "1000)::bigint, 0) FROM gm_board_rows($1::uuid)",
                                  1};
static const hm_stmt_t st_rebuild = {
    "gm_board_rebuild",
    "SELECT a.guest_id::text, r.score, coalesce((extract(epoch FROM r.reach) * 1000)::bigint, 0) "
    "FROM gm_accounts a, gm_board_rows(a.guest_id) r WHERE r.board = $1 AND r.score > 0",
    1};

static int set_entry(hm_cache_t *cache, hm_arena_t *a, const char *board, const char *guest,
                     int64_t score, int64_t reach_ms)
{
    const char *key = hm_arena_printf(a, PREFIX "%s", board);
    const char *argv[9] = {
        "EVAL",
        SET_LUA,
        "3",
        key,
        hm_arena_printf(a, "%s:m", key),
        hm_arena_printf(a, "%s:p", key),
        guest,
        hm_arena_printf(a, "%lld", (long long)score),
        hm_arena_printf(a, "%013lld|%s", REACH_MAX - (long long)reach_ms, guest)};
    redisReply *r = hm_cache_command_argv(cache, a, 9, argv, NULL);
    return r && r->type != REDIS_REPLY_ERROR ? 0 : HM_EUNAVAIL;
}

int gm_board_refresh(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, const char *guest)
{
    const char *p[1] = {guest};
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_rows, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++)
        if ((rc = set_entry(cache, arena, gm_str(r, i, 0), guest, gm_i64(r, i, 1),
                            gm_i64(r, i, 2))) != 0)
            return rc;
    return 0;
}

int gm_board_forget(hm_cache_t *cache, hm_arena_t *arena, const char *guest)
{
    redisReply *keys = hm_cache_command(cache, arena, "KEYS %s*:m", PREFIX);
    if (!keys || keys->type != REDIS_REPLY_ARRAY)
        return HM_EUNAVAIL;
    for (size_t i = 0; i < keys->elements; i++) {
        const char *map = keys->element[i]->str;
        size_t n = strlen(map) - 2;
        const char *board = hm_arena_strndup(arena, map, n) + strlen(PREFIX);
        if (set_entry(cache, arena, board, guest, 0, 0) != 0)
            return HM_EUNAVAIL;
        hm_cache_command(cache, arena, "HDEL %b:p %s", map, n, guest);
    }
    return 0;
}

static const hm_stmt_t st_changed = {
    "gm_board_changed",
    "SELECT guest_id::text, (extract(epoch FROM updated_at) * 1000000)::bigint FROM gm_accounts "
    "WHERE updated_at > to_timestamp($1::bigint / 1000000.0) ORDER BY updated_at LIMIT 500",
    1};

int gm_board_task(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    /* updated_at is the changing transaction's start time: one that commits late may carry a
     * time below the mark, so each run looks 10 s further back (refreshing twice is harmless). */
    static int64_t mark_us;
    (void)app;
    const char *p[1] = {gm_param_i64(arena, mark_us - 10000000)};
    PGresult *r;
    int rc = hm_db_exec_arena(db, arena, &st_changed, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int64_t top = mark_us;
    for (int i = 0; i < PQntuples(r); i++) {
        if ((rc = gm_board_refresh(db, cache, arena, gm_str(r, i, 0))) != 0)
            return rc; /* Redis down: the mark stays, the next run retries */
        if (gm_i64(r, i, 1) > top)
            top = gm_i64(r, i, 1);
    }
    if (PQntuples(r) < 500 || top > mark_us)
        mark_us = PQntuples(r) < 500 ? (top > mark_us ? top : mark_us) : top;
    return 0;
}

/* The board a request names, with the current week and month (UTC) for the windows. */
static const char *board_name(hm_arena_t *a, int type, int window)
{
    const char *t =
        type == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_LEVEL ? "level"
        : type == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_ACHIEVEMENTS
            ? "achievements"
        : type == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_STREAK
            ? "streak"
            : "points";
    if (strcmp(t, "points") != 0 ||
        window == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_WINDOW__LEADERBOARD_WINDOW_ALL_TIME ||
        window == 0)
        return hm_arena_printf(a, "%s:all", t);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char buf[32];
    if (window == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_WINDOW__LEADERBOARD_WINDOW_WEEKLY)
        strftime(buf, sizeof buf, "points:w:%G-W%V", &tm);
    else
        strftime(buf, sizeof buf, "points:m:%Y-%m", &tm);
    return hm_arena_strdup(a, buf);
}

/* Rebuilds `board` from Postgres unless its marker says Redis still has it. */
static int ensure_built(hm_call_t *call, const char *board)
{
    hm_arena_t *a = &call->arena;
    const char *key = hm_arena_printf(a, PREFIX "%s", board);
    redisReply *r = hm_cache_command(call->cache, a, "EXISTS %s:built", key);
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return HM_EUNAVAIL;
    if (r->integer == 1)
        return 0;
    const char *p[1] = {board};
    PGresult *res;
    int rc = hm_db_exec_arena(call->db, a, &st_rebuild, p, NULL, NULL, &res);
    if (rc != 0)
        return rc;
    HM_INFO("leaderboard %s: rebuilt from Postgres (%d entries)", board, PQntuples(res));
    for (int i = 0; i < PQntuples(res); i++)
        if ((rc = set_entry(call->cache, a, board, gm_str(res, i, 0), gm_i64(res, i, 1),
                            gm_i64(res, i, 2))) != 0)
            return rc;
    hm_cache_command(call->cache, a, "SET %s:built 1", key);
    return 0;
}

static Hospitality__Gamification__V1__LeaderboardEntry *entry(hm_call_t *call, const char *key,
                                                              const char *member, int64_t score,
                                                              int rank, const char *prev)
{
    hm_arena_t *a = &call->arena;
    Hospitality__Gamification__V1__LeaderboardEntry *e = hm_arena_alloc(a, sizeof *e);
    hospitality__gamification__v1__leaderboard_entry__init(e);
    const char *bar = strchr(member, '|');
    e->guest_id = hm_arena_strdup(a, bar ? bar + 1 : member);
    e->score = score;
    e->rank = rank;
    int64_t reach = REACH_MAX - strtoll(member, NULL, 10);
    if (reach > 0)
        e->reached_at = hm_timestamp_from_us(a, reach * 1000);
    if (!prev) {
        redisReply *p = hm_cache_command(call->cache, a, "HGET %s:p %s", key, e->guest_id);
        prev = p && p->type == REDIS_REPLY_STRING ? p->str : "";
    }
    e->previous_rank = *prev ? atoi(prev) : rank;
    e->rank_change = e->previous_rank - rank;
    return e;
}

static const hm_stmt_t st_challenge_board = {
    "gm_challenge_board",
    "SELECT guest_id::text, progress, "
    "coalesce((extract(epoch FROM completed_at) * 1000)::bigint, 0) "
    "FROM gm_participants WHERE challenge_id = $1 ORDER BY progress DESC, completed_at NULLS "
    "LAST, joined_at, guest_id OFFSET $2::int LIMIT $3::int",
    3};

GM_HANDLER(gm_get_leaderboard)
{
    const Hospitality__Gamification__V1__GetLeaderboardRequest *req = (const void *)in;
    int size = req->page && req->page->page_size > 0 ? req->page->page_size : 10;
    if (size > 100)
        size = 100;
    int offset = 0;
    if (req->page && req->page->page_token[0]) {
        offset = atoi(req->page->page_token);
        if (offset <= 0)
            return hm_call_invalid(call, "page.page_token", "not a token this service issued");
    }
    Hospitality__Gamification__V1__GetLeaderboardResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__get_leaderboard_response__init(resp);
    Hospitality__Common__V1__PageResponse *pg = hm_arena_alloc(&call->arena, sizeof *pg);
    hospitality__common__v1__page_response__init(pg);
    pg->next_page_token = "";
    resp->page = pg;
    resp->entries = hm_arena_alloc(&call->arena, (size_t)size * sizeof(void *));
    if (req->type == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_CHALLENGE) {
        if (!req->challenge_id[0])
            return hm_call_invalid(call, "challenge_id", "a challenge board needs challenge_id");
        const char *p[3] = {req->challenge_id, gm_param_i64(&call->arena, offset),
                            gm_param_i64(&call->arena, size)};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, &call->arena, &st_challenge_board, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "challenge board");
        for (int i = 0; i < PQntuples(r); i++) {
            Hospitality__Gamification__V1__LeaderboardEntry *e =
                hm_arena_alloc(&call->arena, sizeof *e);
            hospitality__gamification__v1__leaderboard_entry__init(e);
            e->guest_id = hm_arena_strdup(&call->arena, gm_str(r, i, 0));
            e->score = gm_i64(r, i, 1);
            e->rank = e->previous_rank = offset + i + 1;
            if (gm_i64(r, i, 2))
                e->reached_at = hm_timestamp_from_us(&call->arena, gm_i64(r, i, 2) * 1000);
            resp->entries[resp->n_entries++] = e;
        }
        *out = &resp->base;
        return HM_STATUS_OK;
    }
    const char *board = board_name(&call->arena, req->type, req->window);
    const char *key = hm_arena_printf(&call->arena, PREFIX "%s", board);
    const char *argv[8] = {"EVAL",
                           PAGE_LUA,
                           "3",
                           key,
                           hm_arena_printf(&call->arena, "%s:p", key),
                           hm_arena_printf(&call->arena, "%s:built", key),
                           hm_arena_printf(&call->arena, "%d", offset),
                           hm_arena_printf(&call->arena, "%d", offset + size - 1)};
    redisReply *r = hm_cache_command_argv(call->cache, &call->arena, 8, argv, NULL);
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == -1) { /* lost with Redis: rebuild */
        int rc = ensure_built(call, board);
        if (rc != 0)
            return hm_call_fail(call, rc, "leaderboard");
        r = hm_cache_command_argv(call->cache, &call->arena, 8, argv, NULL);
    }
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return hm_call_fail(call, HM_EUNAVAIL, "leaderboard");
    long long card = r->element[0]->integer;
    for (size_t i = 1; i + 2 < r->elements; i += 3)
        resp->entries[resp->n_entries++] =
            entry(call, key, r->element[i]->str, strtoll(r->element[i + 1]->str, NULL, 10),
                  offset + (int)(i / 3) + 1, r->element[i + 2]->str);
    resp->total_ranked = card;
    if (offset + size < card)
        pg->next_page_token = hm_arena_printf(&call->arena, "%d", offset + size);
    pg->total_size = (int)card;
    *out = &resp->base;
    return HM_STATUS_OK;
}

GM_HANDLER(gm_get_rank)
{
    const Hospitality__Gamification__V1__GetRankRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->type == HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_CHALLENGE)
        return hm_call_error(call, HM_CODE_INVALID_ARGUMENT, "VALIDATION_FAILED",
                             "challenge ranks are in GetChallengeProgress");
    const char *board = board_name(&call->arena, req->type, req->window);
    int rc = ensure_built(call, board);
    if (rc != 0)
        return hm_call_fail(call, rc, "leaderboard");
    const char *key = hm_arena_printf(&call->arena, PREFIX "%s", board);
    redisReply *m = hm_cache_command(call->cache, &call->arena, "HGET %s:m %s", key, req->guest_id);
    if (!m || (m->type != REDIS_REPLY_STRING && m->type != REDIS_REPLY_NIL))
        return hm_call_fail(call, HM_EUNAVAIL, "leaderboard");
    if (m->type == REDIS_REPLY_NIL)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_RANKED",
                             "the guest has no score on this leaderboard yet");
    const char *member = hm_arena_strdup(&call->arena, m->str);
    redisReply *rk = hm_cache_command(call->cache, &call->arena, "ZREVRANK %s %s", key, member);
    redisReply *sc = hm_cache_command(call->cache, &call->arena, "ZSCORE %s %s", key, member);
    redisReply *n = hm_cache_command(call->cache, &call->arena, "ZCARD %s", key);
    if (!rk || rk->type != REDIS_REPLY_INTEGER || !sc || sc->type != REDIS_REPLY_STRING || !n)
        return hm_call_fail(call, HM_EUNAVAIL, "leaderboard");
    Hospitality__Gamification__V1__GetRankResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__get_rank_response__init(resp);
    resp->entry = entry(call, key, member, strtoll(sc->str, NULL, 10), (int)rk->integer + 1, NULL);
    resp->total_ranked = n->integer;
    *out = &resp->base;
    return HM_STATUS_OK;
}
