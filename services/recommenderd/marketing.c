/*
 * marketing.c - MarketingService's email half (docs/marketing.md): versioned templates
 * (UpsertEmailTemplate, ListEmailTemplates with per-variant statistics), GenerateEmail
 * (consent from privacyd, the guest from guestd, live recommendations through Recommend's own
 * code path, a deterministic A/B variant, render.c), Unsubscribe (an HMAC-signed token that
 * withdraws marketing-email consent through privacyd), GetVisionBoard's data (the guest,
 * interests, recommendations; board.c lays it out) and the erasure of the marketing rows.
 */
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "hm/auth.h"
#include "hm/log.h"
#include "hm/peer.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "marketing.h"
#include "recommend.h"
#include "render.h"

#define TS_US(col)      "(extract(epoch FROM " col ") * 1000000)::bigint"
#define MARKETING_EMAIL HOSPITALITY__COMMON__V1__CONSENT_PURPOSE__CONSENT_PURPOSE_MARKETING_EMAIL
#define GRANTED         HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_GRANTED
#define FB_CLICK        2
#define FB_CONVERSION   4
#define MAX_TEMPLATE    (256 * 1024)
#define MAX_OUTPUT      (1024 * 1024)

static unsigned char unsub_key[32];
static bool have_unsub_key;

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

int mkt_init(void)
{
    const char *k = rec_cfg.mkt_unsubscribe_key;
    have_unsub_key = false;
    if (k && *k) {
        if (strlen(k) != 64) {
            HM_ERROR("HM_MKT_UNSUBSCRIBE_KEY: expected 64 hex digits");
            return HM_EINVAL;
        }
        for (int i = 0; i < 32; i++) {
            int hi = hexval(k[2 * i]), lo = hexval(k[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                HM_ERROR("HM_MKT_UNSUBSCRIBE_KEY: expected 64 hex digits");
                return HM_EINVAL;
            }
            unsub_key[i] = (unsigned char)(hi << 4 | lo);
        }
        have_unsub_key = true;
    } else {
        HM_WARN("HM_MKT_UNSUBSCRIBE_KEY is not set: GenerateEmail refuses (no unsubscribe link "
                "could be signed)");
    }
    return mkt_board_warm_up();
}

/* ---- small helpers ---- */

static bool valid_id(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_' || *s == '-' ||
              *s == '.'))
            return false;
    return true;
}

static bool valid_text(const char *s, size_t max)
{
    return s && strlen(s) <= max && hm_utf8_valid(s);
}

const char *mkt_first_name(hm_arena_t *a, const char *name)
{
    if (!name)
        return "";
    while (*name == ' ' || *name == '\t')
        name++;
    size_t n = strcspn(name, " \t\r\n");
    return hm_arena_strndup(a, name, n);
}

static bool uuid_bytes(const char *s, unsigned char out[16])
{
    if (!hm_uuid_valid(s))
        return false;
    int k = 0;
    for (const char *p = s; *p && k < 16; p++) {
        if (*p == '-')
            continue;
        int hi = hexval(p[0]), lo = hexval(p[1]);
        if (hi < 0 || lo < 0)
            return false;
        out[k++] = (unsigned char)(hi << 4 | lo);
        p++;
    }
    return k == 16;
}

