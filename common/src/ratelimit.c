/*
 * ratelimit.c - token buckets in Redis (hm/ratelimit.h): the rule table parsed from
 * HM_RATE_LIMITS, the Lua script that refills and takes a token atomically, EVALSHA with a
 * SCRIPT LOAD fallback, and the per-group counters.
 *
 * A bucket is a hash {tokens, ts}: tokens left (a fraction, kept to 6 decimals) and the Redis
 * TIME in microseconds when they were counted. Time is kept as an integer string because Lua
 * 5.1 turns numbers into strings with 14 significant digits, too few for microseconds since
 * the epoch.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hm/arena.h"
#include "hm/err.h"
#include "hm/log.h"
#include "hm/ratelimit.h"
#include "hm/server.h"

#define RL_RATE_MAX    1000000LL
#define RL_PERIOD_MAX  (24LL * 3600 * 1000) /* ms */
#define RL_WARN_GAP_MS 60000                /* fail-open warnings: at most one a minute */
#define RL_ECHO_MAX    64                   /* bytes of a bad entry quoted in errors */

/* ---- configuration table ---- */

const hm_cfg_var_t hm_ratelimit_config_vars[] = {
    HM_CFG_VAR(hm_ratelimit_config_t, limits, "HM_RATE_LIMITS", HM_CFG_STR, NULL, 1, 0, NULL, 0,
               "token buckets per caller \"group=rate/period[:burst],...\"; empty = no limits"),
};

const size_t hm_ratelimit_config_nvars =
    sizeof hm_ratelimit_config_vars / sizeof hm_ratelimit_config_vars[0];

/*
 * KEYS[1] the bucket; ARGV burst, rate, period in ms. Returns {allowed 1|0, retry-after ms
 * (0 when allowed), whole tokens left}. redis.replicate_commands() lets Redis before 5 replicate
 * the writes that follow TIME (effects replication is the default, and the call a no-op, since).
 */
