/*
 * game.c - rules, achievements, streaks, challenges, the event consumer and the data-subject
 * interface of gamificationd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gm.h"
#include "hm/auth.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hospitality/events/v1/booking_events.pb-c.h"
#include "hospitality/events/v1/external_events.pb-c.h"
#include "hospitality/events/v1/gamification_events.pb-c.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

#define TS(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

/* ---- rules ---- */

static const hm_stmt_t st_rules_for = {
    "gm_rules_for",
    "SELECT r.rule_id, r.version, r.calculation, r.points, r.amount_step, r.xp, "
    "coalesce(CASE WHEN now() >= r.mult_start AND now() < r.mult_end THEN r.multiplier END, 100), "
    "r.daily_cap, r.weekly_cap, r.pending_ms, r.lifetime_ms, r.source, "
    "(SELECT coalesce(sum(t.points), 0) FROM gm_transactions t, gm_accounts a "
    "  WHERE a.guest_id = $2::uuid AND t.guest_id = a.guest_id AND t.type = 1 AND "
    "  t.rule_id = r.rule_id AND (t.created_at AT TIME ZONE a.time_zone)::date = "
    "  (now() AT TIME ZONE a.time_zone)::date), "
    "(SELECT coalesce(sum(t.points), 0) FROM gm_transactions t, gm_accounts a "
    "  WHERE a.guest_id = $2::uuid AND t.guest_id = a.guest_id AND t.type = 1 AND "
    "  t.rule_id = r.rule_id AND date_trunc('week', t.created_at AT TIME ZONE a.time_zone) = "
    "  date_trunc('week', now() AT TIME ZONE a.time_zone)) "
    "FROM gm_rules r WHERE r.active AND r.event_type = $1 ORDER BY r.rule_id",
    2};

/* Applies the active rules for `event_type` to the guest: fixed or per-amount points, the
 * campaign multiplier, the daily and weekly caps in the guest's local time. Each rule awards
 * at most once per `ref`. */
static int apply_rules(gm_ctx_t *c, const char *event_type, const char *guest, const char *ref,
                       int64_t amount_minor)
{
    int rc = gm_ensure_account(c, guest, NULL);
    if (rc != 0)
        return rc;
    const char *p[2] = {event_type, guest};
    PGresult *r;
    if ((rc = hm_db_exec_arena(c->db, c->arena, &st_rules_for, p, NULL, NULL, &r)) != 0)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t calc = gm_i64(r, i, 2), pts = gm_i64(r, i, 3), step = gm_i64(r, i, 4);
        int64_t mult = gm_i64(r, i, 6), dcap = gm_i64(r, i, 7), wcap = gm_i64(r, i, 8);
        int64_t day = gm_i64(r, i, 12), week = gm_i64(r, i, 13);
        int64_t grant = calc == 2 ? (step > 0 ? amount_minor / step * pts : 0) : pts;
        grant = grant * mult / 100;
        if (dcap > 0 && grant > dcap - day)
            grant = dcap - day;
        if (wcap > 0 && grant > wcap - week)
            grant = wcap - week;
        if (grant <= 0)
            continue; /* capped (anti-abuse) or nothing to earn */
        int64_t now_us = hm_now_ms() * 1000;
        const char *rule = hm_arena_strdup(c->arena, gm_str(r, i, 0));
        gm_award_t a = {.guest_id = guest,
                        .points = grant,
                        .xp = gm_i64(r, i, 5) * mult / 100,
                        .source = (int)gm_i64(r, i, 11),
                        .key = hm_arena_printf(c->arena, "rule:%s:%s", rule, ref),
                        .reason = hm_arena_printf(c->arena, "rule %s", rule),
                        .rule_id = rule,
                        .rule_version = gm_i64(r, i, 1),
                        .ref = ref,
                        .pending_until_us = gm_i64(r, i, 9) ? now_us + gm_i64(r, i, 9) * 1000 : 0,
                        .expires_us = gm_i64(r, i, 10) ? now_us + gm_i64(r, i, 10) * 1000 : 0};
        gm_award_result_t res;
        if ((rc = gm_do_award(c, &a, &res)) != 0)
            return rc;
    }
    return 0;
}

static const hm_stmt_t st_seen = {
    "gm_seen",
    "INSERT INTO gm_seen (guest_id, kind, value) VALUES ($1::uuid, $2, $3) ON CONFLICT DO NOTHING "
    "RETURNING 1",
    3};

/* Records a distinct venue or app; bumps its counter the first time. */
static int seen(gm_ctx_t *c, const char *guest, const char *kind, const char *value,
                const char *counter)
{
    if (!value || !value[0])
        return 0;
    int rc = gm_ensure_account(c, guest, NULL);
    const char *p[3] = {guest, kind, value};
    PGresult *r;
    if (rc == 0)
        rc = hm_db_exec_arena(c->db, c->arena, &st_seen, p, NULL, NULL, &r);
    if (rc == 0 && PQntuples(r) == 1)
        rc = gm_count(c, guest, counter, 1);
    return rc;
}

static const char *app_name(int app)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&hospitality__common__v1__app__descriptor, app);
    return v && app ? v->name : NULL;
}

/* ---- the consumer ---- */

static const hm_stmt_t st_awards_of = {
    "gm_awards_of",
    "SELECT txn_id::text FROM gm_transactions t WHERE ref = $1 AND type = 1 AND NOT EXISTS "
    "(SELECT 1 FROM gm_transactions r WHERE r.reverses = t.txn_id)",
    1};
static const hm_stmt_t st_reverse = {"gm_reverse",
                                     "SELECT coalesce(pts, 0) FROM gm_reverse($1::uuid, $2)", 2};