static char *uuid_text(hm_arena_t *a, const unsigned char b[16])
{
    return hm_arena_printf(
        a, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
        b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *b64url_encode(hm_arena_t *a, const unsigned char *p, size_t n)
{
    char *out = hm_arena_alloc(a, (n + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        *o++ = b64url[v >> 18 & 63];
        *o++ = b64url[v >> 12 & 63];
        if (i + 1 < n)
            *o++ = b64url[v >> 6 & 63];
        if (i + 2 < n)
            *o++ = b64url[v & 63];
    }
    *o = '\0';
    return out;
}

/* Decodes unpadded base64url into out (cap bytes); the byte count, or -1. */
static long b64url_decode(const char *s, unsigned char *out, size_t cap)
{
    size_t n = strlen(s), k = 0;
    if (n % 4 == 1)
        return -1;
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = s[i] ? strchr(b64url, s[i]) : NULL;
        if (!c)
            return -1;
        v = v << 6 | (uint32_t)(c - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (k == cap)
                return -1;
            out[k++] = (unsigned char)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    return (long)k;
}

/* ---- unsubscribe tokens: base64url(1 | guest uuid | email uuid | HMAC-SHA256[0..16)) ---- */

#define TOKEN_PAYLOAD 33
#define TOKEN_MAC     16

static void token_mac(const unsigned char *payload, unsigned char mac[TOKEN_MAC])
{
    static const char domain[] = "hm-unsubscribe:";
    unsigned char msg[sizeof domain - 1 + TOKEN_PAYLOAD], full[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    memcpy(msg, domain, sizeof domain - 1);
    memcpy(msg + sizeof domain - 1, payload, TOKEN_PAYLOAD);
    HMAC(EVP_sha256(), unsub_key, sizeof unsub_key, msg, sizeof msg, full, &len);
    memcpy(mac, full, TOKEN_MAC);
}

static char *token_make(hm_arena_t *a, const char *guest, const char *email)
{
    unsigned char t[TOKEN_PAYLOAD + TOKEN_MAC];
    t[0] = 1;
    if (!uuid_bytes(guest, t + 1) || !uuid_bytes(email, t + 17))
        return NULL;
    token_mac(t, t + TOKEN_PAYLOAD);
    return b64url_encode(a, t, sizeof t);
}

/* The guest and email of a valid token (arena strings), or false. */
static bool token_open(hm_arena_t *a, const char *token, char **guest, char **email)
{
    unsigned char t[TOKEN_PAYLOAD + TOKEN_MAC + 1], mac[TOKEN_MAC];
    if (!have_unsub_key || strlen(token) > 128 ||
        b64url_decode(token, t, sizeof t) != TOKEN_PAYLOAD + TOKEN_MAC || t[0] != 1)
        return false;
    token_mac(t, mac);
    if (CRYPTO_memcmp(mac, t + TOKEN_PAYLOAD, TOKEN_MAC) != 0)
        return false;
    *guest = uuid_text(a, t + 1);
    *email = uuid_text(a, t + 17);
    return true;
}

/* ---- peers ---- */

void mkt_load_guest(hm_call_t *call, const char *guest, mkt_guest_t *g)
{
    memset(g, 0, sizeof *g);
    hm_peer_opts_t opts = {.timeout_ms = 500, .max_attempts = 2};
    Hospitality__Guest__V1__GetProfileRequest preq =
        HOSPITALITY__GUEST__V1__GET_PROFILE_REQUEST__INIT;
    preq.guest_id = (char *)guest;
    ProtobufCMessage *resp = NULL;
    g->profile_status = hm_peer_call(
        call, &call->arena, "guestd", "/hospitality.guest.v1.GuestService/GetProfile", &preq.base,
        &hospitality__guest__v1__get_profile_response__descriptor, &opts, &resp);
    if (g->profile_status.code == HM_CODE_OK && resp)
        g->profile = ((Hospitality__Guest__V1__GetProfileResponse *)resp)->profile;
    Hospitality__Guest__V1__GetPersonalizationContextRequest creq =
        HOSPITALITY__GUEST__V1__GET_PERSONALIZATION_CONTEXT_REQUEST__INIT;
    creq.guest_id = (char *)guest;
    creq.venue_id = "";
    resp = NULL;
    hm_status_t st = hm_peer_call(
        call, &call->arena, "guestd",
        "/hospitality.guest.v1.GuestService/GetPersonalizationContext", &creq.base,
        &hospitality__guest__v1__get_personalization_context_response__descriptor, &opts, &resp);
    if (st.code == HM_CODE_OK && resp)
        g->context = ((Hospitality__Guest__V1__GetPersonalizationContextResponse *)resp)->context;
}

/* privacyd's record of the guest's marketing-email consent: 1 granted, 0 not (record in
 * *rec when privacyd has one), -1 unknown with privacyd's status in *st. Never cached: an
 * unsubscribe must stop the next email. */
static int marketing_consent(hm_call_t *call, const char *guest, const char *end_user,
                             Hospitality__Privacy__V1__ConsentRecord **rec, hm_status_t *st)
{
    Hospitality__Privacy__V1__GetConsentRequest req =
        HOSPITALITY__PRIVACY__V1__GET_CONSENT_REQUEST__INIT;
    Hospitality__Common__V1__ConsentPurpose purpose = MARKETING_EMAIL;
    req.guest_id = (char *)guest;
    req.n_purposes = 1;
    req.purposes = &purpose;
    ProtobufCMessage *resp = NULL;
    hm_peer_opts_t opts = {.timeout_ms = 500, .max_attempts = 2, .end_user = end_user};
    *rec = NULL;
    *st = hm_peer_call(call, &call->arena, "privacyd",
                       "/hospitality.privacy.v1.PrivacyService/GetConsent", &req.base,
                       &hospitality__privacy__v1__get_consent_response__descriptor, &opts, &resp);
    if (st->code != HM_CODE_OK || !resp)
        return -1;
    const Hospitality__Privacy__V1__GetConsentResponse *r = (const void *)resp;
    for (size_t i = 0; i < r->n_consents; i++)
        if (r->consents[i]->purpose == MARKETING_EMAIL) {
            *rec = r->consents[i];
            return r->consents[i]->status == GRANTED ? 1 : 0;
        }
    return 0;
}

Hospitality__Recommender__V1__RecommendResponse *mkt_recommend(hm_call_t *call, const char *guest,
                                                               int limit, hm_status_t *st)
{
    Hospitality__Recommender__V1__RecommendRequest req =
        HOSPITALITY__RECOMMENDER__V1__RECOMMEND_REQUEST__INIT;
    req.guest_id = (char *)guest;
    req.limit = limit;
    ProtobufCMessage *out = NULL;
    *st = rec_recommend(call, &req.base, &out);
    return st->code == HM_CODE_OK ? (void *)out : NULL;
}

static const hm_stmt_t st_items = {
    "mk_items",
    "SELECT i.item_id, i.name, i.category, i.description, i.image_url, i.image_file, "
    "i.price_minor, i.currency FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord) JOIN "
    "rc_items i ON i.item_id = u.id ORDER BY u.ord",
    1};

int mkt_load_items(hm_call_t *call, char **ids, size_t n, mkt_item_t *out)
{
    hm_arena_t *a = &call->arena;
    for (size_t i = 0; i < n; i++)
        out[i] = (mkt_item_t){.id = ids[i], "", "", "", "", "", "", 0, false};
    if (n == 0)
        return 0;
    const char *p[1] = {rec_text_array(a, ids, n)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_items, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    for (int row = 0; row < PQntuples(r); row++)
        for (size_t i = 0; i < n; i++)
            if (strcmp(out[i].id, rec_str(r, row, 0)) == 0) {
                out[i].name = hm_arena_strdup(a, rec_str(r, row, 1));
                out[i].category = hm_arena_strdup(a, rec_str(r, row, 2));
                out[i].description = hm_arena_strdup(a, rec_str(r, row, 3));
                out[i].image_url = hm_arena_strdup(a, rec_str(r, row, 4));
                out[i].image_file = hm_arena_strdup(a, rec_str(r, row, 5));
                out[i].has_price = !PQgetisnull(r, row, 6);
                out[i].price_minor = rec_i64(r, row, 6);
                out[i].currency = hm_arena_strdup(a, rec_str(r, row, 7));
            }
    return 0;
}

/* ---- templates ---- */

/* The built-in template (docs/samples/weekly_picks.*.mustache, embedded at build time): used
 * while no stored template of its id exists, and when GenerateEmail names no template. */
#define DEFAULT_TEMPLATE "weekly_picks"
extern const unsigned char mk_default_subject[], mk_default_html[], mk_default_text[];

static Hospitality__Marketing__V1__EmailTemplate *builtin_tpl(hm_arena_t *a)
{
    Hospitality__Marketing__V1__EmailTemplate *t = hm_arena_alloc(a, sizeof *t);
    hospitality__marketing__v1__email_template__init(t);
    t->template_id = DEFAULT_TEMPLATE;
    t->name = "Weekly picks (built-in)";
    t->subject_template = (char *)mk_default_subject;
    t->html_template = (char *)mk_default_html;
    t->text_template = (char *)mk_default_text;
    t->active = true;
    static const struct {
        const char *name;
        bool required;
    } fields[] = {{"first_name", true}, {"hotel_name", true}, {"unsubscribe_url", true}};
    t->personalization_fields = hm_arena_alloc(a, 3 * sizeof(void *));
    for (size_t i = 0; i < 3; i++) {
        Hospitality__Marketing__V1__PersonalizationField *f = hm_arena_alloc(a, sizeof *f);
        hospitality__marketing__v1__personalization_field__init(f);
        f->name = (char *)fields[i].name;
        f->required = fields[i].required;
        t->personalization_fields[t->n_personalization_fields++] = f;
    }
    t->variants = hm_arena_alloc(a, 2 * sizeof(void *));
    for (int i = 0; i < 2; i++) {
        Hospitality__Marketing__V1__TemplateVariant *v = hm_arena_alloc(a, sizeof *v);
        hospitality__marketing__v1__template_variant__init(v);
        v->variant_id = i ? "b" : "a";
        v->weight = 50;
        if (i)
            v->subject_template = "{{first_name}}, we picked these for you";
        t->variants[t->n_variants++] = v;
    }
    return t;
}

static const hm_stmt_t st_tpl_latest = {
    "mk_tpl_latest",
    "SELECT version, active, template, " TS_US("created_at") ", (SELECT " TS_US(
        "min(created_at)") " FROM mk_templates f WHERE "
                           "f.template_id = $1) FROM "
                           "mk_templates WHERE template_id = "
                           "$1 ORDER BY version DESC LIMIT 1",
    1};
static const hm_stmt_t st_tpl_stored = {
    "mk_tpl_stored", "SELECT 1 FROM mk_templates WHERE template_id = $1 LIMIT 1", 1};
static const hm_stmt_t st_tpl_lock = {
    "mk_tpl_lock", "SELECT pg_advisory_xact_lock(hashtext('mk_template:' || $1))", 1};
static const hm_stmt_t st_tpl_ins = {
    "mk_tpl_ins",
    "INSERT INTO mk_templates (template_id, version, name, active, template) VALUES ($1, "
    "$2::bigint, $3, $4::boolean, $5) RETURNING " TS_US("created_at"),
    5};
static const hm_stmt_t st_tpl_list = {
    "mk_tpl_list",
    "SELECT t.template_id, t.version, t.template, " TS_US("f.first") ", " TS_US(
        "t.created_at") " FROM (SELECT DISTINCT ON (template_id) template_id, version, active, "
                        "template, created_at FROM mk_templates ORDER BY template_id, version "
                        "DESC) t JOIN (SELECT template_id, min(created_at) AS first FROM "
                        "mk_templates GROUP BY template_id) f USING (template_id) WHERE "
                        "$1::boolean OR t.active ORDER BY t.template_id LIMIT $2::int OFFSET "
                        "$3::int",
    3};
/* Per variant: emails generated, and clicks and conversions on the recommendation lists they
 * embedded (SubmitFeedback with the email's recommendation_id). */
static const hm_stmt_t st_stats = {
    "mk_stats",
    "SELECT e.template_id, e.variant_id, count(DISTINCT e.email_id), count(f.feedback_id) "
    "FILTER (WHERE f.type = 2), count(f.feedback_id) FILTER (WHERE f.type = 4) FROM mk_emails e "
    "LEFT JOIN rc_feedback f ON f.recommendation_id = e.recommendation_id WHERE e.template_id = "
    "ANY($1::text[]) GROUP BY 1, 2",
    1};

static Hospitality__Marketing__V1__EmailTemplate *unpack_tpl(hm_arena_t *a, const PGresult *r,
                                                             int row, int col)
{
    unsigned char *blob;
    size_t len;
    if (hm_db_get_bytea(r, row, col, a, &blob, &len) != 0)
        return NULL;
    return (void *)protobuf_c_message_unpack(
        &hospitality__marketing__v1__email_template__descriptor, hm_arena_pb(a), len, blob);
}

/* The newest version of a template; NULL with *rc 0 when there is none. */
static Hospitality__Marketing__V1__EmailTemplate *load_tpl(hm_db_t *db, hm_arena_t *a,
                                                           const char *id, int *rc)
{
    const char *p[1] = {id};
    PGresult *r;
    if ((*rc = hm_db_exec_arena(db, a, &st_tpl_latest, p, NULL, NULL, &r)) != 0 ||
        PQntuples(r) == 0)
        return NULL;
    Hospitality__Marketing__V1__EmailTemplate *t = unpack_tpl(a, r, 0, 2);
    if (!t) {
        *rc = HM_EINTERNAL;
        return NULL;
    }
    t->version = rec_i64(r, 0, 0);
    t->updated_at = hm_timestamp_from_us(a, rec_i64(r, 0, 3));
    t->created_at = hm_timestamp_from_us(a, rec_i64(r, 0, 4));
    return t;
}

/* Compiles a template part; NULL with the message in err. */
static mk_tmpl_t *compile(hm_arena_t *a, const char *src, char *err, size_t errlen)
{
    mk_tmpl_t *t = NULL;
    if (mk_compile(a, src ? src : "", &t, err, errlen) != 0)
        return NULL;
    return t;
}

static hm_status_t check_part(hm_call_t *call, const char *field, const char *src, size_t max,
                              bool required)
{
    char err[200];
    if (!valid_text(src, max))
        return hm_call_invalid(call, field, "at most %zu bytes of UTF-8", max);
    if (required && !*src)
        return hm_call_invalid(call, field, "%s is required", field);
    if (!compile(&call->arena, src, err, sizeof err))
        return hm_call_invalid(call, field, "%s", err);
    return HM_STATUS_OK;
}

static hm_status_t validate_tpl(hm_call_t *call, const Hospitality__Marketing__V1__EmailTemplate *t)
{
    hm_status_t st;
    if (!valid_id(t->template_id, 64))
        return hm_call_invalid(call, "email_template.template_id",
                               "1..64 characters of a-z, 0-9, '_', '-', '.'");
    if (!valid_text(t->name, 200))
        return hm_call_invalid(call, "email_template.name", "at most 200 bytes of UTF-8");
    if ((st = check_part(call, "email_template.subject_template", t->subject_template, 1000, true))
                .code != HM_CODE_OK ||
        (st =
             check_part(call, "email_template.html_template", t->html_template, MAX_TEMPLATE, true))
                .code != HM_CODE_OK ||
        (st = check_part(call, "email_template.text_template", t->text_template, MAX_TEMPLATE,
                         false))
                .code != HM_CODE_OK)
        return st;
    if (t->n_personalization_fields > 50)
        return hm_call_invalid(call, "email_template.personalization_fields", "at most 50");
    for (size_t i = 0; i < t->n_personalization_fields; i++) {
        const Hospitality__Marketing__V1__PersonalizationField *f = t->personalization_fields[i];
        if (!valid_id(f->name, 64) || strchr(f->name, '.'))
            return hm_call_invalid(call, "email_template.personalization_fields",
                                   "field %zu: a name of 1..64 characters of a-z, 0-9, '_', '-'",
                                   i);
        if (!valid_text(f->default_value, 1000))
            return hm_call_invalid(call, "email_template.personalization_fields",
                                   "field %s: default of at most 1000 bytes of UTF-8", f->name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(t->personalization_fields[j]->name, f->name) == 0)
                return hm_call_invalid(call, "email_template.personalization_fields",
                                       "field %s named twice", f->name);
    }
    if (t->n_variants > 10)
        return hm_call_invalid(call, "email_template.variants", "at most 10");
    int64_t total = 0;
    for (size_t i = 0; i < t->n_variants; i++) {
        const Hospitality__Marketing__V1__TemplateVariant *v = t->variants[i];
        if (!valid_id(v->variant_id, 32))
            return hm_call_invalid(call, "email_template.variants",
                                   "variant %zu: an id of 1..32 characters of a-z, 0-9, '_', "
                                   "'-', '.'",
                                   i);
        if (v->weight < 0 || v->weight > 10000)
            return hm_call_invalid(call, "email_template.variants",
                                   "variant %s: weight within 0..10000", v->variant_id);
        total += v->weight;
        for (size_t j = 0; j < i; j++)
            if (strcmp(t->variants[j]->variant_id, v->variant_id) == 0)
                return hm_call_invalid(call, "email_template.variants", "variant %s named twice",
                                       v->variant_id);
        if ((st = check_part(call, "email_template.variants.subject_template", v->subject_template,
                             1000, false))
                    .code != HM_CODE_OK ||
            (st = check_part(call, "email_template.variants.html_template", v->html_template,
                             MAX_TEMPLATE, false))
                    .code != HM_CODE_OK ||
            (st = check_part(call, "email_template.variants.text_template", v->text_template,
                             MAX_TEMPLATE, false))
                    .code != HM_CODE_OK)
            return st;
    }
    if (t->n_variants && total == 0)
        return hm_call_invalid(call, "email_template.variants", "some variant needs a weight");
    return HM_STATUS_OK;
}

typedef struct upsert_tx {
    hm_call_t *call;
    Hospitality__Marketing__V1__EmailTemplate *t;
    int64_t expected;
    int64_t current; /* version found (ABORTED when expected differs) */
    bool stale;
} upsert_tx_t;

static int upsert_fn(hm_db_t *db, void *arg)
{
    upsert_tx_t *u = arg;
    hm_arena_t *a = &u->call->arena;
    const char *lp[1] = {u->t->template_id};
    int rc = hm_db_exec_arena(db, a, &st_tpl_lock, lp, NULL, NULL, NULL);
    if (rc != 0)
        return rc;
    Hospitality__Marketing__V1__EmailTemplate *cur = load_tpl(db, a, u->t->template_id, &rc);
    if (rc != 0)
        return rc;
    u->current = cur ? cur->version : 0;
    if (u->expected && u->expected != u->current) {
        u->stale = true;
        return 0;
    }
    Hospitality__Marketing__V1__EmailTemplate *t = u->t;
    t->version = 0;
    t->created_at = t->updated_at = NULL;
    for (size_t i = 0; i < t->n_variants; i++)
        t->variants[i]->stats = NULL;
    size_t n = protobuf_c_message_get_packed_size(&t->base);
    uint8_t *buf = hm_arena_alloc(a, n + 1);
    protobuf_c_message_pack(&t->base, buf);
    t->version = u->current + 1;
    const char *p[5] = {t->template_id, rec_p64(a, t->version), t->name,
                        hm_db_param_bool(t->active), (const char *)buf};
    int lens[5] = {0, 0, 0, 0, (int)n}, fmts[5] = {0, 0, 0, 0, 1};
    PGresult *r;
    if ((rc = hm_db_exec_arena(db, a, &st_tpl_ins, p, lens, fmts, &r)) != 0)
        return rc;
    t->updated_at = hm_timestamp_from_us(a, rec_i64(r, 0, 0));
    t->created_at = cur ? cur->created_at : t->updated_at;
    return 0;
}

REC_HANDLER(mkt_upsert_email_template)
{
    const Hospitality__Marketing__V1__UpsertEmailTemplateRequest *req = (const void *)in;
    if (!req->email_template)
        return hm_call_invalid(call, "email_template", "email_template is required");
    if (req->expected_version < 0)
        return hm_call_invalid(call, "expected_version", "must not be negative");
    hm_status_t st = validate_tpl(call, req->email_template);
    if (st.code != HM_CODE_OK)
        return st;
    upsert_tx_t u = {call, req->email_template, req->expected_version, 0, false};
    int rc = hm_db_tx(call->db, upsert_fn, &u, HM_DB_READ_COMMITTED);
    if (rc != 0)
        return hm_call_fail(call, rc, "store template");
    if (u.stale)
        return hm_call_error(call, HM_CODE_ABORTED, "VERSION_MISMATCH",
                             "template %s is at version %lld, not %lld", u.t->template_id,
                             (long long)u.current, (long long)u.expected);
    Hospitality__Marketing__V1__UpsertEmailTemplateResponse *resp =
        hm_arena_alloc(&call->arena, sizeof *resp);
    hospitality__marketing__v1__upsert_email_template_response__init(resp);
    resp->email_template = u.t;
    *out = &resp->base;
    return HM_STATUS_OK;
}

REC_HANDLER(mkt_list_email_templates)
{
    const Hospitality__Marketing__V1__ListEmailTemplatesRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    int size = req->page && req->page->page_size ? req->page->page_size : 20, offset = 0;
    if (size < 0 || size > 100)
        return hm_call_invalid(call, "page.page_size", "page size within 0..100");
    if (req->page && req->page->page_token && req->page->page_token[0]) {
        char *e;
        long v = strtol(req->page->page_token, &e, 10);
        if (*e || v < 0 || v > 1000000)
            return hm_call_invalid(call, "page.page_token", "a token from a previous page");
        offset = (int)v;
    }
    const char *p[3] = {hm_db_param_bool(req->include_inactive), rec_p64(a, size + 1),
                        rec_p64(a, offset)};
    PGresult *r;
    int rc = hm_db_exec_arena(call->db, a, &st_tpl_list, p, NULL, NULL, &r);
    if (rc != 0)
        return hm_call_fail(call, rc, "list templates");
    Hospitality__Marketing__V1__ListEmailTemplatesResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__marketing__v1__list_email_templates_response__init(resp);
    int n = PQntuples(r);
    resp->templates = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(void *));
    char **ids = hm_arena_alloc(a, ((size_t)n + 1) * sizeof(char *));
    for (int i = 0; i < n && i < size; i++) {
        Hospitality__Marketing__V1__EmailTemplate *t = unpack_tpl(a, r, i, 2);
        if (!t)
            return hm_call_fail(call, HM_EINTERNAL, "decode template");
        t->version = rec_i64(r, i, 1);
        t->created_at = hm_timestamp_from_us(a, rec_i64(r, i, 3));
        t->updated_at = hm_timestamp_from_us(a, rec_i64(r, i, 4));
        ids[resp->n_templates] = t->template_id;
        resp->templates[resp->n_templates++] = t;
    }
    if (n <= size) { /* the last page: the built-in template while none replaces it */
        const char *dp[1] = {DEFAULT_TEMPLATE};
        PGresult *d;
        if ((rc = hm_db_exec_arena(call->db, a, &st_tpl_stored, dp, NULL, NULL, &d)) != 0)
            return hm_call_fail(call, rc, "list templates");
        if (PQntuples(d) == 0) {
            Hospitality__Marketing__V1__EmailTemplate **v =
                hm_arena_alloc(a, (resp->n_templates + 1) * sizeof *v);
            char **vi = hm_arena_alloc(a, (resp->n_templates + 1) * sizeof *vi);
            if (resp->n_templates) {
                memcpy(v, resp->templates, resp->n_templates * sizeof *v);
                memcpy(vi, ids, resp->n_templates * sizeof *vi);
            }
            resp->templates = v;
            ids = vi;
            ids[resp->n_templates] = DEFAULT_TEMPLATE;
            resp->templates[resp->n_templates++] = builtin_tpl(a);
        }
    }
    if (resp->n_templates) {
        const char *sp[1] = {rec_text_array(a, ids, resp->n_templates)};
        PGresult *s;
        if ((rc = hm_db_exec_arena(call->db, a, &st_stats, sp, NULL, NULL, &s)) != 0)
            return hm_call_fail(call, rc, "load statistics");
        for (size_t i = 0; i < resp->n_templates; i++) {
            Hospitality__Marketing__V1__EmailTemplate *t = resp->templates[i];
            for (size_t v = 0; v < t->n_variants; v++) {
                Hospitality__Marketing__V1__VariantStats *vs = hm_arena_alloc(a, sizeof *vs);
                hospitality__marketing__v1__variant_stats__init(vs);
                for (int row = 0; row < PQntuples(s); row++)
                    if (strcmp(rec_str(s, row, 0), t->template_id) == 0 &&
                        strcmp(rec_str(s, row, 1), t->variants[v]->variant_id) == 0) {
                        vs->generated = rec_i64(s, row, 2);
                        vs->clicks = rec_i64(s, row, 3);
                        vs->conversions = rec_i64(s, row, 4);
                    }
                t->variants[v]->stats = vs;
            }
        }
    }
    resp->page = hm_arena_alloc(a, sizeof *resp->page);
    hospitality__common__v1__page_response__init(resp->page);
    resp->page->next_page_token = n > size ? hm_arena_printf(a, "%d", offset + size) : "";
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- GenerateEmail ---- */

static const hm_stmt_t st_assign_get = {
    "mk_assign_get",
    "SELECT variant_id FROM mk_assignments WHERE guest_id = $1::uuid AND campaign_id = $2 AND "
    "template_id = $3",
    3};
static const hm_stmt_t st_assign_put = {
    "mk_assign_put",
    "INSERT INTO mk_assignments (guest_id, campaign_id, template_id, variant_id) VALUES "
    "($1::uuid, $2, $3, $4) ON CONFLICT (guest_id, campaign_id, template_id) DO UPDATE SET "
    "variant_id = excluded.variant_id, assigned_at = now() WHERE $5::boolean",
    5};
static const hm_stmt_t st_email_ins = {
    "mk_email_ins",
    "INSERT INTO mk_emails (email_id, guest_id, template_id, template_version, variant_id, "
    "campaign_id, recommendation_id) VALUES ($1::uuid, $2::uuid, $3, $4::bigint, $5, $6, "
    "$7::uuid)",
    7};

typedef struct email_tx {
    hm_call_t *call;
    const Hospitality__Marketing__V1__EmailContent *e;
    bool record_assignment, replace_assignment;
} email_tx_t;

static int email_fn(hm_db_t *db, void *arg)
{
    email_tx_t *t = arg;
    hm_arena_t *a = &t->call->arena;
    const Hospitality__Marketing__V1__EmailContent *e = t->e;
    int rc;
    if (t->record_assignment) {
        const char *ap[5] = {e->guest_id, e->campaign_id, e->template_id, e->variant_id,
                             hm_db_param_bool(t->replace_assignment)};
        if ((rc = hm_db_exec_arena(db, a, &st_assign_put, ap, NULL, NULL, NULL)) != 0)
            return rc;
    }
    const char *p[7] = {e->email_id,
                        e->guest_id,
                        e->template_id,
                        rec_p64(a, e->template_version),
                        e->variant_id,
                        e->campaign_id,
                        e->recommendation_id[0] ? e->recommendation_id : NULL};
    return hm_db_exec_arena(db, a, &st_email_ins, p, NULL, NULL, NULL);
}

static hm_status_t validate_generate(hm_call_t *call,
                                     const Hospitality__Marketing__V1__GenerateEmailRequest *req)
{
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->template_id[0] && !valid_id(req->template_id, 64))
        return hm_call_invalid(call, "template_id",
                               "empty (weekly_picks) or 1..64 characters of a-z, 0-9, '_', '-', "
                               "'.'");
    if (req->campaign_id[0] && !valid_id(req->campaign_id, 64))
        return hm_call_invalid(call, "campaign_id",
                               "empty or 1..64 characters of a-z, 0-9, '_', '-', '.'");
    if (req->variant_id[0] && !valid_id(req->variant_id, 32))
        return hm_call_invalid(call, "variant_id", "empty or a variant id");
    if (req->recommendation_limit < 0 || req->recommendation_limit > 20)
        return hm_call_invalid(call, "recommendation_limit", "within 0..20");
    if (req->n_extra_fields > 50)
        return hm_call_invalid(call, "extra_fields", "at most 50");
    for (size_t i = 0; i < req->n_extra_fields; i++)
        if (!valid_id(req->extra_fields[i]->key, 64) || strchr(req->extra_fields[i]->key, '.') ||
            !valid_text(req->extra_fields[i]->value, 1000))
            return hm_call_invalid(call, "extra_fields",
                                   "names of a-z, 0-9, '_', '-' with values of at most 1000 "
                                   "bytes of UTF-8");
    /* forcing a variant is for staff previews */
    if (req->variant_id[0] && call->principal &&
        (call->principal->roles & (HM_ROLE_STAFF | HM_ROLE_ADMIN | HM_ROLE_SERVICE)) == 0)
        return hm_call_error(call, HM_CODE_PERMISSION_DENIED, "PERMISSION_DENIED",
                             "only staff may force a variant");
    return HM_STATUS_OK;
}

/* The render context: the guest, segments, preferences, recommendations, links. */
static mk_val_t *email_context(hm_call_t *call, const Hospitality__Marketing__V1__EmailContent *e,
                               const mkt_guest_t *g,
                               const Hospitality__Recommender__V1__RecommendResponse *recs,
                               const mkt_item_t *items)
{
    hm_arena_t *a = &call->arena;
    mk_val_t *c = mk_obj(a);
    const char *name = g->profile ? g->profile->name : "";
    mk_set_str(a, c, "guest_id", e->guest_id);
    mk_set_str(a, c, "name", name);
    mk_set_str(a, c, "first_name", mkt_first_name(a, name));
    mk_set_str(a, c, "language",
               g->profile && g->profile->language[0] ? g->profile->language : "en");
    mk_set_str(a, c, "hotel_name", rec_cfg.mkt_sender_name);
    mk_set_str(a, c, "email_id", e->email_id);
    mk_set_str(a, c, "campaign_id", e->campaign_id);
    mk_set_str(a, c, "variant_id", e->variant_id);
    mk_set_str(a, c, "unsubscribe_url", e->unsubscribe_url);
    mk_set_str(a, c, "unsubscribe_token", e->unsubscribe_token);
    /* segments and preferences only where the guest allows personalization (guestd says) */
    const Hospitality__Guest__V1__PersonalizationContext *ctx =
        g->context && g->context->personalization_allowed ? g->context : NULL;
    mk_val_t *segs = mk_list(a), *favs = mk_list(a);
    const char *top = "";
    if (ctx) {
        for (size_t i = 0; i < ctx->n_segments; i++) {
            mk_val_t *s = mk_obj(a);
            mk_set_str(a, s, "segment_id", ctx->segments[i]->segment_id);
            mk_set_str(a, s, "name", ctx->segments[i]->name);
            mk_push(a, segs, s);
        }
        if (ctx->preferences)
            for (size_t i = 0; i < ctx->preferences->n_favorite_categories; i++) {
                mk_push(a, favs, mk_str(a, ctx->preferences->favorite_categories[i]));
                if (!*top)
                    top = ctx->preferences->favorite_categories[i];
            }
    }
    mk_set(a, c, "segments", segs);
    mk_set(a, c, "favorite_categories", favs);
    mk_val_t *list = mk_list(a);
    for (size_t i = 0; recs && i < recs->n_items; i++) {
        const mkt_item_t *it = &items[i];
        mk_val_t *r = mk_obj(a);
        mk_set_str(a, r, "position", hm_arena_printf(a, "%zu", i + 1));
        mk_set_str(a, r, "item_id", it->id);
        mk_set_str(a, r, "name", it->name[0] ? it->name : it->id);
        mk_set_str(a, r, "category", it->category);
        mk_set_str(a, r, "description", it->description);
        mk_set_str(a, r, "reason", recs->items[i]->reason);
        mk_set_str(a, r, "image_url", it->image_url);
        mk_set_str(a, r, "price", it->has_price ? mkt_price(a, it->price_minor, it->currency) : "");
        mk_set_str(a, r, "link_url",
                   hm_arena_printf(a, "%s/items/%s?email=%s&rec=%s", rec_cfg.mkt_site_url, it->id,
                                   e->email_id, e->recommendation_id));
        mk_push(a, list, r);
        if (!*top && it->category[0])
            top = it->category;
    }
    mk_set(a, c, "recommendations", list);
    mk_set_str(a, c, "top_category", top);
    return c;
}

REC_HANDLER(mkt_generate_email)
{
    const Hospitality__Marketing__V1__GenerateEmailRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    hm_status_t st = validate_generate(call, req);
    if (st.code != HM_CODE_OK)
        return st;
    if (!have_unsub_key)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "UNSUBSCRIBE_KEY_MISSING",
                             "no email without an unsubscribe link: HM_MKT_UNSUBSCRIBE_KEY is "
                             "not configured");

    /* consent first: nothing about a guest without it is looked at */
    Hospitality__Privacy__V1__ConsentRecord *crec;
    hm_status_t pst;
    int consent = marketing_consent(call, req->guest_id, NULL, &crec, &pst);
    if (consent < 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "CONSENT_REQUIRED",
                             "marketing-email consent unknown (privacyd: %s): no email without "
                             "consent",
                             pst.message ? pst.message : "no answer");
    if (consent == 0)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "CONSENT_REQUIRED",
                             "the guest has no marketing-email consent");

    int rc;
    const char *tid = req->template_id[0] ? req->template_id : DEFAULT_TEMPLATE;
    Hospitality__Marketing__V1__EmailTemplate *t = load_tpl(call->db, a, tid, &rc);
    if (rc != 0)
        return hm_call_fail(call, rc, "load template");
    if (!t && strcmp(tid, DEFAULT_TEMPLATE) == 0)
        t = builtin_tpl(a);
    if (!t)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "no template %s", tid);
    if (!t->active)
        return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "TEMPLATE_INACTIVE",
                             "template %s is inactive", tid);

    /* the variant: forced, recorded earlier for this campaign, or picked by hash */
    const Hospitality__Marketing__V1__TemplateVariant *variant = NULL;
    bool record = false, replace = false;
    if (req->variant_id[0]) {
        for (size_t i = 0; i < t->n_variants; i++)
            if (strcmp(t->variants[i]->variant_id, req->variant_id) == 0)
                variant = t->variants[i];
        if (!variant)
            return hm_call_invalid(call, "variant_id", "template %s has no variant %s", tid,
                                   req->variant_id);
    } else if (t->n_variants) {
        const char *ap[3] = {req->guest_id, req->campaign_id, tid};
        PGresult *r;
        if ((rc = hm_db_exec_arena(call->db, a, &st_assign_get, ap, NULL, NULL, &r)) != 0)
            return hm_call_fail(call, rc, "load assignment");
        if (PQntuples(r) == 1)
            for (size_t i = 0; i < t->n_variants; i++)
                if (strcmp(t->variants[i]->variant_id, rec_str(r, 0, 0)) == 0)
                    variant = t->variants[i];
        if (!variant) { /* none yet, or its variant was removed since */
            replace = PQntuples(r) == 1;
            int32_t *w = hm_arena_alloc(a, t->n_variants * sizeof *w);
            for (size_t i = 0; i < t->n_variants; i++)
                w[i] = t->variants[i]->weight;
            int k = mk_pick(hm_arena_printf(a, "%s/%s/%s", req->guest_id, req->campaign_id, tid), w,
                            t->n_variants);
            variant = t->variants[k < 0 ? 0 : k];
            record = true;
        }
    }

    mkt_guest_t g;
    mkt_load_guest(call, req->guest_id, &g);
    if (g.profile_status.code == HM_CODE_NOT_FOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "guestd knows no guest %s",
                             req->guest_id);

    Hospitality__Recommender__V1__RecommendResponse *recs = mkt_recommend(
        call, req->guest_id, req->recommendation_limit ? req->recommendation_limit : 4, &st);
    if (!recs)
        return st;
    char **ids = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *ids);
    for (size_t i = 0; i < recs->n_items; i++)
        ids[i] = recs->items[i]->item_id;
    mkt_item_t *items = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *items);
    if ((rc = mkt_load_items(call, ids, recs->n_items, items)) != 0)
        return hm_call_fail(call, rc, "load items");

    Hospitality__Marketing__V1__EmailContent *e = hm_arena_alloc(a, sizeof *e);
    hospitality__marketing__v1__email_content__init(e);
    e->email_id = new_id(a);
    e->guest_id = req->guest_id;
    e->template_id = t->template_id;
    e->template_version = t->version;
    e->variant_id = variant ? variant->variant_id : "";
    e->campaign_id = req->campaign_id;
    e->recommendation_id = recs->recommendation_id;
    e->recommended_item_ids = ids;
    e->n_recommended_item_ids = recs->n_items;
    e->unsubscribe_token = token_make(a, e->guest_id, e->email_id);
    if (!e->unsubscribe_token)
        return hm_call_fail(call, HM_EINTERNAL, "sign unsubscribe token");
    e->unsubscribe_url =
        hm_arena_printf(a, "%s/unsubscribe?token=%s", rec_cfg.mkt_site_url, e->unsubscribe_token);

    mk_val_t *ctx = email_context(call, e, &g, recs, items);
    for (size_t i = 0; i < req->n_extra_fields; i++)
        mk_set_str(a, ctx, req->extra_fields[i]->key, req->extra_fields[i]->value);
    mk_field_t *f = hm_arena_alloc(a, (t->n_personalization_fields + 1) * sizeof *f);
    for (size_t i = 0; i < t->n_personalization_fields; i++)
        f[i] =
            (mk_field_t){t->personalization_fields[i]->name, t->personalization_fields[i]->required,
                         t->personalization_fields[i]->default_value};
    const char *missing = NULL;
    if (mk_apply_fields(a, ctx, f, t->n_personalization_fields, &missing) != 0)
        return hm_call_error(
            call, HM_CODE_FAILED_PRECONDITION, "TEMPLATE_FIELD_MISSING",
            "required field \"%s\" of template %s has no value%s", missing, t->template_id,
            g.profile ? ""
                      : hm_arena_printf(a, " (guestd did not give the profile: %s)",
                                        g.profile_status.message ? g.profile_status.message
                                                                 : "no answer"));

    const char *src[3] = {t->subject_template, t->html_template, t->text_template};
    if (variant) {
        if (variant->subject_template[0])
            src[0] = variant->subject_template;
        if (variant->html_template[0])
            src[1] = variant->html_template;
        if (variant->text_template[0])
            src[2] = variant->text_template;
    }
    static const mk_mode_t modes[3] = {MK_LINE, MK_HTML, MK_TEXT};
    char *outs[3];
    for (int i = 0; i < 3; i++) {
        char err[200];
        mk_tmpl_t *tp = compile(a, src[i], err, sizeof err);
        if (!tp)
            return hm_call_fail(call, HM_EINTERNAL, "compile stored template");
        size_t len;
        if (mk_render(a, tp, ctx, modes[i], MAX_OUTPUT, &outs[i], &len) != 0)
            return hm_call_error(call, HM_CODE_FAILED_PRECONDITION, "TEMPLATE_TOO_BIG",
                                 "template %s renders to more than %d bytes", t->template_id,
                                 MAX_OUTPUT);
    }
    /* the subject is one line without surrounding blanks */
    char *s = outs[0];
    while (*s == ' ')
        s++;
    size_t sl = strlen(s);
    while (sl && s[sl - 1] == ' ')
        s[--sl] = '\0';
    e->subject = s;
    e->html_content = outs[1];
    e->text_content = outs[2];
    e->generated_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    /* the values used for each personalization field */
    e->personalization_data = hm_arena_alloc(a, (t->n_personalization_fields + 1) * sizeof(void *));
    for (size_t i = 0; i < t->n_personalization_fields; i++) {
        const mk_val_t *v = mk_get(ctx, f[i].name);
        Hospitality__Marketing__V1__EmailContent__PersonalizationDataEntry *pe =
            hm_arena_alloc(a, sizeof *pe);
        hospitality__marketing__v1__email_content__personalization_data_entry__init(pe);
        pe->key = (char *)f[i].name;
        pe->value = !v                   ? ""
                    : v->type == MK_STR  ? (char *)v->s
                    : v->type == MK_BOOL ? (v->b ? "true" : "false")
                    : v->type == MK_LIST ? hm_arena_printf(a, "%zu items", v->n)
                                         : "";
        e->personalization_data[e->n_personalization_data++] = pe;
    }

    email_tx_t tx = {call, e, record, replace};
    if ((rc = hm_db_tx(call->db, email_fn, &tx, HM_DB_READ_COMMITTED)) != 0)
        return hm_call_fail(call, rc, "record email");
    Hospitality__Marketing__V1__GenerateEmailResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__marketing__v1__generate_email_response__init(resp);
    resp->email = e;
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- Unsubscribe ---- */