static const char script[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local burst = tonumber(ARGV[1])\n"
    "local rate = tonumber(ARGV[2])\n"
    "local period = tonumber(ARGV[3]) * 1000\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(b[1])\n"
    "local ts = tonumber(b[2])\n"
    "if tokens == nil or ts == nil then\n"
    "  tokens = burst\n"
    "elseif now > ts then\n"
    "  tokens = tokens + (now - ts) * rate / period\n"
    "end\n"
    "if tokens > burst then tokens = burst end\n"
    "local allowed, retry = 0, 0\n"
    "if tokens >= 1 then\n"
    "  tokens = tokens - 1\n"
    "  allowed = 1\n"
    "else\n"
    "  retry = math.ceil((1 - tokens) * period / rate / 1000)\n"
    "  if retry < 1 then retry = 1 end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),\n"
    "           'ts', string.format('%.0f', now))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * period / rate / 1000) + 1000)\n"
    "return {allowed, retry, math.floor(tokens)}\n";

/* One group's rule and counters. */
typedef struct rule {
    char group[HM_RATELIMIT_GROUP_MAX + 1];              /* unique among the rules */
    long long rate;                                      /* tokens per period, 1..RL_RATE_MAX */
    long long period_ms;                                 /* 1..RL_PERIOD_MAX */
    long long burst;                                     /* bucket size, 1..RL_RATE_MAX */
    char argv_burst[24], argv_rate[24], argv_period[24]; /* the three as script arguments */
    _Atomic uint64_t allowed, limited, fail_open;
} rule_t;

struct hm_ratelimit {
    char *daemon;              /* owned; key space hm:<daemon>:rl: */
    rule_t *rules;             /* owned array of nrules; immutable but for the counters */
    size_t nrules;             /* 0 = limiting off */
    rule_t *fallback;          /* the "default" rule (in rules), or NULL */
    char sha[41];              /* SHA-1 of the script, lower-case hex, for EVALSHA */
    _Atomic uint64_t loads;    /* SCRIPT LOADs after NOSCRIPT */
    _Atomic uint64_t unwarned; /* fail-opens not yet reported in a warning */
    _Atomic int64_t warn_at;   /* monotonic ms before which fail-opens are not logged at warn */
};

#define INC(p) atomic_fetch_add_explicit((p), 1, memory_order_relaxed)
#define GET(p) atomic_load_explicit((p), memory_order_relaxed)

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

/* out: 2 * EVP_MD_size + 1 bytes. */
static void digest_hex(const EVP_MD *md, const void *data, size_t len, char *out)
{
    unsigned char buf[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (EVP_Digest(data, len, buf, &n, md, NULL) != 1) {
        HM_ERROR("rate limit: digest failed");
        abort(); /* only when OpenSSL itself is broken */
    }
    hex(buf, n, out);
}

/* ---- parsing HM_RATE_LIMITS ---- */

static void parse_error(char *err, size_t errlen, const char *entry, size_t n, const char *why)
{
    snprintf(err, errlen, "HM_RATE_LIMITS: %s (got \"%.*s%s\")", why,
             (int)(n < RL_ECHO_MAX ? n : RL_ECHO_MAX), entry, n > RL_ECHO_MAX ? "..." : "");
}

/* Decimal digits [s, end) within 1..RL_RATE_MAX. */
static bool parse_count(const char *s, const char *end, long long *out)
{
    long long v = 0;

    if (s == end)
        return false;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (*s - '0');
        if (v > RL_RATE_MAX)
            return false;
    }
    *out = v;
    return v >= 1;
}

static bool group_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

/* One "group=rate/period[:burst]" entry of n bytes (no commas) into r; false with err set. */
static bool parse_rule(const char *e, size_t n, rule_t *r, char *err, size_t errlen)
{
    const char *end = e + n, *eq = memchr(e, '=', n), *slash, *colon;
    char period[32];
    int64_t ms;

    if (eq == NULL || eq == e || (size_t)(eq - e) > HM_RATELIMIT_GROUP_MAX) {
        parse_error(err, errlen, e, n, "want group=rate/period[:burst], group 1-32 characters");
        return false;
    }
    for (const char *p = e; p < eq; p++) {
        if (!group_char(*p)) {
            parse_error(err, errlen, e, n, "group names use letters, digits, '_', '-', '.'");
            return false;
        }
    }
    memcpy(r->group, e, (size_t)(eq - e));
    r->group[eq - e] = '\0';
    slash = memchr(eq, '/', (size_t)(end - eq));
    if (slash == NULL || !parse_count(eq + 1, slash, &r->rate)) {
        parse_error(err, errlen, e, n, "rate must be an integer between 1 and 1000000");
        return false;
    }
    colon = memchr(slash, ':', (size_t)(end - slash));
    if (colon == NULL) {
        r->burst = r->rate;
        colon = end;
    } else if (!parse_count(colon + 1, end, &r->burst)) {
        parse_error(err, errlen, e, n, "burst must be an integer between 1 and 1000000");
        return false;
    }
    if ((size_t)(colon - slash - 1) >= sizeof period) {
        parse_error(err, errlen, e, n, "period must be a duration between 1ms and 24h");
        return false;
    }
    memcpy(period, slash + 1, (size_t)(colon - slash - 1));
    period[colon - slash - 1] = '\0';
    if (hm_config_parse_duration(period, &ms) != 0 || ms < 1 || ms > RL_PERIOD_MAX) {
        parse_error(err, errlen, e, n, "period must be a duration between 1ms and 24h");
        return false;
    }
    r->period_ms = ms;
    snprintf(r->argv_burst, sizeof r->argv_burst, "%lld", r->burst);
    snprintf(r->argv_rate, sizeof r->argv_rate, "%lld", r->rate);
    snprintf(r->argv_period, sizeof r->argv_period, "%lld", r->period_ms);
    return true;
}

/* Fills rl->rules from the comma-separated list; 0 or HM_EINVAL with err set. */
static int parse_rules(hm_ratelimit_t *rl, const char *spec, char *err, size_t errlen)
{
    const char *p = spec;

    rl->rules = hm_xcalloc(HM_RATELIMIT_MAX_RULES, sizeof *rl->rules);
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        rule_t *r;

        if (n == 0) {
            snprintf(err, errlen, "HM_RATE_LIMITS: empty entry");
            return HM_EINVAL;
        }
        if (rl->nrules == HM_RATELIMIT_MAX_RULES) {
            snprintf(err, errlen, "HM_RATE_LIMITS: more than %d groups", HM_RATELIMIT_MAX_RULES);
            return HM_EINVAL;
        }
        r = &rl->rules[rl->nrules];
        if (!parse_rule(p, n, r, err, errlen))
            return HM_EINVAL;
        for (size_t i = 0; i < rl->nrules; i++) {
            if (strcmp(rl->rules[i].group, r->group) == 0) {
                parse_error(err, errlen, p, n, "group given twice");
                return HM_EINVAL;
            }
        }
        if (strcmp(r->group, HM_RATELIMIT_DEFAULT_GROUP) == 0)
            rl->fallback = r;
        rl->nrules++;
        p = comma != NULL ? comma + 1 : p + n;
        if (comma != NULL && *p == '\0') {
            snprintf(err, errlen, "HM_RATE_LIMITS: empty entry");
            return HM_EINVAL;
        }
    }
    return 0;
}