/* Reverses every award made for `ref` (a cancelled booking claws back its points). */
static int reverse_ref(gm_ctx_t *c, const char *ref, const char *why, int64_t *reversed)
{
    const char *p[1] = {ref};
    PGresult *r;
    int rc = hm_db_exec_arena(c->db, c->arena, &st_awards_of, p, NULL, NULL, &r);
    *reversed = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *rp[2] = {gm_str(r, i, 0), why};
        PGresult *x;
        rc = hm_db_exec_arena(c->db, c->arena, &st_reverse, rp, NULL, NULL, &x);
        if (rc == 0)
            *reversed += gm_i64(x, 0, 0);
    }
    return rc;
}

int gm_handle_event(hm_db_t *db, hm_arena_t *arena, const Hospitality__Events__V1__Event *env,
                    const ProtobufCMessage *payload, void *app)
{
    (void)app;
    gm_ctx_t c = {
        .db = db, .arena = arena, .traceparent = env->traceparent, .source_event_id = env->id};
    const char *t = env->type;
    int rc = 0;

    if (strcmp(t, "booking.completed") == 0) {
        const Hospitality__Events__V1__BookingSummary *b =
            ((const Hospitality__Events__V1__BookingCompleted *)payload)->booking;
        if (!b || !gm_valid_guest(b->guest_id))
            return 0; /* nothing to credit: a booking without a guest */
        const char *ref = hm_arena_printf(arena, "booking:%s", b->booking_id);
        if ((rc = apply_rules(&c, t, b->guest_id, ref,
                              b->total_price ? b->total_price->amount_minor : 0)) == 0 &&
            (rc = gm_count(&c, b->guest_id, "bookings_completed", 1)) == 0 &&
            (rc = seen(&c, b->guest_id, "venue", b->venue_id, "distinct_venues")) == 0)
            rc = seen(&c, b->guest_id, "app", "APP_BOOKING", "apps_used");
    } else if (strcmp(t, "booking.cancelled") == 0) {
        const Hospitality__Events__V1__BookingSummary *b =
            ((const Hospitality__Events__V1__BookingCancelled *)payload)->booking;
        if (!b || !gm_valid_guest(b->guest_id))
            return 0;
        int64_t back = 0;
        rc = reverse_ref(&c, hm_arena_printf(arena, "booking:%s", b->booking_id),
                         "booking cancelled", &back);
        if (rc == 0 && back > 0)
            rc = gm_count(&c, b->guest_id, "bookings_completed", -1);
    } else if (strcmp(t, "feedback.review.submitted") == 0) {
        const Hospitality__Events__V1__FeedbackReviewSubmitted *f = (const void *)payload;
        if (!gm_valid_guest(f->guest_id))
            return 0;
        if ((rc = apply_rules(&c, t, f->guest_id, hm_arena_printf(arena, "review:%s", f->review_id),
                              0)) == 0 &&
            (rc = gm_count(&c, f->guest_id, "reviews", 1)) == 0)
            rc = seen(&c, f->guest_id, "venue", f->venue_id, "distinct_venues");
    } else if (strcmp(t, "feedback.rating.submitted") == 0) {
        const Hospitality__Events__V1__FeedbackRatingSubmitted *f = (const void *)payload;
        if (!gm_valid_guest(f->guest_id))
            return 0;
        if ((rc = apply_rules(&c, t, f->guest_id, hm_arena_printf(arena, "rating:%s", f->rating_id),
                              0)) == 0)
            rc = gm_count(&c, f->guest_id, "ratings", 1);
    } else if (strcmp(t, "order.created") == 0) {
        const Hospitality__Events__V1__OrderCreated *o = (const void *)payload;
        if (!gm_valid_guest(o->guest_id))
            return 0;
        if ((rc = apply_rules(&c, t, o->guest_id, hm_arena_printf(arena, "order:%s", o->order_id),
                              o->total ? o->total->amount_minor : 0)) == 0 &&
            (rc = gm_count(&c, o->guest_id, "orders", 1)) == 0 &&
            (rc = seen(&c, o->guest_id, "venue", o->venue_id, "distinct_venues")) == 0)
            rc = seen(&c, o->guest_id, "app", app_name(o->app), "apps_used");
    } else if (strcmp(t, "marketplace.purchase.completed") == 0) {
        const Hospitality__Events__V1__MarketplacePurchaseCompleted *m = (const void *)payload;
        if (!gm_valid_guest(m->guest_id))
            return 0;
        if ((rc = apply_rules(&c, t, m->guest_id,
                              hm_arena_printf(arena, "purchase:%s", m->purchase_id),
                              m->total ? m->total->amount_minor : 0)) == 0 &&
            (rc = gm_count(&c, m->guest_id, "purchases", 1)) == 0)
            rc = seen(&c, m->guest_id, "app", "APP_MARKETPLACE", "apps_used");
    } else if (strcmp(t, "guest.interaction.recorded") == 0) {
        const Hospitality__Events__V1__GuestInteractionRecorded *g = (const void *)payload;
        if (!gm_valid_guest(g->guest_id))
            return 0;
        rc = seen(&c, g->guest_id, "app", app_name(g->app), "apps_used");
    }
    return rc;
}

/* ---- activity and streaks ---- */

static const hm_stmt_t st_streak = {
    "gm_streak",
    "SELECT started, current_days, longest_days, to_char(start_day, 'YYYY-MM-DD'), "
    "to_char(last_day, 'YYYY-MM-DD'), grace_used FROM gm_streak($1::uuid, "
    "(to_timestamp($2::bigint / 1000000.0) AT TIME ZONE $3)::date, $4::boolean)",
    4};
static const hm_stmt_t st_tz = {"gm_tz",
                                "SELECT time_zone FROM gm_accounts WHERE guest_id = $1::uuid", 1};
static const hm_stmt_t st_tz_valid = {"gm_tz_valid",
                                      "SELECT 1 FROM pg_timezone_names WHERE name = $1", 1};

