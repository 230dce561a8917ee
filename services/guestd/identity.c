/*
 * identity.c - the identity graph: identifiers, ResolveIdentity, LinkIdentity, MergeGuests and
 * ExplainIdentity.
 *
 * An identifier row is found by a keyed blind index of "type:app:value" (unique: one guest per
 * identifier) and holds its value encrypted. Merges lock every guest involved in guest-id
 * order (so concurrent merges of the same profiles serialize), check the per-type limits of
 * rules.c on the combined profile, move identifiers, interactions, app profiles and
 * preferences to the survivor, fill the survivor's empty profile fields from the merged
 * profiles, rebuild its signals, mark the merged profiles MERGED (their personal fields
 * cleared) and record the merge with its evidence and rule, all in one transaction with
 * guest.profile.merged.
 */
#include <stdlib.h>
#include <string.h>

#include "guestd.h"
#include "hm/id.h"
#include "hospitality/events/v1/guest_events.pb-c.h"
#include "rules.h"
#include "store.h"

typedef Hospitality__Guest__V1__Identifier ident_t;
typedef Hospitality__Guest__V1__MergeRecord merge_t;

/* A normalized identifier with its index. */
typedef struct nid {
    int type, app;
    bool verified;
    char *value;
    const char *index;
    const ident_t *orig;
    char owner[HM_UUID_LEN + 1]; /* "" when nobody holds it */
    bool rejected;
} nid_t;

bool guest_validate_identifiers(hm_call_t *call, const char *field, ident_t *const *ids, size_t n,
                                hm_status_t *st)
{
    for (size_t i = 0; i < n; i++) {
        char *v;
        const char *why;
        if (gd_id_normalize(&call->arena, ids[i]->type, ids[i]->app, ids[i]->value, &v, &why)) {
            *st = hm_call_invalid(call, hm_arena_printf(&call->arena, "%s[%zu]", field, i), "%s",
                                  why);
            return false;
        }
    }
    return true;
}

static int normalize(const gd_env_t *e, const ident_t *in, nid_t *out)
{
    const char *why;
    memset(out, 0, sizeof *out);
    out->type = in->type;
    out->app = in->app;
    out->verified = in->verified;
    out->orig = in;
    if (gd_id_normalize(e->arena, in->type, in->app, in->value, &out->value, &why))
        return HM_EINVAL;
    /* Devices and sessions are global; app user ids are per app. */
    if (out->type != GD_ID_APP_USER)
        out->app = 0;
    out->index =
        gd_blind(e, "id", hm_arena_printf(e->arena, "%d:%d:%s", out->type, out->app, out->value));
    return out->index ? 0 : HM_ECRYPTO;
}

static ident_t *to_ident(hm_arena_t *a, const nid_t *n)
{
    ident_t *i = hm_arena_alloc(a, sizeof *i);
    hospitality__guest__v1__identifier__init(i);
    i->type = (Hospitality__Guest__V1__IdentifierType)n->type;
    i->app = (Hospitality__Common__V1__App)n->app;
    i->value = n->value;
    i->verified = n->verified;
    return i;
}

static const hm_stmt_t st_owner = {
    "gid_owner", "SELECT guest_id FROM guest_identifiers WHERE value_index = $1", 1};
static const hm_stmt_t st_attach = {
    "gid_attach",
    "INSERT INTO guest_identifiers AS i (guest_id, type, app, value_index, value_enc, verified, "
    "rule_id) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (value_index) DO UPDATE SET "
    "last_seen_at = clock_timestamp(), verified = i.verified OR excluded.verified WHERE "
    "i.guest_id = excluded.guest_id RETURNING guest_id",
    7};
static const hm_stmt_t st_type_count = {
    "gid_type_count",
    "SELECT count(*) FROM guest_identifiers WHERE guest_id = $1 AND type = $2 AND app = $3 AND "
    "value_index <> $4",
    4};

static int lookup_owner(const gd_env_t *e, nid_t *n)
{
    PGresult *r;
    int rc = gd_q(e, &st_owner, &r, n->index);
    if (rc)
        return rc;
    n->owner[0] = '\0';
    if (PQntuples(r) == 1)
        snprintf(n->owner, sizeof n->owner, "%s", gd_str(r, 0, 0));
    return 0;
}

/* Attaches one identifier to `guest`: HM_EEXIST when another guest holds it, HM_EPRECOND when
 * the guest holds as many of its type as the rules allow. */
static int attach(const gd_env_t *e, const char *guest, const nid_t *n, const char *rule)
{
    PGresult *r;
    int rc = gd_q(e, &st_type_count, &r, guest, gd_i64p(e->arena, n->type),
                  gd_i64p(e->arena, n->app), n->index);
    if (rc)
        return rc;
    if (gd_i64(r, 0, 0) + 1 > gd_id_limit(n->type))
        return HM_EPRECOND;
    const char *params[7] = {guest,
                             gd_i64p(e->arena, n->type),
                             gd_i64p(e->arena, n->app),
                             n->index,
                             NULL,
                             hm_db_param_bool(n->verified),
                             rule};
    int lengths[7] = {0}, formats[7] = {0, 0, 0, 0, 1};
    if ((rc = gd_seal(e, hm_arena_printf(e->arena, "identifier:%s", n->index), n->value,
                      strlen(n->value), &params[4], &lengths[4])) != 0)
        return rc;
    if ((rc = hm_db_exec_arena(e->db, e->arena, &st_attach, params, lengths, formats, &r)) != 0)
        return rc;
    return PQntuples(r) == 1 ? 0 : HM_EEXIST;
}

