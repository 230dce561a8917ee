/*
 * context.c - behaviour signals, segments and the personalization context.
 *
 * Signals are maintained incrementally by the interactions trigger (migration 003); windowed
 * counts (30/90 days) are read from the (guest, occurred_at) index. Segments come from the
 * declarative rules in segment_rules, re-evaluated when signals change and, for rules that
 * depend on the passage of time (new, lapsed), by a periodic task.
 *
 * GetPersonalizationContext is cached in Redis under a key that carries the guest's
 * ctx_version, which every change to anything the context is built from bumps in the same
 * transaction (triggers and store code), so a cached context can never outlive a change: no
 * invalidation race, and a stale entry is simply never read again (it expires).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/cache.h"
#include "hm/id.h"
#include "hm/log.h"

typedef Hospitality__Guest__V1__PersonalizationContext ctx_t;

static const char *currency(void)
{
    const char *c = getenv("HM_PLATFORM_CURRENCY");
    return c && strlen(c) == 3 ? c : "EUR";
}

static const hm_stmt_t st_guest = {
    "gc_guest",
    "SELECT status, coalesce(merged_into::text, ''), version, ctx_version, language, time_zone, "
    "location_country, (extract(epoch FROM created_at) * 1e6)::bigint, origin_app FROM guests "
    "WHERE guest_id = $1",
    1};
static const hm_stmt_t st_signals = {
    "gc_signals",
    "SELECT (extract(epoch FROM s.last_interaction_at) * 1e6)::bigint, coalesce(floor(extract("
    "epoch FROM now() - s.last_interaction_at) / 86400), 0)::int, (SELECT count(*) FROM "
    "interactions i WHERE i.guest_id = $1 AND i.occurred_at > now() - interval '30 days'), "
    "(SELECT count(*) FROM interactions i WHERE i.guest_id = $1 AND i.occurred_at > now() - "
    "interval '90 days'), coalesce(s.bookings_completed, 0), coalesce(s.bookings_cancelled, 0), "
    "(SELECT coalesce(sum(amount_minor), 0) FROM interactions i WHERE i.guest_id = $1 AND i.type "
    "IN (5, 6, 13) AND i.occurred_at > now() - interval '90 days'), "
    "coalesce(s.lifetime_spend_minor, 0), CASE WHEN coalesce(s.party_size_count, 0) = 0 THEN 0 "
    "ELSE s.party_size_sum::float8 / s.party_size_count END, (extract(epoch FROM "
    "coalesce(s.computed_at, now())) * 1e6)::bigint FROM (SELECT $1::uuid AS guest_id) g LEFT "
    "JOIN guest_signals s USING (guest_id)",
    1};
static const hm_stmt_t st_affinity = {
    "gc_affinity",
    "SELECT category, greatest(s, 0) / greatest(max(s) OVER (), 1e-9), (extract(epoch FROM "
    "last_interaction_at) * 1e6)::bigint FROM (SELECT category, gd_decay(score, score_at, now()) "
    "AS s, last_interaction_at FROM guest_category_affinity WHERE guest_id = $1) a ORDER BY s "
    "DESC, category LIMIT 20",
    1};
static const hm_stmt_t st_times = {
    "gc_times",
    "SELECT day_of_week, hour_of_day, n::float8 / sum(n) OVER () FROM guest_time_slots WHERE "
    "guest_id = $1 ORDER BY n DESC, day_of_week, hour_of_day LIMIT 10",
    1};
static const hm_stmt_t st_segments = {
    "gc_segments",
    "SELECT s.segment_id, r.name, s.reason, s.rule_version, (extract(epoch FROM s.since) * "
    "1e6)::bigint FROM guest_segments s JOIN (SELECT DISTINCT segment_id, name FROM "
    "segment_rules) r USING (segment_id) WHERE s.guest_id = $1 ORDER BY s.segment_id",
    1};
static const hm_stmt_t st_seg_state = {
    "gc_seg_state",
    "SELECT (extract(epoch FROM computed_at) * 1e6)::bigint, computed_at < now() - interval '1 "
    "hour' FROM guest_segment_state WHERE guest_id = $1",
    1};
static const hm_stmt_t st_recompute = {"gc_recompute", "SELECT gd_recompute_segments($1)", 1};
static const hm_stmt_t st_consents = {
    "gc_consents",
    "SELECT purpose, (extract(epoch FROM expires_at) * 1e6)::bigint FROM guest_consents WHERE "
    "guest_id = $1 AND status = 1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY purpose",
    1};
static const hm_stmt_t st_apps = {
    "gc_apps",
    "SELECT app FROM guest_app_profiles WHERE guest_id = $1 UNION SELECT app FROM "
    "guest_identifiers WHERE guest_id = $1 AND app <> 0 UNION SELECT origin_app FROM guests "
    "WHERE guest_id = $1 AND origin_app <> 0 ORDER BY 1",
    1};

/* The guest row; a status for unknown and merged guests. */
static bool load_guest(hm_call_t *call, const char *guest, PGresult **r, hm_status_t *st)
{
    gd_env_t e = gd_env(call);
    int rc = gd_q(&e, &st_guest, r, guest);
    if (rc) {
        *st = hm_call_fail(call, rc, "load guest");
        return false;
    }
    if (PQntuples(*r) == 0) {
        *st = gd_not_found(call, guest);
        return false;
    }
    if (gd_i64(*r, 0, 0) == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED) {
        *st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                            "guest %s was merged into %s; ask for that guest", guest,
                            gd_str(*r, 0, 1));
        return false;
    }
    return true;
}