static Hospitality__Common__V1__Date *date_of(hm_arena_t *a, const char *s)
{
    if (!s || !*s)
        return NULL;
    Hospitality__Common__V1__Date *d = hm_arena_alloc(a, sizeof *d);
    hospitality__common__v1__date__init(d);
    sscanf(s, "%d-%d-%d", &d->year, &d->month, &d->day);
    return d;
}

typedef struct activity_tx {
    gm_ctx_t ctx;
    const Hospitality__Gamification__V1__RecordActivityRequest *req;
    int64_t at_us;
    Hospitality__Gamification__V1__StreakState *streak;
    const char *award_txn;
} activity_tx_t;

static int activity_in_tx(hm_db_t *db, void *arg)
{
    activity_tx_t *t = arg;
    gm_ctx_t *c = &t->ctx;
    const char *g = t->req->guest_id;
    c->db = db;
    int rc = gm_ensure_account(c, g, t->req->time_zone);
    const char *p1[1] = {g};
    PGresult *r;
    if (rc != 0 || (rc = hm_db_exec_arena(db, c->arena, &st_tz, p1, NULL, NULL, &r)) != 0)
        return rc;
    const char *tz = hm_arena_strdup(c->arena, gm_str(r, 0, 0));
    const char *p[4] = {g, gm_param_i64(c->arena, t->at_us), tz, gm_cfg.streak_grace ? "t" : "f"};
    if ((rc = hm_db_exec_arena(db, c->arena, &st_streak, p, NULL, NULL, &r)) != 0)
        return rc;
    Hospitality__Gamification__V1__StreakState *s = hm_arena_alloc(c->arena, sizeof *s);
    hospitality__gamification__v1__streak_state__init(s);
    s->started = strcmp(gm_str(r, 0, 0), "t") == 0;
    s->current_days = (int)gm_i64(r, 0, 1);
    s->longest_days = (int)gm_i64(r, 0, 2);
    s->started_on = date_of(c->arena, gm_str(r, 0, 3));
    s->last_active_day = date_of(c->arena, gm_str(r, 0, 4));
    s->grace_used = strcmp(gm_str(r, 0, 5), "t") == 0;
    t->streak = s;
    if ((rc = gm_count(c, g, "streak_days", 0)) != 0 ||
        (rc = seen(c, g, "app", app_name(t->req->app), "apps_used")) != 0)
        return rc;
    if (s->started) {
        Hospitality__Events__V1__GamificationStreakStarted ev =
            HOSPITALITY__EVENTS__V1__GAMIFICATION_STREAK_STARTED__INIT;
        ev.guest_id = (char *)g;
        ev.start_day = s->started_on;
        ev.longest_streak_days = s->longest_days;
        if ((rc = gm_emit(c, "gamification.streak.started", g, &ev.base)) != 0)
            return rc;
    }
    if (t->req->activity == HOSPITALITY__GAMIFICATION__V1__ACTIVITY_TYPE__ACTIVITY_TYPE_LOGIN) {
        /* the daily-login rule, once per local day */
        const char *ref = hm_arena_printf(c->arena, "login:%04d-%02d-%02d",
                                          s->last_active_day ? s->last_active_day->year : 0,
                                          s->last_active_day ? s->last_active_day->month : 0,
                                          s->last_active_day ? s->last_active_day->day : 0);
        if ((rc = gm_count(c, g, "logins", 1)) != 0 ||
            (rc = apply_rules(c, "activity.login", g, ref, 0)) != 0)
            return rc;
    }
    return 0;
}

GM_HANDLER(gm_record_activity)
{
    const Hospitality__Gamification__V1__RecordActivityRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->activity == 0 ||
        !protobuf_c_enum_descriptor_get_value(
            &hospitality__gamification__v1__activity_type__descriptor, req->activity))
        return hm_call_invalid(call, "activity", "an activity type is required");
    if (req->time_zone[0]) {
        const char *p[1] = {req->time_zone};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, &call->arena, &st_tz_valid, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "check time zone");
        if (PQntuples(r) == 0)
            return hm_call_invalid(call, "time_zone", "not an IANA time zone name");
    }
    activity_tx_t t = {.ctx = {.call = call, .arena = &call->arena}, .req = req};
    t.at_us = req->occurred_at ? hm_timestamp_to_us(req->occurred_at) : hm_now_ms() * 1000;
    int rc = hm_db_tx(call->db, activity_in_tx, &t, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "record activity");
    gm_board_refresh(call->db, call->cache, &call->arena, req->guest_id);
    Hospitality__Gamification__V1__RecordActivityResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__record_activity_response__init(resp);
    resp->streak = t.streak;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- achievements ---- */

static const hm_stmt_t st_achievements = {
    "gm_achievements",
    "SELECT achievement_id, name, description, counter, tiers::text, icon, hidden, active FROM "
    "gm_achievements WHERE active OR $1::boolean ORDER BY achievement_id",
    1};
static const hm_stmt_t st_progress_of = {
    "gm_progress_of",
    "SELECT a.achievement_id, coalesce(c.value, 0), t.tier, t.threshold, " TS(
        "u.unlocked_at") " "
                         "FROM gm_achievements a CROSS JOIN LATERAL jsonb_to_recordset(a.tiers) AS "
                         "t(tier int, "
                         "threshold bigint) LEFT JOIN gm_counters c ON c.guest_id = $1::uuid AND "
                         "c.counter = a.counter "
                         "LEFT JOIN gm_unlocks u ON u.guest_id = $1::uuid AND u.achievement_id = "
                         "a.achievement_id AND "
                         "u.tier = t.tier WHERE a.active AND ($2 = '' OR a.achievement_id = $2) "
                         "ORDER BY a.achievement_id, t.threshold",
    2};