int guest_add_identifiers(const gd_env_t *e, const char *guest_id, ident_t *const *ids, size_t n,
                          const char *rule)
{
    for (size_t i = 0; i < n; i++) {
        nid_t x;
        int rc = normalize(e, ids[i], &x);
        if (rc == 0)
            rc = attach(e, guest_id, &x, rule);
        if (rc)
            return rc;
    }
    return 0;
}

static const hm_stmt_t st_list_ids = {
    "gid_list",
    "SELECT type, app, value_index, value_enc, verified, (extract(epoch FROM first_seen_at) * "
    "1e6)::bigint, (extract(epoch FROM last_seen_at) * 1e6)::bigint FROM guest_identifiers "
    "WHERE guest_id = $1 ORDER BY identifier_id",
    1};

int guest_list_identifiers(const gd_env_t *e, const char *guest, ident_t ***out, size_t *n)
{
    PGresult *r;
    int rc = gd_q(e, &st_list_ids, &r, guest);
    if (rc)
        return rc;
    int rows = PQntuples(r);
    *out = hm_arena_alloc(e->arena, sizeof(ident_t *) * (size_t)(rows + 1));
    *n = 0;
    for (int i = 0; i < rows; i++) {
        unsigned char *v;
        size_t vn;
        if ((rc = gd_open(e, r, i, 3, hm_arena_printf(e->arena, "identifier:%s", gd_str(r, i, 2)),
                          &v, &vn)) != 0)
            return rc;
        ident_t *x = hm_arena_alloc(e->arena, sizeof *x);
        hospitality__guest__v1__identifier__init(x);
        x->type = (Hospitality__Guest__V1__IdentifierType)gd_i64(r, i, 0);
        x->app = (Hospitality__Common__V1__App)gd_i64(r, i, 1);
        x->value = v ? (char *)v : "";
        x->verified = gd_bool(r, i, 4);
        x->first_seen_at = gd_ts(e->arena, r, i, 5);
        x->last_seen_at = gd_ts(e->arena, r, i, 6);
        (*out)[(*n)++] = x;
    }
    return 0;
}

/* ---- merges ---- */

static const hm_stmt_t st_lock_many = {
    "gid_lock_many",
    "SELECT guest_id::text, status, coalesce(merged_into::text, '') FROM guests WHERE guest_id = "
    "ANY($1::uuid[]) ORDER BY guest_id FOR UPDATE",
    1};
static const hm_stmt_t st_counts = {
    "gid_counts",
    "SELECT type, app, count(DISTINCT value_index) FROM guest_identifiers WHERE guest_id = "
    "ANY($1::uuid[]) GROUP BY type, app ORDER BY type, app",
    1};
static const hm_stmt_t st_retire = {
    "gid_retire",
    "UPDATE guests SET status = 3, merged_into = $2, name_enc = NULL, email_enc = NULL, "
    "email_index = NULL, phone_enc = NULL, phone_index = NULL, location_point_enc = NULL, "
    "version = version + 1, ctx_version = ctx_version + 1, updated_at = clock_timestamp() WHERE "
    "guest_id = ANY($1::uuid[])",
    2};
static const hm_stmt_t st_move_ids = {
    "gid_move_ids",
    "UPDATE guest_identifiers SET guest_id = $2, merge_id = $3, rule_id = $4 WHERE guest_id = "
    "ANY($1::uuid[])",
    4};
static const hm_stmt_t st_move_interactions = {
    "gid_move_interactions",
    "UPDATE interactions SET guest_id = $2 WHERE guest_id = ANY($1::uuid[])", 2};
static const hm_stmt_t st_move_apps = {
    "gid_move_apps",
    "UPDATE guest_app_profiles a SET guest_id = $2, sync_status = 2 WHERE a.guest_id = "
    "ANY($1::uuid[]) AND NOT EXISTS (SELECT 1 FROM guest_app_profiles b WHERE b.guest_id = $2 "
    "AND b.app = a.app) AND a.app = (SELECT min(c.app) FROM guest_app_profiles c WHERE c.app = "
    "a.app AND c.guest_id = ANY($1::uuid[]))",
    2};
static const hm_stmt_t st_merge_prefs = {"gid_merge_prefs",
                                         "SELECT gd_merge_preferences($2, $1::uuid[])", 2};
static const hm_stmt_t st_rebuild = {"gid_rebuild", "SELECT gd_rebuild_signals($1)", 1};
static const hm_stmt_t st_merge_insert = {
    "gid_merge_insert",
    "INSERT INTO guest_merges (merge_id, surviving_guest_id, merged_guest_ids, rule_id, "
    "evidence_enc, evidence_index, reason, actor_type, actor_id, interactions_moved, "
    "identifiers_moved, idempotency_key) VALUES ($1, $2, $3::uuid[], $4, $5, $6::text[], $7, $8, "
    "$9, $10, $11, $12)",
    12};
static const hm_stmt_t st_merge_select = {
    "gid_merge_select",
    "SELECT merge_id::text, surviving_guest_id::text, merged_guest_ids::text[]::text, rule_id, "
    "evidence_enc, actor_type, actor_id, (extract(epoch FROM merged_at) * 1e6)::bigint, "
    "interactions_moved, identifiers_moved FROM guest_merges WHERE merge_id = $1",
    1};