static Hospitality__Common__V1__Money *money(hm_arena_t *a, int64_t minor)
{
    Hospitality__Common__V1__Money *m = hm_arena_alloc(a, sizeof *m);
    hospitality__common__v1__money__init(m);
    m->amount_minor = minor;
    m->currency = (char *)currency();
    return m;
}

static int load_signals(const gd_env_t *e, const char *guest,
                        Hospitality__Guest__V1__BehaviorSignals **out)
{
    hm_arena_t *a = e->arena;
    PGresult *r;
    int rc = gd_q(e, &st_signals, &r, guest);
    if (rc)
        return rc;
    Hospitality__Guest__V1__BehaviorSignals *s = hm_arena_alloc(a, sizeof *s);
    hospitality__guest__v1__behavior_signals__init(s);
    s->guest_id = (char *)guest;
    s->last_interaction_at = gd_ts(a, r, 0, 0);
    s->days_since_last_interaction = (int32_t)gd_i64(r, 0, 1);
    s->interactions_last_30_days = (int32_t)gd_i64(r, 0, 2);
    s->interactions_last_90_days = (int32_t)gd_i64(r, 0, 3);
    s->bookings_completed = (int32_t)gd_i64(r, 0, 4);
    s->bookings_cancelled = (int32_t)gd_i64(r, 0, 5);
    int64_t settled = s->bookings_completed + s->bookings_cancelled;
    s->cancellation_rate = settled ? (double)s->bookings_cancelled / (double)settled : 0;
    s->spend_last_90_days = money(a, gd_i64(r, 0, 6));
    s->lifetime_spend = money(a, gd_i64(r, 0, 7));
    s->average_party_size = round(gd_f64(r, 0, 8) * 100) / 100;
    s->computed_at = gd_ts(a, r, 0, 9);
    if ((rc = gd_q(e, &st_affinity, &r, guest)) != 0)
        return rc;
    s->category_affinities = hm_arena_alloc(a, sizeof(void *) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++) {
        Hospitality__Guest__V1__CategoryAffinity *c = hm_arena_alloc(a, sizeof *c);
        hospitality__guest__v1__category_affinity__init(c);
        c->category = hm_arena_strdup(a, gd_str(r, i, 0));
        c->score = round(gd_f64(r, i, 1) * 10000) / 10000;
        c->last_interaction_at = gd_ts(a, r, i, 2);
        s->category_affinities[s->n_category_affinities++] = c;
    }
    if ((rc = gd_q(e, &st_times, &r, guest)) != 0)
        return rc;
    s->preferred_times = hm_arena_alloc(a, sizeof(void *) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++) {
        Hospitality__Guest__V1__PreferredTime *t = hm_arena_alloc(a, sizeof *t);
        hospitality__guest__v1__preferred_time__init(t);
        t->day_of_week = (int32_t)gd_i64(r, i, 0);
        t->hour_of_day = (int32_t)gd_i64(r, i, 1);
        t->share = round(gd_f64(r, i, 2) * 10000) / 10000;
        s->preferred_times[s->n_preferred_times++] = t;
    }
    *out = s;
    return 0;
}