REC_HANDLER(mkt_unsubscribe)
{
    const Hospitality__Marketing__V1__UnsubscribeRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    char *guest, *email;
    if (!token_open(a, req->token, &guest, &email))
        return hm_call_invalid(call, "token", "not a valid unsubscribe token");
    Hospitality__Marketing__V1__UnsubscribeResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__marketing__v1__unsubscribe_response__init(resp);
    resp->purpose = MARKETING_EMAIL;
    Hospitality__Privacy__V1__ConsentRecord *cur;
    hm_status_t st;
    int consent = marketing_consent(call, guest, guest, &cur, &st);
    if (consent < 0)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "privacyd did not answer: try again");
    if (consent == 0) {
        resp->already_unsubscribed = true;
        resp->effective_at = cur && cur->recorded_at ? cur->recorded_at
                                                     : hm_timestamp_from_us(a, hm_now_ms() * 1000);
        *out = &resp->base;
        return HM_STATUS_OK;
    }
    Hospitality__Privacy__V1__ConsentChange ch = HOSPITALITY__PRIVACY__V1__CONSENT_CHANGE__INIT;
    ch.purpose = MARKETING_EMAIL;
    ch.status = HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_WITHDRAWN;
    Hospitality__Privacy__V1__ConsentChange *chs[1] = {&ch};
    Hospitality__Privacy__V1__UpdateConsentRequest up =
        HOSPITALITY__PRIVACY__V1__UPDATE_CONSENT_REQUEST__INIT;
    up.guest_id = guest;
    up.changes = chs;
    up.n_changes = 1;
    up.source = HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_UNSUBSCRIBE_LINK;
    up.notice_version =
        cur && cur->notice_version && cur->notice_version[0] ? cur->notice_version : "unsubscribe";
    ProtobufCMessage *r = NULL;
    hm_peer_opts_t opts = {.timeout_ms = 2000, .max_attempts = 1, .end_user = guest};
    st = hm_peer_call(call, a, "privacyd", "/hospitality.privacy.v1.PrivacyService/UpdateConsent",
                      &up.base, &hospitality__privacy__v1__update_consent_response__descriptor,
                      &opts, &r);
    if (st.code != HM_CODE_OK || !r)
        return hm_call_error(call, HM_CODE_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                             "privacyd did not record the withdrawal (%s): try again",
                             st.message ? st.message : "no answer");
    const Hospitality__Privacy__V1__UpdateConsentResponse *ur = (const void *)r;
    for (size_t i = 0; i < ur->n_consents; i++)
        if (ur->consents[i]->purpose == MARKETING_EMAIL)
            resp->effective_at = ur->consents[i]->recorded_at;
    if (!resp->effective_at)
        resp->effective_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    HM_INFO("email %s: marketing-email consent withdrawn through its unsubscribe link", email);
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- GetVisionBoard (the layout in board.c, drawn by board_png.c) ---- */