static const hm_stmt_t st_merge_by_key = {
    "gid_merge_by_key", "SELECT merge_id::text FROM guest_merges WHERE idempotency_key = $1", 1};
static const hm_stmt_t st_merge_of = {
    "gid_merge_of",
    "SELECT merge_id::text FROM guest_merges WHERE surviving_guest_id = $1 AND merged_guest_ids "
    "@> ARRAY[$2::uuid] ORDER BY merged_at DESC LIMIT 1",
    2};

static int load_merge(const gd_env_t *e, const char *merge_id, merge_t **out)
{
    PGresult *r;
    int rc = gd_q(e, &st_merge_select, &r, merge_id);
    if (rc)
        return rc;
    if (PQntuples(r) != 1)
        return HM_ENOTFOUND;
    hm_arena_t *a = e->arena;
    merge_t *m = hm_arena_alloc(a, sizeof *m);
    hospitality__guest__v1__merge_record__init(m);
    m->merge_id = hm_arena_strdup(a, gd_str(r, 0, 0));
    m->surviving_guest_id = hm_arena_strdup(a, gd_str(r, 0, 1));
    gd_parse_text_array(a, gd_str(r, 0, 2), &m->merged_guest_ids, &m->n_merged_guest_ids);
    m->rule_id = hm_arena_strdup(a, gd_str(r, 0, 3));
    unsigned char *ev;
    size_t evn;
    if ((rc = gd_open(e, r, 0, 4, hm_arena_printf(a, "merge:%s", m->merge_id), &ev, &evn)) != 0)
        return rc;
    if (ev) {
        Hospitality__Guest__V1__LinkIdentityResponse *w = (void *)protobuf_c_message_unpack(
            &hospitality__guest__v1__link_identity_response__descriptor, hm_arena_pb(a), evn, ev);
        if (!w)
            return HM_EINTERNAL;
        m->evidence = w->identifiers;
        m->n_evidence = w->n_identifiers;
    }
    m->merged_by = gd_actor(a, (int)gd_i64(r, 0, 5), gd_str(r, 0, 6));
    m->merged_at = gd_ts(a, r, 0, 7);
    m->interactions_moved = gd_i64(r, 0, 8);
    m->identifiers_moved = gd_i64(r, 0, 9);
    *out = m;
    return 0;
}

/* Locks guests in id order; fills status per guest (index as in ids). */
static int lock_guests(const gd_env_t *e, char *const *ids, size_t n, int *status, char **into)
{
    PGresult *r;
    int rc = gd_q(e, &st_lock_many, &r, gd_text_array(e->arena, ids, n));
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        status[i] = -1;
        into[i] = "";
    }
    for (int k = 0; k < PQntuples(r); k++)
        for (size_t i = 0; i < n; i++)
            if (strcmp(gd_str(r, k, 0), ids[i]) == 0) {
                status[i] = (int)gd_i64(r, k, 1);
                into[i] = hm_arena_strdup(e->arena, gd_str(r, k, 2));
            }
    return 0;
}

typedef struct merge_req {
    const char *survivor;
    char **sources;
    size_t nsources;
    const char *rule;
    ident_t **evidence;
    size_t nevidence;
    const char *reason, *idem;
    const char *why; /* out: message for HM_EPRECOND */
} merge_req_t;

/* Fills empty fields of `p` from `s`; adds the names of the fields filled to changed[]. */
static void fill_from(Hospitality__Guest__V1__Profile *p, const Hospitality__Guest__V1__Profile *s,
                      char **changed, size_t *n)
{
#define FILL(f)                                                                                    \
    if (!*p->f && *s->f) {                                                                         \
        p->f = s->f;                                                                               \
        changed[(*n)++] = #f;                                                                      \
    }
    FILL(name);
    FILL(email);
    FILL(phone);
    FILL(avatar_url);
    FILL(bio);
    FILL(language);
    FILL(time_zone);
#undef FILL
    if (p->location && s->location && !*p->location->country_code && *s->location->country_code) {
        *p->location = *s->location;
        changed[(*n)++] = "location";
    }
}