/* Parses tiers JSON written by the migration: [{"tier":1,"threshold":1,"points":50,"xp":50}]. */
static void parse_tiers(hm_arena_t *a, const char *json,
                        Hospitality__Gamification__V1__Achievement *m)
{
    size_t cap = 8;
    m->tiers = hm_arena_alloc(a, cap * sizeof *m->tiers);
    for (const char *p = strstr(json, "{"); p && m->n_tiers < cap; p = strstr(p + 1, "{")) {
        Hospitality__Gamification__V1__AchievementTierRule *t = hm_arena_alloc(a, sizeof *t);
        hospitality__gamification__v1__achievement_tier_rule__init(t);
        const char *f;
        if ((f = strstr(p, "\"tier\": ")))
            t->tier = atoi(f + 8);
        if ((f = strstr(p, "\"threshold\": ")))
            t->threshold = atoll(f + 13);
        if ((f = strstr(p, "\"points\": ")))
            t->points_reward = atoll(f + 10);
        if ((f = strstr(p, "\"xp\": ")))
            t->xp_reward = atoll(f + 6);
        m->tiers[m->n_tiers++] = t;
    }
}

static int load_progress(hm_call_t *call, const char *guest, const char *only,
                         Hospitality__Gamification__V1__AchievementProgress ***outp, size_t *n)
{
    const char *p[2] = {guest, only};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_progress_of, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    int rows = PQntuples(r);
    Hospitality__Gamification__V1__AchievementProgress **v =
        hm_arena_alloc(&call->arena, (size_t)(rows + 1) * sizeof *v);
    Hospitality__Gamification__V1__AchievementProgress *cur = NULL;
    *n = 0;
    for (int i = 0; i < rows; i++) {
        const char *id = gm_str(r, i, 0);
        if (!cur || strcmp(cur->achievement_id, id) != 0) {
            cur = hm_arena_alloc(&call->arena, sizeof *cur);
            hospitality__gamification__v1__achievement_progress__init(cur);
            cur->achievement_id = hm_arena_strdup(&call->arena, id);
            cur->guest_id = (char *)guest;
            cur->current_value = gm_i64(r, i, 1);
            cur->unlocked = hm_arena_alloc(&call->arena, 8 * sizeof *cur->unlocked);
            v[(*n)++] = cur;
        }
        int tier = (int)gm_i64(r, i, 2);
        if (*gm_str(r, i, 4)) {
            Hospitality__Gamification__V1__UnlockedTier *u =
                hm_arena_alloc(&call->arena, sizeof *u);
            hospitality__gamification__v1__unlocked_tier__init(u);
            u->tier = tier;
            u->unlocked_at = gm_ts(&call->arena, r, i, 4);
            if (cur->n_unlocked < 8)
                cur->unlocked[cur->n_unlocked++] = u;
            cur->current_tier = tier;
        } else if (!cur->next_tier) {
            cur->next_tier = tier;
            cur->next_threshold = gm_i64(r, i, 3);
        }
    }
    *outp = v;
    return 0;
}