static const hm_stmt_t st_interests = {
    "mk_interests",
    "SELECT value FROM rc_interests WHERE guest_id = $1::uuid ORDER BY confidence DESC, value "
    "LIMIT 8",
    1};

static bool has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

REC_HANDLER(mkt_get_vision_board)
{
    const Hospitality__Marketing__V1__GetVisionBoardRequest *req = (const void *)in;
    hm_arena_t *a = &call->arena;
    if (!hm_uuid_valid(req->guest_id))
        return hm_call_invalid(call, "guest_id", "guest_id must be a UUID");
    if (req->width_px && (req->width_px < 300 || req->width_px > 2400))
        return hm_call_invalid(call, "width_px", "0 (1200) or within 300..2400");
    if (req->height_px && (req->height_px < 200 || req->height_px > 1600))
        return hm_call_invalid(call, "height_px", "0 (800) or within 200..1600");
    if (req->theme_name[0] && !mkt_theme(req->theme_name))
        return hm_call_invalid(call, "theme_name",
                               "one of warm_evening, ocean_breeze, garden_fresh, midnight");

    mkt_guest_t g;
    mkt_load_guest(call, req->guest_id, &g);
    if (g.profile_status.code == HM_CODE_NOT_FOUND)
        return hm_call_error(call, HM_CODE_NOT_FOUND, "NOT_FOUND", "guestd knows no guest %s",
                             req->guest_id);
    /* interests only with personalization consent (privacyd, cached like Recommend's) */
    char **interests = hm_arena_alloc(a, 16 * sizeof *interests);
    size_t ni = 0;
    if (rec_consent(call, req->guest_id) == 1) {
        const Hospitality__Guest__V1__PersonalizationContext *c = g.context;
        if (c && c->personalization_allowed && c->preferences)
            for (size_t i = 0; i < c->preferences->n_favorite_categories && ni < 8; i++)
                if (!has(interests, ni, c->preferences->favorite_categories[i]))
                    interests[ni++] = c->preferences->favorite_categories[i];
        const char *p[1] = {req->guest_id};
        PGresult *r;
        int rc = hm_db_exec_arena(call->db, a, &st_interests, p, NULL, NULL, &r);
        if (rc != 0)
            return hm_call_fail(call, rc, "load interests");
        for (int i = 0; i < PQntuples(r) && ni < 16; i++)
            if (!has(interests, ni, rec_str(r, i, 0)))
                interests[ni++] = hm_arena_strdup(a, rec_str(r, i, 0));
    }
    hm_status_t st;
    Hospitality__Recommender__V1__RecommendResponse *recs =
        mkt_recommend(call, req->guest_id, 4, &st);
    if (!recs)
        return st;
    char **ids = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *ids);
    for (size_t i = 0; i < recs->n_items; i++)
        ids[i] = recs->items[i]->item_id;
    mkt_item_t *items = hm_arena_alloc(a, (recs->n_items + 1) * sizeof *items);
    int rc = mkt_load_items(call, ids, recs->n_items, items);
    if (rc != 0)
        return hm_call_fail(call, rc, "load items");
    Hospitality__Marketing__V1__VisionBoard *b = mkt_board_build(
        a, req->guest_id, mkt_first_name(a, g.profile ? g.profile->name : NULL), interests, ni,
        items, recs->n_items, req->theme_name, req->width_px ? req->width_px : 1200,
        req->height_px ? req->height_px : 800);
    Hospitality__Marketing__V1__GetVisionBoardResponse *resp = hm_arena_alloc(a, sizeof *resp);
    hospitality__marketing__v1__get_vision_board_response__init(resp);
    resp->board = b;
    resp->generated_at = hm_timestamp_from_us(a, hm_now_ms() * 1000);
    if (req->include_png) {
        const char **files = hm_arena_zalloc(a, b->n_sections * sizeof *files);
        for (size_t i = 0; i < b->n_sections; i++)
            for (size_t k = 0; k < recs->n_items; k++)
                if (b->sections[i]->item_id[0] && strcmp(b->sections[i]->item_id, items[k].id) == 0)
                    files[i] = items[k].image_file;
        uint8_t *png;
        size_t len;
        if ((rc = mkt_board_png(a, b, files, rec_cfg.asset_dir, &png, &len)) != 0)
            return hm_call_fail(call, rc, "render board");
        resp->png.data = png;
        resp->png.len = len;
    }
    *out = &resp->base;
    return HM_STATUS_OK;
}