/* The merge itself, in the open transaction; guests are locked and live. */
static int do_merge(const gd_env_t *e, merge_req_t *m, merge_t **out)
{
    hm_arena_t *a = e->arena;
    char *srcs = gd_text_array(a, m->sources, m->nsources);
    char **all = hm_arena_alloc(a, sizeof(char *) * (m->nsources + 1));
    all[0] = (char *)m->survivor;
    memcpy(all + 1, m->sources, sizeof(char *) * m->nsources);
    PGresult *r;
    int rc = gd_q(e, &st_counts, &r, gd_text_array(a, all, m->nsources + 1));
    if (rc)
        return rc;
    gd_id_count_t counts[64];
    size_t nc = 0;
    for (int i = 0; i < PQntuples(r) && nc < 64; i++)
        counts[nc++] =
            (gd_id_count_t){(int)gd_i64(r, i, 0), (int)gd_i64(r, i, 1), (int)gd_i64(r, i, 2)};
    int bad = gd_merge_conflict(counts, nc);
    if (bad >= 0) {
        m->why = hm_arena_printf(a,
                                 "the merged profile would hold %d %s identifiers%s; the limit is "
                                 "%d",
                                 counts[bad].n, gd_id_type_name(counts[bad].type),
                                 counts[bad].type == GD_ID_APP_USER ? " for one app" : "",
                                 gd_id_limit(counts[bad].type));
        return HM_EPRECOND;
    }
    /* Load everything needed from the sources before retiring them. */
    guest_profile_t *surv;
    if ((rc = guest_store_lock(e, m->survivor, &surv)) != 0)
        return rc;
    char *changed[16];
    size_t nchanged = 0;
    bool was_anon = surv->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
    bool any_active = false;
    for (size_t i = 0; i < m->nsources; i++) {
        guest_profile_t *s;
        if ((rc = guest_store_get(e, m->sources[i], &s)) != 0)
            return rc;
        any_active =
            any_active || s->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
        if (nchanged < 8)
            fill_from(surv, s, changed, &nchanged);
    }
    char merge_id[HM_UUID_LEN + 1];
    hm_uuid_v4(merge_id);
    PGresult *ri, *rx;
    if ((rc = gd_q(e, &st_retire, NULL, srcs, m->survivor)) != 0 ||
        (rc = gd_q(e, &st_move_ids, &ri, srcs, m->survivor, merge_id, m->rule)) != 0 ||
        (rc = gd_q(e, &st_move_interactions, &rx, srcs, m->survivor)) != 0 ||
        (rc = gd_q(e, &st_move_apps, NULL, srcs, m->survivor)) != 0 ||
        (rc = gd_q(e, &st_merge_prefs, NULL, srcs, m->survivor)) != 0)
        return rc;
    int64_t ids_moved = atoll(PQcmdTuples(ri)), ix_moved = atoll(PQcmdTuples(rx));
    if (was_anon && (any_active || *surv->email || *surv->phone)) {
        surv->status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
        changed[nchanged++] = "status";
    }
    if (nchanged > 0 && (rc = guest_save_profile(
                             e, surv, changed, nchanged,
                             HOSPITALITY__COMMON__V1__ACTOR_TYPE__ACTOR_TYPE_SYSTEM, "merge")) != 0)
        return rc;
    if ((rc = gd_q(e, &st_rebuild, NULL, m->survivor)) != 0)
        return rc;
    /* The record, with its evidence encrypted. */
    Hospitality__Guest__V1__LinkIdentityResponse w =
        HOSPITALITY__GUEST__V1__LINK_IDENTITY_RESPONSE__INIT;
    w.identifiers = m->evidence;
    w.n_identifiers = m->nevidence;
    size_t pn = protobuf_c_message_get_packed_size(&w.base);
    unsigned char *packed = hm_arena_alloc(a, pn + 1);
    protobuf_c_message_pack(&w.base, packed);
    char **evidx = hm_arena_alloc(a, sizeof(char *) * (m->nevidence + 1));
    for (size_t i = 0; i < m->nevidence; i++) {
        nid_t x;
        if (normalize(e, m->evidence[i], &x) == 0)
            evidx[i] = (char *)x.index;
        else
            evidx[i] = "";
    }
    const char *params[12] = {merge_id,
                              m->survivor,
                              srcs,
                              m->rule,
                              NULL,
                              gd_text_array(a, evidx, m->nevidence),
                              m->reason ? m->reason : "",
                              gd_i64p(a, gd_actor_type(e->call)),
                              gd_actor_id(e->call),
                              gd_i64p(a, ix_moved),
                              gd_i64p(a, ids_moved),
                              m->idem && *m->idem ? m->idem : NULL};
    int lengths[12] = {0}, formats[12] = {0, 0, 0, 0, 1};
    if ((rc = gd_seal(e, hm_arena_printf(a, "merge:%s", merge_id), packed, pn, &params[4],
                      &lengths[4])) != 0 ||
        (rc = hm_db_exec_arena(e->db, a, &st_merge_insert, params, lengths, formats, &r)) != 0)
        return rc;
    Hospitality__Events__V1__GuestProfileMerged ev =
        HOSPITALITY__EVENTS__V1__GUEST_PROFILE_MERGED__INIT;
    ev.merge_id = merge_id;
    ev.surviving_guest_id = (char *)m->survivor;
    ev.merged_guest_ids = m->sources;
    ev.n_merged_guest_ids = m->nsources;
    ev.rule_id = (char *)m->rule;
    ev.version = surv->version;
    if ((rc = hm_call_publish(e->call, e->db, "guest.profile.merged", m->survivor, &ev.base)) != 0)
        return rc;
    return load_merge(e, merge_id, out);
}

/* ---- MergeGuests ---- */

typedef struct mg_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__MergeGuestsRequest *req;
    merge_t *merge;
    guest_profile_t *profile;
    hm_status_t st;
    bool failed;
} mg_tx_t;