GM_HANDLER(gm_list_achievements)
{
    const Hospitality__Gamification__V1__ListAchievementsRequest *req = (const void *)in;
    if (req->guest_id[0] && !gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    const char *p[1] = {req->include_inactive ? "t" : "f"};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_achievements, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list achievements");
    Hospitality__Gamification__V1__ListAchievementsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__list_achievements_response__init(resp);
    resp->n_achievements = (size_t)PQntuples(r);
    resp->achievements = hm_arena_alloc(&call->arena, (resp->n_achievements + 1) * sizeof(void *));
    for (int i = 0; i < PQntuples(r); i++) {
        Hospitality__Gamification__V1__Achievement *a = hm_arena_alloc(&call->arena, sizeof *a);
        hospitality__gamification__v1__achievement__init(a);
        a->achievement_id = hm_arena_strdup(&call->arena, gm_str(r, i, 0));
        a->name = hm_arena_strdup(&call->arena, gm_str(r, i, 1));
        a->description = hm_arena_strdup(&call->arena, gm_str(r, i, 2));
        Hospitality__Gamification__V1__AchievementCriteria *cr =
            hm_arena_alloc(&call->arena, sizeof *cr);
        hospitality__gamification__v1__achievement_criteria__init(cr);
        cr->counter = hm_arena_strdup(&call->arena, gm_str(r, i, 3));
        a->criteria = cr;
        parse_tiers(&call->arena, gm_str(r, i, 4), a);
        a->icon = hm_arena_strdup(&call->arena, gm_str(r, i, 5));
        a->hidden = strcmp(gm_str(r, i, 6), "t") == 0;
        a->active = strcmp(gm_str(r, i, 7), "t") == 0;
        resp->achievements[i] = a;
    }
    if (req->guest_id[0] &&
        (rc = load_progress(call, req->guest_id, "", &resp->progress, &resp->n_progress)) != 0)
        return hm_call_fail(call, rc, "achievement progress");
    *out = &resp->base;
    return HM_STATUS_OK;
}

GM_HANDLER(gm_get_achievement_progress)
{
    const Hospitality__Gamification__V1__GetAchievementProgressRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    Hospitality__Gamification__V1__GetAchievementProgressResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__get_achievement_progress_response__init(resp);
    int rc =
        load_progress(call, req->guest_id, req->achievement_id, &resp->progress, &resp->n_progress);
    if (rc != 0)
        return hm_call_fail(call, rc, "achievement progress");
    if (req->achievement_id[0] && resp->n_progress == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no achievement %s",
                             req->achievement_id);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- challenges ---- */

#define CH_COLS                                                                                    \
    "c.challenge_id, c.name, c.description, c.period, " TS("c.starts_at") ", " TS(                 \
        "c.ends_at") ", c.counter, c.target, c.reward_points, c.max_winners, "                     \
                     "(SELECT count(*) FROM gm_participants p WHERE p.challenge_id = "             \
                     "c.challenge_id), (SELECT count(*) FROM gm_participants p WHERE "             \
                     "p.challenge_id = c.challenge_id AND p.winner), CASE WHEN now() < "           \
                     "c.starts_at THEN 1 WHEN now() < c.ends_at THEN 2 ELSE 3 END"

static const hm_stmt_t st_challenges = {
    "gm_challenges",
    "SELECT " CH_COLS ", EXISTS (SELECT 1 FROM gm_participants p WHERE p.challenge_id = "
    "c.challenge_id AND p.guest_id::text = $1) FROM gm_challenges c WHERE ($2::smallint = 0 OR "
    "c.period = $2::smallint) ORDER BY c.starts_at DESC, c.challenge_id LIMIT 200",
    2};

static Hospitality__Gamification__V1__Challenge *challenge_row(hm_arena_t *a, const PGresult *r,
                                                               int i)
{
    Hospitality__Gamification__V1__Challenge *c = hm_arena_alloc(a, sizeof *c);
    hospitality__gamification__v1__challenge__init(c);
    c->challenge_id = hm_arena_strdup(a, gm_str(r, i, 0));
    c->name = hm_arena_strdup(a, gm_str(r, i, 1));
    c->description = hm_arena_strdup(a, gm_str(r, i, 2));
    c->period = (int)gm_i64(r, i, 3);
    c->starts_at = gm_ts(a, r, i, 4);
    c->ends_at = gm_ts(a, r, i, 5);
    c->counter = hm_arena_strdup(a, gm_str(r, i, 6));
    c->target = gm_i64(r, i, 7);
    Hospitality__Gamification__V1__ChallengeReward *rw = hm_arena_alloc(a, sizeof *rw);
    hospitality__gamification__v1__challenge_reward__init(rw);
    rw->points = gm_i64(r, i, 8);
    c->reward = rw;
    c->max_winners = (int)gm_i64(r, i, 9);
    c->participant_count = (int)gm_i64(r, i, 10);
    c->winner_count = (int)gm_i64(r, i, 11);
    c->status = (int)gm_i64(r, i, 12);
    return c;
}

GM_HANDLER(gm_list_challenges)
{
    const Hospitality__Gamification__V1__ListChallengesRequest *req = (const void *)in;
    const char *p[2] = {req->guest_id, gm_param_i64(&call->arena, req->period)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_challenges, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list challenges");
    Hospitality__Gamification__V1__ListChallengesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__list_challenges_response__init(resp);
    int n = PQntuples(r);
    resp->challenges = hm_arena_alloc(&call->arena, (size_t)(n + 1) * sizeof(void *));
    resp->joined_challenge_ids = hm_arena_alloc(&call->arena, (size_t)(n + 1) * sizeof(char *));
    for (int i = 0; i < n; i++) {
        Hospitality__Gamification__V1__Challenge *c = challenge_row(&call->arena, r, i);
        bool keep = req->n_statuses == 0;
        for (size_t k = 0; k < req->n_statuses; k++)
            keep = keep || (int)req->statuses[k] == (int)c->status;
        if (!keep)
            continue;
        resp->challenges[resp->n_challenges++] = c;
        if (strcmp(gm_str(r, i, 13), "t") == 0)
            resp->joined_challenge_ids[resp->n_joined_challenge_ids++] = c->challenge_id;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_join = {
    "gm_join",
    "INSERT INTO gm_participants (challenge_id, guest_id) SELECT challenge_id, $2::uuid FROM "
    "gm_challenges WHERE challenge_id = $1 AND now() < ends_at ON CONFLICT DO NOTHING",
    2};
static const hm_stmt_t st_part = {
    "gm_part",
    "SELECT p.progress, c.target, p.completed_at IS NOT NULL, p.winner, coalesce(p.rank, 0), " TS(
        "p.joined_at") ", " TS("p.completed_at") ", now() < c.ends_at FROM gm_participants p JOIN "
                                                 "gm_challenges c USING (challenge_id) WHERE "
                                                 "p.challenge_id = $1 AND p.guest_id = $2::uuid",
    2};
static const hm_stmt_t st_ch_exists = {
    "gm_ch_exists", "SELECT now() < ends_at FROM gm_challenges WHERE challenge_id = $1", 1};

static hm_status_t progress_resp(hm_call_t *call, const char *ch, const char *guest,
                                 Hospitality__Gamification__V1__ChallengeProgress **outp)
{
    const char *p[2] = {ch, guest};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_part, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "challenge progress");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_JOINED",
                             "the guest has not joined challenge %s", ch);
    Hospitality__Gamification__V1__ChallengeProgress *pr = hm_arena_alloc(&call->arena, sizeof *pr);
    hospitality__gamification__v1__challenge_progress__init(pr);
    pr->challenge_id = (char *)ch;
    pr->guest_id = (char *)guest;
    pr->current = gm_i64(r, 0, 0);
    pr->target = gm_i64(r, 0, 1);
    pr->completed = strcmp(gm_str(r, 0, 2), "t") == 0;
    pr->winner = strcmp(gm_str(r, 0, 3), "t") == 0;
    pr->rank = (int)gm_i64(r, 0, 4);
    pr->joined_at = gm_ts(&call->arena, r, 0, 5);
    pr->completed_at = gm_ts(&call->arena, r, 0, 6);
    *outp = pr;
    return HM_STATUS_OK;
}

GM_HANDLER(gm_join_challenge)
{
    const Hospitality__Gamification__V1__JoinChallengeRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    const char *p[2] = {req->challenge_id, req->guest_id};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_ch_exists, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "join challenge");
    if (PQntuples(r) == 0)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no challenge %s",
                             req->challenge_id);
    if (strcmp(gm_str(r, 0, 0), "t") != 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "CHALLENGE_ENDED",
                             "challenge %s has ended", req->challenge_id);
    gm_ctx_t c = {.call = call, .db = call->db, .arena = &call->arena};
    if ((rc = gm_ensure_account(&c, req->guest_id, NULL)) != 0 ||
        (rc = hm_db_exec(call->db, &st_join, p, NULL, NULL, NULL)) != 0)
        return hm_call_fail(call, rc, "join challenge");
    Hospitality__Gamification__V1__JoinChallengeResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__join_challenge_response__init(resp);
    hm_status_t st = progress_resp(call, req->challenge_id, req->guest_id, &resp->progress);
    if (st.code == HM_CODE_OK)
        *out = &resp->base;
    return st;
}

GM_HANDLER(gm_get_challenge_progress)
{
    const Hospitality__Gamification__V1__GetChallengeProgressRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    Hospitality__Gamification__V1__GetChallengeProgressResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__get_challenge_progress_response__init(resp);
    hm_status_t st = progress_resp(call, req->challenge_id, req->guest_id, &resp->progress);
    if (st.code == HM_CODE_OK)
        *out = &resp->base;
    return st;
}

/* Keeps this week's and this month's default cross-app challenges (UTC windows). */
static const hm_stmt_t st_default_challenges = {
    "gm_default_challenges",
    "INSERT INTO gm_challenges (challenge_id, name, description, period, starts_at, ends_at, "
    "counter, target, reward_points, max_winners) VALUES "
    "('weekly-bookings-' || to_char(now() AT TIME ZONE 'UTC', 'IYYY-\"W\"IW'), 'Two tables this "
    "week', 'Complete two bookings this week', 1, date_trunc('week', now() AT TIME ZONE 'UTC') AT "
    "TIME ZONE 'UTC', (date_trunc('week', now() AT TIME ZONE 'UTC') + interval '7 days') AT TIME "
    "ZONE 'UTC', 'bookings_completed', 2, 150, 100), "
    "('monthly-explorer-' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM'), 'Explorer of the "
    "month', 'Order or book at three venues this month', 2, date_trunc('month', now() AT TIME "
    "ZONE 'UTC') AT TIME ZONE 'UTC', (date_trunc('month', now() AT TIME ZONE 'UTC') + interval "
    "'1 month') AT TIME ZONE 'UTC', 'distinct_venues', 3, 300, 0) ON CONFLICT DO NOTHING",
    0};

int gm_task_challenges(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)arena;
    (void)app;
    return hm_db_exec(db, &st_default_challenges, NULL, NULL, NULL, NULL);
}