/* ---- erasure (inside subject.c's transaction) ---- */

#define RECOMMENDATIONS HOSPITALITY__PRIVACY__V1__DATA_CATEGORY__DATA_CATEGORY_RECOMMENDATIONS

static const hm_stmt_t st_erase_assign = {
    "mk_e_assign", "DELETE FROM mk_assignments WHERE guest_id = $1::uuid RETURNING 1", 1};
static const hm_stmt_t st_erase_emails = {
    "mk_e_emails", "DELETE FROM mk_emails WHERE guest_id = $1::uuid RETURNING 1", 1};
static const hm_stmt_t st_anon_emails = {
    "mk_e_emails_anon",
    "UPDATE mk_emails SET guest_id = NULL WHERE guest_id = $1::uuid RETURNING 1", 1};

int mkt_erase(hm_db_t *db, hm_arena_t *a, const char *guest, bool anonymize,
              Hospitality__Privacy__V1__ErasureReceipt *receipt)
{
    const char *p[1] = {guest};
    PGresult *r;
    int rc = hm_db_exec_arena(db, a, &st_erase_assign, p, NULL, NULL, &r);
    if (rc != 0)
        return rc;
    Hospitality__Privacy__V1__SectionCount *c1 =
        rec_section_count(a, "ab_assignments", RECOMMENDATIONS, PQntuples(r));
    if ((rc = hm_db_exec_arena(db, a, anonymize ? &st_anon_emails : &st_erase_emails, p, NULL, NULL,
                               &r)) != 0)
        return rc;
    Hospitality__Privacy__V1__SectionCount *c2 =
        rec_section_count(a, "marketing_emails", RECOMMENDATIONS, PQntuples(r));
    /* the receipt's lists are grown here (subject.c sized them for its own sections); a guest
     * without marketing rows gets no marketing lines */
    Hospitality__Privacy__V1__SectionCount **d =
        hm_arena_alloc(a, (receipt->n_deleted + 2) * sizeof *d);
    if (receipt->n_deleted)
        memcpy(d, receipt->deleted, receipt->n_deleted * sizeof *d);
    if (c1->count)
        d[receipt->n_deleted++] = c1;
    Hospitality__Privacy__V1__SectionCount **an =
        hm_arena_alloc(a, (receipt->n_anonymized + 1) * sizeof *an);
    if (receipt->n_anonymized)
        memcpy(an, receipt->anonymized, receipt->n_anonymized * sizeof *an);
    if (c2->count && anonymize)
        an[receipt->n_anonymized++] = c2;
    else if (c2->count)
        d[receipt->n_deleted++] = c2;
    receipt->deleted = d;
    receipt->anonymized = an;
    return 0;
}