static int mg_fn(hm_db_t *db, void *arg)
{
    mg_tx_t *t = arg;
    hm_call_t *call = t->call;
    gd_env_t e = gd_env(call);
    e.db = db;
    const Hospitality__Guest__V1__MergeGuestsRequest *req = t->req;
    PGresult *r;
    int rc;
    t->merge = NULL;
    if (*req->idempotency_key) {
        if ((rc = gd_q(&e, &st_merge_by_key, &r, req->idempotency_key)) != 0)
            return rc;
        if (PQntuples(r) == 1) {
            if ((rc = load_merge(&e, gd_str(r, 0, 0), &t->merge)) != 0)
                return rc;
            return guest_store_get(&e, req->guest_id, &t->profile);
        }
    }
    size_t n = req->n_source_guest_ids + 1;
    char **ids = hm_arena_alloc(&call->arena, sizeof(char *) * n);
    ids[0] = req->guest_id;
    memcpy(ids + 1, req->source_guest_ids, sizeof(char *) * req->n_source_guest_ids);
    int *status = hm_arena_alloc(&call->arena, sizeof(int) * n);
    char **into = hm_arena_alloc(&call->arena, sizeof(char *) * n);
    if ((rc = lock_guests(&e, ids, n, status, into)) != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (status[i] < 0) {
            t->failed = true;
            t->st = gd_not_found(call, ids[i]);
            return HM_ENOTFOUND;
        }
    if (status[0] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        status[0] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s is %s; merge into %s instead", ids[0],
                              status[0] == 3 ? "merged" : "erased", *into[0] ? into[0] : "nobody");
        return HM_EPRECOND;
    }
    /* Sources already merged into the survivor are done (a retried or concurrent merge). */
    merge_req_t m = {.survivor = req->guest_id,
                     .rule = "manual",
                     .reason = req->reason,
                     .idem = req->idempotency_key};
    m.sources = hm_arena_alloc(&call->arena, sizeof(char *) * n);
    const char *done_src = NULL;
    for (size_t i = 1; i < n; i++) {
        if (status[i] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED &&
            strcmp(into[i], req->guest_id) == 0) {
            done_src = ids[i];
            continue;
        }
        if (status[i] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
            status[i] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
            t->failed = true;
            t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                                  "source_guest_ids[%zu]: guest %s is %s", i - 1, ids[i],
                                  status[i] == 3 ? "already merged into another guest" : "erased");
            return HM_EPRECOND;
        }
        m.sources[m.nsources++] = ids[i];
    }
    if (m.nsources == 0) {
        if ((rc = gd_q(&e, &st_merge_of, &r, req->guest_id, done_src)) != 0)
            return rc;
        if (PQntuples(r) == 1 && (rc = load_merge(&e, gd_str(r, 0, 0), &t->merge)) != 0)
            return rc;
        return guest_store_get(&e, req->guest_id, &t->profile);
    }
    rc = do_merge(&e, &m, &t->merge);
    if (rc == HM_EPRECOND) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION", "%s",
                              m.why ? m.why : "the guests cannot be merged");
    }
    if (rc)
        return rc;
    return guest_store_get(&e, req->guest_id, &t->profile);
}