static const hm_stmt_t st_release = {"gm_release", "SELECT gm_release_due(500)", 0};
static const hm_stmt_t st_expire = {"gm_expire", "SELECT gm_expire_due(500)", 0};

int gm_task_release_expire(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)arena;
    (void)app;
    int rc = hm_db_exec(db, &st_release, NULL, NULL, NULL, NULL);
    return rc ? rc : hm_db_exec(db, &st_expire, NULL, NULL, NULL, NULL);
}

/* ---- rules RPCs ---- */

#define RULE_COLS                                                                                  \
    "rule_id, event_type, description, source, calculation, points, amount_step, currency, xp, "   \
    "coalesce(multiplier, 0), " TS("mult_start") ", " TS(                                          \
        "mult_end") ", daily_cap, weekly_cap, "                                                    \
                    "pending_ms, lifetime_ms, active, version, " TS("updated_at") ", updated_by"

static const hm_stmt_t st_list_rules = {
    "gm_list_rules",
    "SELECT " RULE_COLS " FROM gm_rules WHERE ($1 = '' OR event_type = $1) AND (active OR "
    "$2::boolean) ORDER BY rule_id",
    2};
static const hm_stmt_t st_upsert_rule = {
    "gm_upsert_rule",
    "WITH cur AS (SELECT version FROM gm_rules WHERE rule_id = $1 FOR UPDATE) "
    "INSERT INTO gm_rules AS r (rule_id, event_type, description, source, calculation, points, "
    "amount_step, currency, xp, multiplier, mult_start, mult_end, daily_cap, weekly_cap, "
    "pending_ms, lifetime_ms, active, version, updated_by) SELECT $1, $2, $3, $4::smallint, "
    "$5::smallint, $6::bigint, $7::bigint, $8, $9::bigint, nullif($10::int, 0), "
    "to_timestamp(nullif($11::bigint, 0) / 1000000.0), to_timestamp(nullif($12::bigint, 0) / "
    "1000000.0), $13::bigint, $14::bigint, $15::bigint, $16::bigint, $17::boolean, 1, $19 "
    "WHERE $18::bigint = coalesce((SELECT version FROM cur), 0) "
    "ON CONFLICT (rule_id) DO UPDATE SET event_type = EXCLUDED.event_type, description = "
    "EXCLUDED.description, source = EXCLUDED.source, calculation = EXCLUDED.calculation, points = "
    "EXCLUDED.points, amount_step = EXCLUDED.amount_step, currency = EXCLUDED.currency, xp = "
    "EXCLUDED.xp, multiplier = EXCLUDED.multiplier, mult_start = EXCLUDED.mult_start, mult_end = "
    "EXCLUDED.mult_end, daily_cap = EXCLUDED.daily_cap, weekly_cap = EXCLUDED.weekly_cap, "
    "pending_ms = EXCLUDED.pending_ms, lifetime_ms = EXCLUDED.lifetime_ms, active = "
    "EXCLUDED.active, version = r.version + 1, updated_at = now(), updated_by = "
    "EXCLUDED.updated_by RETURNING " RULE_COLS,
    19};
static const hm_stmt_t st_rule_version = {
    "gm_rule_version",
    "INSERT INTO gm_rule_versions (rule_id, version, definition, changed_by) SELECT rule_id, "
    "version, to_jsonb(r) - 'updated_at', $2 FROM gm_rules r WHERE rule_id = $1",
    2};