static int load_segments(const gd_env_t *e, const char *guest,
                         Hospitality__Guest__V1__Segment ***out, size_t *n,
                         Google__Protobuf__Timestamp **computed)
{
    hm_arena_t *a = e->arena;
    PGresult *r;
    int rc = gd_q(e, &st_seg_state, &r, guest);
    if (rc)
        return rc;
    /* Never computed, or computed long ago (time-dependent rules): evaluate now. */
    if (PQntuples(r) == 0 || gd_bool(r, 0, 1)) {
        if ((rc = gd_q(e, &st_recompute, NULL, guest)) != 0 ||
            (rc = gd_q(e, &st_seg_state, &r, guest)) != 0)
            return rc;
    }
    if (computed)
        *computed = PQntuples(r) ? gd_ts(a, r, 0, 0) : NULL;
    if ((rc = gd_q(e, &st_segments, &r, guest)) != 0)
        return rc;
    *n = 0;
    *out = hm_arena_alloc(a, sizeof(void *) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++) {
        Hospitality__Guest__V1__Segment *s = hm_arena_alloc(a, sizeof *s);
        hospitality__guest__v1__segment__init(s);
        s->segment_id = hm_arena_strdup(a, gd_str(r, i, 0));
        s->name = hm_arena_strdup(a, gd_str(r, i, 1));
        s->reason = hm_arena_strdup(a, gd_str(r, i, 2));
        s->rule_version = hm_arena_strdup(a, gd_str(r, i, 3));
        s->since = gd_ts(a, r, i, 4);
        (*out)[(*n)++] = s;
    }
    return 0;
}

GD_HANDLER(guest_get_segments)
{
    const Hospitality__Guest__V1__GetSegmentsRequest *req = (const void *)in;
    hm_status_t st;
    PGresult *g;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !load_guest(call, req->guest_id, &g, &st))
        return st;
    gd_env_t e = gd_env(call);
    Hospitality__Guest__V1__GetSegmentsResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__get_segments_response__init(resp);
    int rc =
        load_segments(&e, req->guest_id, &resp->segments, &resp->n_segments, &resp->computed_at);
    if (rc)
        return hm_call_fail(call, rc, "load segments");
    *out = &resp->base;
    return HM_STATUS_OK;
}

GD_HANDLER(guest_get_behavior_signals)
{
    const Hospitality__Guest__V1__GetBehaviorSignalsRequest *req = (const void *)in;
    hm_status_t st;
    PGresult *g;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !load_guest(call, req->guest_id, &g, &st))
        return st;
    gd_env_t e = gd_env(call);
    Hospitality__Guest__V1__GetBehaviorSignalsResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__get_behavior_signals_response__init(resp);
    int rc = load_signals(&e, req->guest_id, &resp->signals);
    if (rc)
        return hm_call_fail(call, rc, "load signals");
    *out = &resp->base;
    return HM_STATUS_OK;
}

static void add_feature(hm_arena_t *a, ctx_t *c, const char *name, double w)
{
    for (size_t i = 0; i < c->n_preference_vector; i++)
        if (strcmp(c->preference_vector[i]->feature, name) == 0) {
            double v = c->preference_vector[i]->weight + w;
            c->preference_vector[i]->weight = v > 1 ? 1 : v < -1 ? -1 : v;
            return;
        }
    Hospitality__Guest__V1__FeatureWeight *f = hm_arena_alloc(a, sizeof *f);
    hospitality__guest__v1__feature_weight__init(f);
    f->feature = hm_arena_strdup(a, name);
    f->weight = w > 1 ? 1 : w < -1 ? -1 : w;
    c->preference_vector[c->n_preference_vector++] = f;
}

static int by_weight(const void *x, const void *y)
{
    const Hospitality__Guest__V1__FeatureWeight *a = *(void *const *)x, *b = *(void *const *)y;
    if (a->weight != b->weight)
        return a->weight < b->weight ? 1 : -1;
    return strcmp(a->feature, b->feature);
}