GD_HANDLER(guest_merge_guests)
{
    const Hospitality__Guest__V1__MergeGuestsRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (req->n_source_guest_ids == 0)
        return hm_call_invalid(call, "source_guest_ids", "name at least one guest to merge");
    if (req->n_source_guest_ids > 20)
        return hm_call_invalid(call, "source_guest_ids", "at most 20 guests per merge");
    for (size_t i = 0; i < req->n_source_guest_ids; i++) {
        const char *f = hm_arena_printf(&call->arena, "source_guest_ids[%zu]", i);
        if (!gd_check_guest(call, f, req->source_guest_ids[i], &st))
            return st;
        if (strcmp(req->source_guest_ids[i], req->guest_id) == 0)
            return hm_call_invalid(call, f, "a guest cannot be merged into itself");
        for (size_t j = 0; j < i; j++)
            if (strcmp(req->source_guest_ids[i], req->source_guest_ids[j]) == 0)
                return hm_call_invalid(call, f, "named twice");
    }
    if (!gd_check_text(call, "reason", req->reason, 1000, &st) ||
        !gd_check_text(call, "idempotency_key", req->idempotency_key, 128, &st))
        return st;
    mg_tx_t t = {call, req, NULL, NULL, HM_STATUS_OK, false};
    int rc = hm_db_tx(call->db, mg_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "merge guests");
    Hospitality__Guest__V1__MergeGuestsResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__merge_guests_response__init(resp);
    resp->merge = t.merge;
    resp->profile = t.profile;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- ResolveIdentity ---- */

typedef struct rs_tx {
    hm_call_t *call;
    const Hospitality__Guest__V1__ResolveIdentityRequest *req;
    nid_t *ids;
    size_t n;
    guest_new_t *hint;
    /* out */
    const char *guest;
    bool created;
    merge_t **merges;
    size_t nmerges;
    hm_status_t st;
    bool failed;
} rs_tx_t;

static int by_priority(const void *x, const void *y)
{
    const nid_t *a = x, *b = y;
    return gd_id_priority(b->type, b->verified) - gd_id_priority(a->type, a->verified);
}

static int rs_fn(hm_db_t *db, void *arg)
{
    rs_tx_t *t = arg;
    hm_call_t *call = t->call;
    hm_arena_t *a = &call->arena;
    gd_env_t e = gd_env(call);
    e.db = db;
    int rc;
    t->created = false;
    t->nmerges = 0;
    t->merges = hm_arena_alloc(a, sizeof(merge_t *) * (t->n + 1));
    for (size_t i = 0; i < t->n; i++) {
        t->ids[i].rejected = false;
        if ((rc = lookup_owner(&e, &t->ids[i])) != 0)
            return rc;
    }
    /* Distinct owners, in priority order of the identifier that found them. */
    char **owners = hm_arena_alloc(a, sizeof(char *) * (t->n + 1));
    size_t no = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (!t->ids[i].owner[0])
            continue;
        bool seen = false;
        for (size_t k = 0; k < no; k++)
            seen = seen || strcmp(owners[k], t->ids[i].owner) == 0;
        if (!seen)
            owners[no++] = t->ids[i].owner;
    }
    if (no == 0) {
        if (!t->req->create_if_missing) {
            t->failed = true;
            t->st = hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND",
                                  "no guest holds any of these identifiers");
            return HM_ENOTFOUND;
        }
        guest_new_t g = *t->hint;
        /* A new guest's primary email and phone come from its strongest identifiers. */
        for (size_t i = 0; i < t->n; i++) {
            if (t->ids[i].type == GD_ID_EMAIL && !*g.email)
                g.email = t->ids[i].value;
            if (t->ids[i].type == GD_ID_PHONE && !*g.phone)
                g.phone = t->ids[i].value;
            if (t->ids[i].type == GD_ID_APP_USER)
                g.status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
        }
        if (*g.email || *g.phone)
            g.status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
        if (!g.origin_app)
            g.origin_app = t->req->app;
        guest_profile_t *p;
        const char *conflict;
        if ((rc = guest_insert(&e, &g, NULL, 0, &p, &conflict)) != 0)
            return rc == HM_EEXIST ? HM_ERETRY : rc; /* raced with another resolution */
        t->guest = p->guest_id;
        t->created = true;
    } else {
        int *status = hm_arena_alloc(a, sizeof(int) * no);
        char **into = hm_arena_alloc(a, sizeof(char *) * no);
        if ((rc = lock_guests(&e, owners, no, status, into)) != 0)
            return rc;
        /* A concurrent merge may have moved identifiers while we waited: start again. */
        for (size_t i = 0; i < t->n; i++) {
            char before[HM_UUID_LEN + 1];
            memcpy(before, t->ids[i].owner, sizeof before);
            if ((rc = lookup_owner(&e, &t->ids[i])) != 0)
                return rc;
            if (strcmp(before, t->ids[i].owner) != 0)
                return HM_ERETRY;
        }
        t->guest = owners[0];
        for (size_t k = 1; k < no; k++) {
            /* The identifiers that tie owner k to the survivor are the evidence. */
            const nid_t *hit = NULL, *anchor = NULL;
            for (size_t i = 0; i < t->n; i++) {
                if (!hit && strcmp(t->ids[i].owner, owners[k]) == 0)
                    hit = &t->ids[i];
                if (!anchor && strcmp(t->ids[i].owner, owners[0]) == 0)
                    anchor = &t->ids[i];
            }
            bool anon = status[k] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
            ident_t *ev[2] = {to_ident(a, anchor), to_ident(a, hit)};
            merge_req_t m = {.survivor = owners[0],
                             .sources = &owners[k],
                             .nsources = 1,
                             .rule = gd_merge_rule(hit->type, anon),
                             .evidence = ev,
                             .nevidence = 2,
                             .reason = "identifiers observed together"};
            merge_t *rec;
            rc = do_merge(&e, &m, &rec);
            if (rc == HM_EPRECOND) {
                /* The limits forbid this merge: its identifiers stay where they are. */
                for (size_t i = 0; i < t->n; i++)
                    if (strcmp(t->ids[i].owner, owners[k]) == 0)
                        t->ids[i].rejected = true;
                continue;
            }
            if (rc)
                return rc;
            t->merges[t->nmerges++] = rec;
            for (size_t i = 0; i < t->n; i++)
                if (strcmp(t->ids[i].owner, owners[k]) == 0)
                    memcpy(t->ids[i].owner, owners[0], HM_UUID_LEN + 1);
        }
    }
    /* Attach what nobody held; seen identifiers are touched. */
    for (size_t i = 0; i < t->n; i++) {
        nid_t *x = &t->ids[i];
        if (x->rejected || (x->owner[0] && strcmp(x->owner, t->guest) != 0))
            continue;
        rc = attach(&e, t->guest, x, "observed_together");
        if (rc == HM_EPRECOND) {
            x->rejected = true; /* over the type's limit */
            continue;
        }
        if (rc)
            return rc == HM_EEXIST ? HM_ERETRY : rc;
    }
    /* Sign-up: an anonymous guest with a now-known email or phone becomes active. */
    guest_profile_t *p;
    if ((rc = guest_store_lock(&e, t->guest, &p)) != 0)
        return rc;
    char *changed[3];
    size_t nc = 0;
    for (size_t i = 0; i < t->n; i++) {
        const nid_t *x = &t->ids[i];
        if (x->rejected)
            continue;
        if (x->type == GD_ID_EMAIL && !*p->email) {
            p->email = x->value;
            changed[nc++] = "email";
        } else if (x->type == GD_ID_PHONE && !*p->phone) {
            p->phone = x->value;
            changed[nc++] = "phone";
        }
    }
    if (p->status == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS && nc > 0) {
        p->status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ACTIVE;
        changed[nc++] = "status";
    }
    if (nc > 0) {
        rc = guest_save_profile(&e, p, changed, nc, gd_actor_type(call), gd_actor_id(call));
        if (rc == HM_EEXIST)
            return HM_ERETRY;
        return rc;
    }
    return 0;
}