static Hospitality__Gamification__V1__Rule *rule_row(hm_arena_t *a, const PGresult *r, int i)
{
    Hospitality__Gamification__V1__Rule *x = hm_arena_alloc(a, sizeof *x);
    hospitality__gamification__v1__rule__init(x);
    x->rule_id = hm_arena_strdup(a, gm_str(r, i, 0));
    x->event_type = hm_arena_strdup(a, gm_str(r, i, 1));
    x->description = hm_arena_strdup(a, gm_str(r, i, 2));
    x->source = (int)gm_i64(r, i, 3);
    x->calculation = (int)gm_i64(r, i, 4);
    x->points = gm_i64(r, i, 5);
    if (gm_i64(r, i, 6)) {
        Hospitality__Common__V1__Money *m = hm_arena_alloc(a, sizeof *m);
        hospitality__common__v1__money__init(m);
        m->amount_minor = gm_i64(r, i, 6);
        m->currency = hm_arena_strdup(a, gm_str(r, i, 7));
        x->amount_step = m;
    }
    x->xp = gm_i64(r, i, 8);
    if (gm_i64(r, i, 9)) {
        Google__Protobuf__Int32Value *v = hm_arena_alloc(a, sizeof *v);
        google__protobuf__int32_value__init(v);
        v->value = (int32_t)gm_i64(r, i, 9);
        x->multiplier_percent = v;
        Hospitality__Common__V1__TimeRange *w = hm_arena_alloc(a, sizeof *w);
        hospitality__common__v1__time_range__init(w);
        w->start_time = gm_ts(a, r, i, 10);
        w->end_time = gm_ts(a, r, i, 11);
        x->multiplier_window = w;
    }
    x->daily_cap = gm_i64(r, i, 12);
    x->weekly_cap = gm_i64(r, i, 13);
    if (gm_i64(r, i, 14)) {
        Google__Protobuf__Duration *d = hm_arena_alloc(a, sizeof *d);
        google__protobuf__duration__init(d);
        d->seconds = gm_i64(r, i, 14) / 1000;
        x->pending_period = d;
    }
    if (gm_i64(r, i, 15)) {
        Google__Protobuf__Duration *d = hm_arena_alloc(a, sizeof *d);
        google__protobuf__duration__init(d);
        d->seconds = gm_i64(r, i, 15) / 1000;
        x->points_lifetime = d;
    }
    x->active = strcmp(gm_str(r, i, 16), "t") == 0;
    x->version = gm_i64(r, i, 17);
    x->updated_at = gm_ts(a, r, i, 18);
    return x;
}

GM_HANDLER(gm_list_rules)
{
    const Hospitality__Gamification__V1__ListRulesRequest *req = (const void *)in;
    const char *p[2] = {req->event_type, req->include_inactive ? "t" : "f"};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_list_rules, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list rules");
    Hospitality__Gamification__V1__ListRulesResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__gamification__v1__list_rules_response__init(resp);
    resp->n_rules = (size_t)PQntuples(r);
    resp->rules = hm_arena_alloc(&call->arena, (resp->n_rules + 1) * sizeof(void *));
    for (size_t i = 0; i < resp->n_rules; i++)
        resp->rules[i] = rule_row(&call->arena, r, (int)i);
    *out = &resp->base;
    return HM_STATUS_OK;
}

typedef struct rule_tx {
    const char *const *params;
    hm_arena_t *arena;
    PGresult *row;
    const char *actor;
} rule_tx_t;

static int rule_in_tx(hm_db_t *db, void *arg)
{
    rule_tx_t *t = arg;
    int rc = hm_db_exec_arena(db, t->arena, &st_upsert_rule, t->params, NULL, NULL, &t->row);
    if (rc != 0 || PQntuples(t->row) == 0)
        return rc ? rc : HM_ECONFLICT;
    const char *p[2] = {t->params[0], t->actor};
    return hm_db_exec(db, &st_rule_version, p, NULL, NULL, NULL);
}

GM_HANDLER(gm_upsert_rule)
{
    const Hospitality__Gamification__V1__UpsertRuleRequest *req = (const void *)in;
    const Hospitality__Gamification__V1__Rule *x = req->rule;
    if (!x)
        return hm_call_invalid(call, "rule", "rule is required");
    if (!hm_str_is_token(x->rule_id, strlen(x->rule_id), 64))
        return hm_call_invalid(call, "rule.rule_id", "a short token ([A-Za-z0-9._-])");
    if (!x->event_type[0] || strlen(x->event_type) > 100)
        return hm_call_invalid(call, "rule.event_type", "event_type is required");
    if (x->points < 0 || x->points > 1000000)
        return hm_call_invalid(call, "rule.points", "between 0 and 1000000");
    if (x->calculation == 2 && (!x->amount_step || x->amount_step->amount_minor <= 0))
        return hm_call_invalid(call, "rule.amount_step", "per-amount rules need a positive step");
    if (x->daily_cap < 0 || x->weekly_cap < 0)
        return hm_call_invalid(call, "rule.daily_cap", "caps cannot be negative");
    hm_arena_t *a = &call->arena;
    int mult = x->multiplier_percent ? x->multiplier_percent->value : 0;
    if (mult < 0 || mult > 1000)
        return hm_call_invalid(call, "rule.multiplier_percent", "between 0 and 1000");
    const char *p[19] = {
        x->rule_id,
        x->event_type,
        x->description,
        gm_param_i64(a, x->source),
        gm_param_i64(a, x->calculation ? x->calculation : 1),
        gm_param_i64(a, x->points),
        gm_param_i64(a, x->amount_step ? x->amount_step->amount_minor : 0),
        x->amount_step ? x->amount_step->currency : "",
        gm_param_i64(a, x->xp),
        gm_param_i64(a, mult),
        gm_param_i64(a, x->multiplier_window ? hm_timestamp_to_us(x->multiplier_window->start_time)
                                             : 0),
        gm_param_i64(a,
                     x->multiplier_window ? hm_timestamp_to_us(x->multiplier_window->end_time) : 0),
        gm_param_i64(a, x->daily_cap),
        gm_param_i64(a, x->weekly_cap),
        gm_param_i64(a, x->pending_period ? x->pending_period->seconds * 1000 : 0),
        gm_param_i64(a, x->points_lifetime ? x->points_lifetime->seconds * 1000 : 0),
        x->active ? "t" : "f",
        gm_param_i64(a, req->expected_version),
        call->principal ? call->principal->subject : "unknown"};
    rule_tx_t t = {p, a, NULL, p[18]};
    int rc = hm_db_tx(call->db, rule_in_tx, &t, HM_DB_READ_COMMITTED);
    if (rc == HM_ECONFLICT)
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_MISMATCH",
                             "rule %s is not at version %lld", x->rule_id,
                             (long long)req->expected_version);
    if (rc != 0)
        return hm_call_fail(call, rc, "upsert rule");
    Hospitality__Gamification__V1__UpsertRuleResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__gamification__v1__upsert_rule_response__init(resp);
    resp->rule = rule_row(a, t.row, 0);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- DataSubjectService ---- */