/* Builds the context from Postgres. *ttl_ms: how long it may be cached. */
static int build(hm_call_t *call, const char *guest, const char *venue, const PGresult *g,
                 ctx_t **out, int64_t *ttl_ms)
{
    gd_env_t e = gd_env(call);
    hm_arena_t *a = &call->arena;
    ctx_t *c = hm_arena_alloc(a, sizeof *c);
    hospitality__guest__v1__personalization_context__init(c);
    c->guest_id = (char *)guest;
    c->profile = hm_arena_alloc(a, sizeof *c->profile);
    hospitality__guest__v1__profile_summary__init(c->profile);
    c->profile->status = (Hospitality__Guest__V1__GuestStatus)gd_i64(g, 0, 0);
    c->profile->language = hm_arena_strdup(a, gd_str(g, 0, 4));
    c->profile->time_zone = hm_arena_strdup(a, gd_str(g, 0, 5));
    c->profile->country_code = hm_arena_strdup(a, gd_str(g, 0, 6));
    c->profile->member_since = gd_ts(a, g, 0, 7);
    c->profile_version = gd_i64(g, 0, 2);
    PGresult *r;
    int rc = gd_q(&e, &st_apps, &r, guest);
    if (rc)
        return rc;
    c->profile->apps = hm_arena_alloc(a, sizeof(int) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++)
        c->profile->apps[c->profile->n_apps++] = (Hospitality__Common__V1__App)gd_i64(r, i, 0);
    /* Consent (privacyd's, as projected from guest.consent.updated). */
    if ((rc = gd_q(&e, &st_consents, &r, guest)) != 0)
        return rc;
    *ttl_ms = 300000;
    c->granted_purposes = hm_arena_alloc(a, sizeof(int) * (size_t)(PQntuples(r) + 1));
    for (int i = 0; i < PQntuples(r); i++) {
        int p = (int)gd_i64(r, i, 0);
        c->granted_purposes[c->n_granted_purposes++] = (Hospitality__Common__V1__ConsentPurpose)p;
        if (p == HOSPITALITY__COMMON__V1__CONSENT_PURPOSE__CONSENT_PURPOSE_PERSONALIZATION)
            c->personalization_allowed = true;
        if (hm_db_get(r, i, 1)) {
            int64_t left = gd_i64(r, i, 1) / 1000 - hm_now_ms();
            if (left < *ttl_ms)
                *ttl_ms = left > 1000 ? left : 1000;
        }
    }
    /* Explicit preferences: the guest stated them, so they are used either way (dietary
     * restrictions must exclude whatever the consent). */
    if ((rc = guest_effective_prefs(&e, guest, venue, &c->preferences, NULL, NULL,
                                    &c->preferences_version)) != 0)
        return rc;
    const Hospitality__Guest__V1__ExplicitPreferences *p = c->preferences;
    c->vector_version = "v1";
    size_t cap =
        64 + p->n_dietary_restrictions + p->n_favorite_categories + p->n_seating_preferences;
    c->preference_vector = hm_arena_alloc(a, sizeof(void *) * cap);
    for (size_t i = 0; i < p->n_dietary_restrictions; i++)
        add_feature(a, c, hm_arena_printf(a, "diet:%s", p->dietary_restrictions[i]), 1.0);
    for (size_t i = 0; i < p->n_favorite_categories; i++)
        add_feature(a, c, hm_arena_printf(a, "category:%s", p->favorite_categories[i]), 0.5);
    for (size_t i = 0; i < p->n_seating_preferences; i++)
        add_feature(a, c, hm_arena_printf(a, "seating:%s", p->seating_preferences[i]), 0.5);
    if (!c->personalization_allowed) {
        static char *omitted[] = {"implicit_preferences", "preference_vector.behavior", "segments",
                                  "signals"};
        c->omitted = omitted;
        c->n_omitted = sizeof omitted / sizeof *omitted;
    } else {
        if ((rc = load_signals(&e, guest, &c->signals)) != 0 ||
            (rc = load_segments(&e, guest, &c->segments, &c->n_segments, NULL)) != 0)
            return rc;
        /* Implicit preferences and the behaviour half of the vector. */
        static const hm_stmt_t st_imp = {
            "gc_implicit",
            "SELECT key, value, confidence, source, (extract(epoch FROM updated_at) * "
            "1e6)::bigint FROM guest_implicit_preferences WHERE guest_id = $1 ORDER BY "
            "confidence DESC, key, value LIMIT 20",
            1};
        if ((rc = gd_q(&e, &st_imp, &r, guest)) != 0)
            return rc;
        c->implicit_preferences = hm_arena_alloc(a, sizeof(void *) * (size_t)(PQntuples(r) + 1));
        for (int i = 0; i < PQntuples(r); i++) {
            Hospitality__Guest__V1__ImplicitPreference *ip = hm_arena_alloc(a, sizeof *ip);
            hospitality__guest__v1__implicit_preference__init(ip);
            ip->key = hm_arena_strdup(a, gd_str(r, i, 0));
            ip->value = hm_arena_strdup(a, gd_str(r, i, 1));
            ip->confidence = gd_f64(r, i, 2);
            ip->source = hm_arena_strdup(a, gd_str(r, i, 3));
            ip->updated_at = gd_ts(a, r, i, 4);
            c->implicit_preferences[c->n_implicit_preferences++] = ip;
        }
        for (size_t i = 0; i < c->signals->n_category_affinities && i < 20; i++)
            add_feature(
                a, c,
                hm_arena_printf(a, "category:%s", c->signals->category_affinities[i]->category),
                0.5 * c->signals->category_affinities[i]->score);
    }
    qsort(c->preference_vector, c->n_preference_vector, sizeof(void *), by_weight);
    c->computed_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    *out = c;
    return 0;
}