GD_HANDLER(guest_resolve_identity)
{
    const Hospitality__Guest__V1__ResolveIdentityRequest *req = (const void *)in;
    hm_status_t st;
    if (req->n_identifiers == 0)
        return hm_call_invalid(call, "identifiers", "give at least one identifier");
    if (req->n_identifiers > 20)
        return hm_call_invalid(call, "identifiers", "at most 20 identifiers");
    if (!gd_check_enum(call, "app", req->app, &hospitality__common__v1__app__descriptor, &st))
        return st;
    gd_env_t e = gd_env(call);
    nid_t *ids = hm_arena_alloc(&call->arena, sizeof(nid_t) * req->n_identifiers);
    ident_t **rejected = hm_arena_alloc(&call->arena, sizeof(ident_t *) * req->n_identifiers * 2);
    size_t n = 0, nrej = 0;
    for (size_t i = 0; i < req->n_identifiers; i++) {
        int rc = normalize(&e, req->identifiers[i], &ids[n]);
        if (rc == HM_EINVAL) { /* blocked or malformed: reported, the rest applied */
            rejected[nrej++] = req->identifiers[i];
            continue;
        }
        if (rc)
            return hm_call_fail(call, rc, "resolve identity");
        bool dup = false;
        for (size_t k = 0; k < n; k++)
            dup = dup || strcmp(ids[k].index, ids[n].index) == 0;
        if (!dup)
            n++;
    }
    if (n == 0) {
        const char *why = "";
        char *v;
        gd_id_normalize(&call->arena, req->identifiers[0]->type, req->identifiers[0]->app,
                        req->identifiers[0]->value, &v, &why);
        return hm_call_invalid(call, "identifiers[0]", "%s", why);
    }
    qsort(ids, n, sizeof *ids, by_priority);
    guest_new_t hint;
    memset(&hint, 0, sizeof hint);
    if (!guest_validate_new(call, req->profile_hint, &hint, &st))
        return st;
    /* The hint may not carry identifiers of its own: those go in `identifiers`. */
    hint.email = hint.phone = "";
    hint.status = HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
    hint.idempotency_key = NULL;
    rs_tx_t t = {.call = call, .req = req, .ids = ids, .n = n, .hint = &hint};
    int rc = hm_db_tx(call->db, rs_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "resolve identity");
    for (size_t i = 0; i < n; i++)
        if (ids[i].rejected)
            rejected[nrej++] = to_ident(&call->arena, &ids[i]);
    Hospitality__Guest__V1__ResolveIdentityResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__resolve_identity_response__init(resp);
    resp->guest_id = (char *)t.guest;
    resp->created = t.created;
    resp->merges = t.merges;
    resp->n_merges = t.nmerges;
    resp->rejected = rejected;
    resp->n_rejected = nrej;
    if ((rc = guest_store_get(&e, t.guest, &resp->profile)) != 0)
        return hm_call_fail(call, rc, "load guest");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- LinkIdentity ---- */

typedef struct lk_tx {
    hm_call_t *call;
    const char *guest;
    nid_t *id;
    merge_t *merge;
    hm_status_t st;
    bool failed;
} lk_tx_t;

static int lk_fn(hm_db_t *db, void *arg)
{
    lk_tx_t *t = arg;
    hm_call_t *call = t->call;
    gd_env_t e = gd_env(call);
    e.db = db;
    t->merge = NULL;
    int rc = lookup_owner(&e, t->id);
    if (rc)
        return rc;
    char *ids[2] = {(char *)t->guest, t->id->owner};
    int status[2];
    char *into[2];
    if ((rc = lock_guests(&e, ids, t->id->owner[0] ? 2 : 1, status, into)) != 0)
        return rc;
    if (status[0] < 0) {
        t->failed = true;
        t->st = gd_not_found(call, t->guest);
        return HM_ENOTFOUND;
    }
    if (status[0] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_MERGED ||
        status[0] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ERASED) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s is %s", t->guest, status[0] == 3 ? "merged" : "erased");
        return HM_EPRECOND;
    }
    char before[HM_UUID_LEN + 1];
    memcpy(before, t->id->owner, sizeof before);
    if ((rc = lookup_owner(&e, t->id)) != 0)
        return rc;
    if (strcmp(before, t->id->owner) != 0)
        return HM_ERETRY;
    if (t->id->owner[0] && strcmp(t->id->owner, t->guest) != 0) {
        /* Held by another guest: merge it in when it is anonymous or the identifier is
         * verified; otherwise the identifier is not ours to take. */
        bool anon = status[1] == HOSPITALITY__GUEST__V1__GUEST_STATUS__GUEST_STATUS_ANONYMOUS;
        if (!anon && !t->id->verified) {
            t->failed = true;
            t->st = hm_call_error(call, HM_CODE_ALREADY_EXISTS, "ALREADY_EXISTS",
                                  "identifier: this %s belongs to another guest; verify it to "
                                  "merge the two, or ask staff to merge them",
                                  gd_id_type_name(t->id->type));
            return HM_EEXIST;
        }
        ident_t *ev[1] = {to_ident(&call->arena, t->id)};
        char *src = t->id->owner;
        merge_req_t m = {.survivor = t->guest,
                         .sources = &src,
                         .nsources = 1,
                         .rule = anon ? "anonymous_login"
                                      : hm_arena_printf(&call->arena, "verified_%s",
                                                        gd_merge_rule(t->id->type, false)),
                         .evidence = ev,
                         .nevidence = 1,
                         .reason = "identifier linked"};
        rc = do_merge(&e, &m, &t->merge);
        if (rc == HM_EPRECOND) {
            t->failed = true;
            t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION", "%s",
                                  m.why);
        }
        return rc;
    }
    rc = attach(&e, t->guest, t->id, "linked");
    if (rc == HM_EPRECOND) {
        t->failed = true;
        t->st = hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "FAILED_PRECONDITION",
                              "guest %s already holds %d %s identifier%s, the limit", t->guest,
                              gd_id_limit(t->id->type), gd_id_type_name(t->id->type),
                              gd_id_limit(t->id->type) > 1 ? "s" : "");
    }
    if (rc == HM_EEXIST)
        return HM_ERETRY;
    return rc;
}