static const struct {
    const char *section;
    int category;
    hm_stmt_t st; /* static: the connection remembers prepared statements by address */
} sections[] = {
#define CAT_POINTS HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_POINTS
#define JSON_OF(alias, table, order)                                                               \
    "SELECT coalesce(json_agg(row_to_json(" alias ")" order "), '[]')::text, count(*) FROM " table \
    " " alias " WHERE guest_id = $1::uuid"
    {"points_account", CAT_POINTS, {"gm_x_account", JSON_OF("a", "gm_accounts", ""), 1}},
    {"points_transactions",
     CAT_POINTS,
     {"gm_x_txns", JSON_OF("t", "gm_transactions", " ORDER BY created_at"), 1}},
    {"achievements", CAT_POINTS, {"gm_x_unlocks", JSON_OF("u", "gm_unlocks", ""), 1}},
    {"challenges", CAT_POINTS, {"gm_x_challenges", JSON_OF("p", "gm_participants", ""), 1}},
    {"counters", CAT_POINTS, {"gm_x_counters", JSON_OF("c", "gm_counters", ""), 1}},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

GM_HANDLER(gm_export_subject)
{
    const Hospitality__Privacy__V1__ExportSubjectDataRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    bool want = req->n_categories == 0;
    for (size_t i = 0; i < req->n_categories; i++)
        want = want ||
               req->categories[i] == HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_POINTS;
    Hospitality__Privacy__V1__ExportSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__export_subject_data_response__init(resp);
    resp->participant = "gamificationd";
    resp->exported_at = hm_timestamp_from_us(&call->arena, hm_now_ms() * 1000);
    resp->sections = hm_arena_alloc(&call->arena, NSECTIONS * sizeof(void *));
    for (size_t i = 0; want && i < NSECTIONS; i++) {
        const char *p[1] = {req->guest_id};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, &call->arena, &sections[i].st, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "export");
        Hospitality__Privacy__V1__DataSection *s = hm_arena_alloc(&call->arena, sizeof *s);
        hospitality__privacy__v1__data_section__init(s);
        s->section = (char *)sections[i].section;
        s->category = sections[i].category;
        s->records_json = hm_arena_strdup(&call->arena, gm_str(r, 0, 0));
        s->record_count = gm_i64(r, 0, 1);
        resp->sections[resp->n_sections++] = s;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

static const hm_stmt_t st_erase = {
    "gm_erase",
    "WITH t AS (SELECT count(*) AS n FROM gm_transactions WHERE guest_id = $1::uuid), "
    "u AS (SELECT count(*) AS n FROM gm_unlocks WHERE guest_id = $1::uuid), "
    "p AS (SELECT count(*) AS n FROM gm_participants WHERE guest_id = $1::uuid), "
    "d AS (DELETE FROM gm_accounts WHERE guest_id = $1::uuid RETURNING 1) "
    "SELECT (SELECT count(*) FROM d), t.n, u.n, p.n FROM t, u, p",
    1};

GM_HANDLER(gm_erase_subject)
{
    const Hospitality__Privacy__V1__EraseSubjectDataRequest *req = (const void *)in;
    if (!gm_valid_guest(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    const char *p[1] = {req->guest_id};
    PGresult *r;
    /* One statement: the account and, by cascade, its ledger, lots, counters, unlocks and
     * challenge entries (points are not money here: nothing is kept for accounting). */
    int rc = hm_db_exec_arena(call->db, &call->arena, &st_erase, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "erase");
    if (gm_board_forget(call->cache, &call->arena, req->guest_id) != 0)
        return hm_call_fail(call, HM_EUNAVAIL, "erase leaderboard entries");
    static const char *names[] = {"points_account", "points_transactions", "achievements",
                                  "challenges"};
    Hospitality__Privacy__V1__ErasureReceipt *rc_ = hm_arena_alloc(&call->arena, sizeof *rc_);
    hospitality__privacy__v1__erasure_receipt__init(rc_);
    rc_->receipt_id = hm_arena_alloc(&call->arena, HM_UUID_LEN + 1);
    hm_uuid_v4(rc_->receipt_id);
    rc_->request_id = req->request_id;
    rc_->guest_id = req->guest_id;
    rc_->participant = "gamificationd";
    rc_->deleted = hm_arena_alloc(&call->arena, 4 * sizeof(void *));
    for (int i = 0; i < 4; i++) {
        Hospitality__Privacy__V1__SectionCount *sc = hm_arena_alloc(&call->arena, sizeof *sc);
        hospitality__privacy__v1__section_count__init(sc);
        sc->section = (char *)names[i];
        sc->category = HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_POINTS;
        sc->count = gm_i64(r, 0, i);
        rc_->deleted[rc_->n_deleted++] = sc;
    }
    rc_->completed_at = hm_timestamp_from_us(&call->arena, hm_now_ms() * 1000);
    Hospitality__Privacy__V1__EraseSubjectDataResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__privacy__v1__erase_subject_data_response__init(resp);
    resp->receipt = rc_;
    *out = &resp->base;
    return HM_STATUS_OK;
}