GD_HANDLER(guest_get_personalization_context)
{
    const Hospitality__Guest__V1__GetPersonalizationContextRequest *req = (const void *)in;
    hm_status_t st;
    PGresult *g;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st) ||
        !gd_check_text(call, "venue_id", req->venue_id, 128, &st) ||
        !load_guest(call, req->guest_id, &g, &st))
        return st;
    hm_arena_t *a = &call->arena;
    Hospitality__Guest__V1__GetPersonalizationContextResponse *resp =
        hm_arena_alloc(a, sizeof *resp);
    hospitality__guest__v1__get_personalization_context_response__init(resp);
    *out = &resp->base;
    char *key =
        hm_cache_key(a, "guestd", "ctx",
                     hm_arena_printf(a, "%s:%s:%s", req->guest_id, gd_str(g, 0, 3), req->venue_id));
    char *val;
    size_t len;
    if (hm_cache_get(call->cache, a, key, &val, &len) == 0) {
        resp->context = (void *)protobuf_c_message_unpack(
            &hospitality__guest__v1__personalization_context__descriptor, hm_arena_pb(a), len,
            (const uint8_t *)val);
        if (resp->context)
            return HM_STATUS_OK;
    }
    int64_t ttl;
    int rc = build(call, req->guest_id, req->venue_id, g, &resp->context, &ttl);
    if (rc)
        return hm_call_fail(call, rc, "build the personalization context");
    size_t n = protobuf_c_message_get_packed_size(&resp->context->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&resp->context->base, buf);
    hm_cache_set(call->cache, key, buf, n, ttl); /* best effort: Redis down only costs speed */
    return HM_STATUS_OK;
}

/* Re-evaluates segments whose rules depend on time (new, lapsed) for guests not looked at in
 * the last hour, a batch per run; replicas share the work through SKIP LOCKED. */
static const hm_stmt_t st_stale = {
    "gc_stale",
    "SELECT gd_recompute_segments(guest_id) FROM (SELECT guest_id FROM guest_segment_state WHERE "
    "computed_at < now() - interval '1 hour' ORDER BY computed_at LIMIT 500 FOR UPDATE SKIP "
    "LOCKED) s",
    0};

int guest_task_segments(hm_db_t *db, hm_cache_t *cache, hm_arena_t *arena, void *app)
{
    (void)cache;
    (void)app;
    gd_env_t e = {db, arena, NULL, NULL};
    return gd_q(&e, &st_stale, NULL);
}