GD_HANDLER(guest_link_identity)
{
    const Hospitality__Guest__V1__LinkIdentityRequest *req = (const void *)in;
    hm_status_t st;
    if (!gd_check_guest(call, "guest_id", req->guest_id, &st))
        return st;
    if (!req->identifier)
        return hm_call_invalid(call, "identifier", "required");
    gd_env_t e = gd_env(call);
    nid_t id;
    int rc = normalize(&e, req->identifier, &id);
    if (rc == HM_EINVAL) {
        const char *why;
        char *v;
        gd_id_normalize(&call->arena, req->identifier->type, req->identifier->app,
                        req->identifier->value, &v, &why);
        return hm_call_invalid(call, "identifier", "%s", why);
    }
    if (rc)
        return hm_call_fail(call, rc, "link identity");
    lk_tx_t t = {call, req->guest_id, &id, NULL, HM_STATUS_OK, false};
    rc = hm_db_tx(call->db, lk_fn, &t, HM_DB_READ_COMMITTED);
    if (t.failed)
        return t.st;
    if (rc)
        return gd_fail(call, rc, "link identity");
    Hospitality__Guest__V1__LinkIdentityResponse *resp = hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__guest__v1__link_identity_response__init(resp);
    resp->merge = t.merge;
    if ((rc = guest_list_identifiers(&e, req->guest_id, &resp->identifiers,
                                     &resp->n_identifiers)) != 0)
        return hm_call_fail(call, rc, "list identifiers");
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- ExplainIdentity ---- */

static const hm_stmt_t st_explain = {
    "gid_explain",
    "SELECT i.guest_id::text, coalesce(i.merge_id::text, ''), i.rule_id, (extract(epoch FROM "
    "coalesce(m.merged_at, i.first_seen_at)) * 1e6)::bigint, coalesce(m.rule_id, ''), "
    "to_char(coalesce(m.merged_at, i.first_seen_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM "
    "guest_identifiers i LEFT JOIN guest_merges m ON m.merge_id = i.merge_id WHERE "
    "i.value_index = $1",
    1};

GD_HANDLER(guest_explain_identity)
{
    const Hospitality__Guest__V1__ExplainIdentityRequest *req = (const void *)in;
    if (!req->first || !req->second)
        return hm_call_invalid(call, req->first ? "second" : "first", "required");
    gd_env_t e = gd_env(call);
    hm_arena_t *a = &call->arena;
    nid_t x[2];
    const ident_t *in2[2] = {req->first, req->second};
    PGresult *r[2];
    for (int i = 0; i < 2; i++) {
        int rc = normalize(&e, in2[i], &x[i]);
        if (rc == HM_EINVAL)
            return hm_call_invalid(call, i ? "second" : "first",
                                   "not a valid identifier of its type");
        if (rc || (rc = gd_q(&e, &st_explain, &r[i], x[i].index)) != 0)
            return hm_call_fail(call, rc, "explain identity");
    }
    Hospitality__Guest__V1__ExplainIdentityResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__guest__v1__explain_identity_response__init(resp);
    *out = &resp->base;
    if (PQntuples(r[0]) == 0 || PQntuples(r[1]) == 0) {
        resp->explanation = hm_arena_printf(a, "the %s identifier belongs to no guest",
                                            PQntuples(r[0]) == 0 ? "first" : "second");
        return HM_STATUS_OK;
    }
    const char *g = gd_str(r[0], 0, 0);
    if (strcmp(g, gd_str(r[1], 0, 0)) != 0) {
        resp->explanation = hm_arena_strdup(a, "the identifiers belong to different guests");
        return HM_STATUS_OK;
    }
    resp->same_guest = true;
    resp->guest_id = hm_arena_strdup(a, g);
    /* One step per identifier that joined through a merge; a direct link otherwise. */
    resp->path = hm_arena_alloc(a, sizeof(void *) * 2);
    char *text = "";
    for (int i = 0; i < 2; i++) {
        const char *merge = gd_str(r[i], 0, 1);
        if (!*merge && !(i == 1 && resp->n_path == 0))
            continue;
        Hospitality__Guest__V1__IdentityLink *l = hm_arena_alloc(a, sizeof *l);
        hospitality__guest__v1__identity_link__init(l);
        l->from_identifier = to_ident(a, &x[i]);
        l->to_identifier = to_ident(a, &x[1 - i]);
        l->guest_id = resp->guest_id;
        l->merge_id = hm_arena_strdup(a, merge);
        l->rule_id = hm_arena_strdup(a, *merge ? gd_str(r[i], 0, 4) : "same_guest");
        l->linked_at = gd_ts(a, r[i], 0, 3);
        resp->path[resp->n_path++] = l;
        text = hm_arena_printf(a, "%s%s%s", text, *text ? "; " : "",
                               *merge ? hm_arena_printf(a,
                                                        "%s %s joined by merge %s (rule %s) on "
                                                        "%s",
                                                        i ? "second" : "first",
                                                        gd_id_type_name(x[i].type), merge,
                                                        l->rule_id, gd_str(r[i], 0, 5))
                                      : hm_arena_printf(a,
                                                        "both identifiers attached to guest %s "
                                                        "(rules %s and %s)",
                                                        g, gd_str(r[0], 0, 2), gd_str(r[1], 0, 2)));
    }
    resp->explanation = text;
    return HM_STATUS_OK;
}