hm_ratelimit_t *hm_ratelimit_create(const hm_ratelimit_config_t *cfg, const char *daemon, char *err,
                                    size_t errlen)
{
    hm_ratelimit_t *rl = hm_xcalloc(1, sizeof *rl);

    if (errlen > 0)
        err[0] = '\0';
    rl->daemon = hm_xstrdup(daemon);
    digest_hex(EVP_sha1(), script, sizeof script - 1, rl->sha);
    if (cfg != NULL && cfg->limits != NULL && parse_rules(rl, cfg->limits, err, errlen) != 0) {
        hm_ratelimit_destroy(rl);
        return NULL;
    }
    for (size_t i = 0; i < rl->nrules; i++) {
        const rule_t *r = &rl->rules[i];

        HM_INFO("rate limit: group %s: %lld per %lld ms, burst %lld", r->group, r->rate,
                r->period_ms, r->burst);
    }
    if (rl->nrules > 0 && rl->fallback == NULL)
        HM_INFO("rate limit: no \"default\" group: methods of other groups are not limited");
    return rl;
}

void hm_ratelimit_destroy(hm_ratelimit_t *rl)
{
    if (rl == NULL)
        return;
    free(rl->rules);
    free(rl->daemon);
    free(rl);
}

bool hm_ratelimit_enabled(const hm_ratelimit_t *rl)
{
    return rl != NULL && rl->nrules > 0;
}

/* ---- taking a token ---- */

static rule_t *own_rule(const hm_ratelimit_t *rl, const char *group)
{
    for (size_t i = 0; i < rl->nrules; i++) {
        if (strcmp(rl->rules[i].group, group) == 0)
            return &rl->rules[i];
    }
    return NULL;
}

static rule_t *find_rule(hm_ratelimit_t *rl, const char *group)
{
    rule_t *r = own_rule(rl, group);
    return r != NULL ? r : rl->fallback;
}

bool hm_ratelimit_has_group(const hm_ratelimit_t *rl, const char *group)
{
    return rl != NULL && group != NULL && own_rule(rl, group) != NULL;
}

/* Allows a call Redis could not decide on; warns at most once a minute. */
static int fail_open(hm_ratelimit_t *rl, rule_t *r, const char *why)
{
    int64_t now = hm_mono_ms(), at = atomic_load(&rl->warn_at);

    INC(&r->fail_open);
    INC(&rl->unwarned);
    if (now >= at && atomic_compare_exchange_strong(&rl->warn_at, &at, now + RL_WARN_GAP_MS)) {
        uint64_t n = atomic_exchange(&rl->unwarned, 0);

        HM_WARN("rate limit: %s; allowing calls unchecked (%llu since the last warning)", why,
                (unsigned long long)n);
    } else {
        HM_DEBUG("rate limit: %s; allowing the call", why);
    }
    return 0;
}

static redisReply *evalsha(hm_ratelimit_t *rl, rule_t *r, hm_cache_t *cache, hm_arena_t *a,
                           const char *key)
{
    const char *argv[] = {"EVALSHA",     rl->sha,      "1",           key,
                          r->argv_burst, r->argv_rate, r->argv_period};

    return hm_cache_command_argv(cache, a, 7, argv, NULL);
}

int hm_ratelimit_take(hm_ratelimit_t *rl, hm_cache_t *cache, const char *group,
                      const char *principal, int64_t *retry_after_ms)
{
    char hashed[7 + 64 + 1];
    const char *who = principal != NULL && principal[0] != '\0' ? principal : "-";
    hm_arena_t arena;
    const char *key;
    redisReply *r;
    rule_t *rule;
    int rc = 0;

    *retry_after_ms = 0;
    if (!hm_ratelimit_enabled(rl))
        return 0;
    rule = find_rule(rl, group != NULL ? group : HM_RATELIMIT_DEFAULT_GROUP);
    if (rule == NULL)
        return 0;
    if (strlen(who) > HM_RATELIMIT_PRINCIPAL_MAX) {
        memcpy(hashed, "sha256:", 7);
        digest_hex(EVP_sha256(), who, strlen(who), hashed + 7);
        who = hashed;
    }
    if (!hm_cache_available(cache))
        return fail_open(rl, rule, "redis unavailable");

    hm_arena_init(&arena, 512);
    key = hm_arena_printf(&arena, "hm:%s:rl:%s:%s", rl->daemon, rule->group, who);
    r = evalsha(rl, rule, cache, &arena, key);
    if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        const char *load[] = {"SCRIPT", "LOAD", script};
        redisReply *l = hm_cache_command_argv(cache, &arena, 3, load, NULL);

        INC(&rl->loads);
        if (l != NULL && l->type == REDIS_REPLY_STRING && strcmp(l->str, rl->sha) == 0) {
            HM_INFO("rate limit: script loaded into redis");
            r = evalsha(rl, rule, cache, &arena, key);
        } else {
            r = l; /* NULL or an error reply: reported below */
        }
    }
    if (r == NULL) {
        rc = fail_open(rl, rule, "redis unavailable");
    } else if (r->type == REDIS_REPLY_ERROR) {
        char why[160];

        snprintf(why, sizeof why, "redis refused the script: %.120s", r->str);
        rc = fail_open(rl, rule, why);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
               r->element[0]->type != REDIS_REPLY_INTEGER ||
               r->element[1]->type != REDIS_REPLY_INTEGER) {
        rc = fail_open(rl, rule, "unexpected reply from the script");
    } else if (r->element[0]->integer == 1) {
        INC(&rule->allowed);
    } else {
        INC(&rule->limited);
        *retry_after_ms = r->element[1]->integer > 0 ? r->element[1]->integer : 1;
        rc = HM_ERATE;
    }
    hm_arena_deinit(&arena);
    return rc;
}

/* ---- counters ---- */

void hm_ratelimit_stats(const hm_ratelimit_t *rl, hm_ratelimit_stats_t *out)
{
    hm_ratelimit_t *m = (hm_ratelimit_t *)rl; /* atomic loads take non-const pointers in C17 */

    memset(out, 0, sizeof *out);
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nrules; i++) {
        out->allowed += GET(&m->rules[i].allowed);
        out->limited += GET(&m->rules[i].limited);
        out->fail_open += GET(&m->rules[i].fail_open);
    }
    out->script_loads = GET(&m->loads);
}

void hm_ratelimit_metrics(const hm_ratelimit_t *rl, FILE *out)
{
    hm_ratelimit_t *m = (hm_ratelimit_t *)rl;

    if (!hm_ratelimit_enabled(m))
        return;
    fputs("# HELP hm_rate_limit_decisions_total Rate limit decisions by method group: allowed, "
          "limited (RESOURCE_EXHAUSTED) or fail_open (allowed, Redis unavailable).\n"
          "# TYPE hm_rate_limit_decisions_total counter\n",
          out);
    for (size_t i = 0; i < m->nrules; i++) {
        rule_t *r = &m->rules[i];

        fprintf(out,
                "hm_rate_limit_decisions_total{group=\"%s\",decision=\"allowed\"} %llu\n"
                "hm_rate_limit_decisions_total{group=\"%s\",decision=\"limited\"} %llu\n"
                "hm_rate_limit_decisions_total{group=\"%s\",decision=\"fail_open\"} %llu\n",
                r->group, (unsigned long long)GET(&r->allowed), r->group,
                (unsigned long long)GET(&r->limited), r->group,
                (unsigned long long)GET(&r->fail_open));
    }
    fprintf(out,
            "# HELP hm_rate_limit_script_loads_total Rate limit script loads after NOSCRIPT.\n"
            "# TYPE hm_rate_limit_script_loads_total counter\n"
            "hm_rate_limit_script_loads_total %llu\n",
            (unsigned long long)GET(&m->loads));
}
