/*
 * meshbench - the mesh benchmark's load generator (issue 12; driven by `tools/bench/bench mesh`,
 * see docs/benchmarks.md).
 *
 * A mixed workload in the manner of DeathStarBench's hotel-reservation mix: mostly reads
 * (personalization context, recommendations, availability, profiles, leaderboards) with a small
 * share of writes (interactions, point awards, bookings), against the five daemons through
 * their public gRPC APIs, with libhm's client (hm/client.h) from many threads.
 *
 *   closed loop: --threads T callers, each making its next call when the last returns, for
 *                --duration seconds: the peak throughput.
 *   open loop:   --rate R calls per second in total, spread over --threads callers on a fixed
 *                schedule; latency is measured from each call's scheduled start, so a server
 *                that falls behind is charged its queueing (no coordinated omission).
 *
 * Before the measured run, --setup creates --guests guests (CreateGuest), grants half of them
 * personalization consent, upserts a --items item catalogue and warms up. Output: one JSON
 * object on stdout with, per operation, calls, successes, statuses, p50/p99/p99.9 (µs) and
 * the overall rate; the bash driver prints the table and checks the counts against the
 * daemons' own counters.
 *
 * Configuration from the environment: HM_GUESTD_ADDR, HM_BOOKINGD_ADDR, HM_RECOMMENDERD_ADDR,
 * HM_GAMIFICATIOND_ADDR, HM_PRIVACYD_ADDR and HM_BENCH_TOKEN (a service or admin JWT).
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hm/client.h"
#include "hm/id.h"
#include "hm/log.h"
#include "hospitality/booking/v1/booking.pb-c.h"
#include "hospitality/gamification/v1/gamification.pb-c.h"
#include "hospitality/guest/v1/guest.pb-c.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"
#include "hospitality/recommender/v1/recommender.pb-c.h"

/* ---- latency histogram: exact below 1024 µs, 512 sub-buckets per power of two above ---- */

#define H_SUB     512
#define H_BUCKETS (1024 + 30 * H_SUB)

typedef struct hist {
    uint64_t n[H_BUCKETS];
    uint64_t count;
} hist_t;

static size_t h_index(uint64_t us)
{
    if (us < 1024)
        return (size_t)us;
    int e = 63 - __builtin_clzll(us) - 9; /* us >> e is in [512, 1024) */
    size_t i = 1024 + (size_t)(e - 1) * H_SUB + (size_t)((us >> e) - H_SUB);
    return i < H_BUCKETS ? i : H_BUCKETS - 1;
}

static uint64_t h_value(size_t i)
{
    if (i < 1024)
        return i;
    size_t e = (i - 1024) / H_SUB + 1, m = (i - 1024) % H_SUB + H_SUB;
    return ((uint64_t)m << e) + ((uint64_t)1 << e) / 2; /* bucket middle */
}

static uint64_t h_quantile(const hist_t *h, double q)
{
    uint64_t want = (uint64_t)(q * (double)h->count + 0.5), seen = 0;
    if (h->count == 0)
        return 0;
    if (want == 0)
        want = 1;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= want)
            return h_value(i);
    }
    return h_value(H_BUCKETS - 1);
}

/* ---- the workload ---- */

enum { D_GUEST, D_BOOKING, D_RECOMMENDER, D_GAMIFICATION, D_PRIVACY, D_COUNT };
static const char *daemon_env[D_COUNT] = {"HM_GUESTD_ADDR", "HM_BOOKINGD_ADDR",
                                          "HM_RECOMMENDERD_ADDR", "HM_GAMIFICATIOND_ADDR",
                                          "HM_PRIVACYD_ADDR"};
static const char *addr[D_COUNT];

typedef struct ctx ctx_t;
typedef hm_status_t (*op_fn)(ctx_t *c);

typedef struct op {
    const char *name; /* the RPC */
    int weight;       /* share of the mix, in per mille */
    op_fn fn;
} op_t;

#define MAX_OPS 16
#define NCODES  17

typedef struct op_stats {
    hist_t hist;
    uint64_t calls, by_code[NCODES];
    uint64_t all_by_code[NCODES]; /* warm-up included: what the daemons' counters saw */
} op_stats_t;

struct ctx {
    hm_arena_t arena;
    uint64_t rng;
    unsigned id;
    int64_t last_done; /* completion of this caller's last measured call */
    op_stats_t st[MAX_OPS];
};

static hm_client_t *client;
static const char *md[5];
static char **guests;
static size_t nguests;
static int nitems = 1000;
static char run_tag[16];
static atomic_ulong seq;

static uint64_t rnd(ctx_t *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static const char *guest(ctx_t *c)
{
    return guests[rnd(c) % nguests];
}

/* "<prefix><v>" in the arena. */
static char *numbered(hm_arena_t *a, const char *prefix, unsigned long long v)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s%llu", prefix, v);
    return hm_arena_strdup(a, buf);
}

static hm_status_t call(ctx_t *c, int d, const char *method, const ProtobufCMessage *req,
                        const ProtobufCMessageDescriptor *resp_desc)
{
    ProtobufCMessage *resp = NULL;
    hm_client_opts_t o = {.timeout_ms = 5000, .max_attempts = 1, .metadata = md};
    return hm_client_unary(client, addr[d], method, req, resp_desc, &c->arena, &o, &resp);
}

static hm_status_t op_context(ctx_t *c)
{
    Hospitality__Guest__V1__GetPersonalizationContextRequest r =
        HOSPITALITY__GUEST__V1__GET_PERSONALIZATION_CONTEXT_REQUEST__INIT;
    r.guest_id = (char *)guest(c);
    return call(c, D_GUEST, "/hospitality.guest.v1.GuestService/GetPersonalizationContext", &r.base,
                &hospitality__guest__v1__get_personalization_context_response__descriptor);
}

static hm_status_t op_recommend(ctx_t *c)
{
    Hospitality__Recommender__V1__RecommendRequest r =
        HOSPITALITY__RECOMMENDER__V1__RECOMMEND_REQUEST__INIT;
    r.guest_id = (char *)guest(c);
    r.limit = 10;
    return call(c, D_RECOMMENDER, "/hospitality.recommender.v1.RecommenderService/Recommend",
                &r.base, &hospitality__recommender__v1__recommend_response__descriptor);
}

static void slot(ctx_t *c, Hospitality__Common__V1__Date *d, Hospitality__Common__V1__TimeOfDay *t,
                 char **venue, char **item, unsigned *day_out)
{
    time_t now = time(NULL) + 86400 * (time_t)(1 + rnd(c) % 60);
    struct tm tm;
    gmtime_r(&now, &tm);
    d->year = tm.tm_year + 1900;
    d->month = tm.tm_mon + 1;
    d->day = tm.tm_mday;
    t->hours = 11 + (int)(rnd(c) % 11);
    t->minutes = (rnd(c) % 2) * 30;
    *venue = numbered(&c->arena, "bench-venue-", rnd(c) % 20);
    *item = numbered(&c->arena, "table-", rnd(c) % 500);
    if (day_out)
        *day_out = (unsigned)tm.tm_yday;
}

static hm_status_t op_availability(ctx_t *c)
{
    Hospitality__Booking__V1__CheckAvailabilityRequest r =
        HOSPITALITY__BOOKING__V1__CHECK_AVAILABILITY_REQUEST__INIT;
    Hospitality__Common__V1__Date d = HOSPITALITY__COMMON__V1__DATE__INIT;
    Hospitality__Common__V1__TimeOfDay t = HOSPITALITY__COMMON__V1__TIME_OF_DAY__INIT;
    slot(c, &d, &t, &r.venue_id, &r.inventory_item_id, NULL);
    r.venue_type = HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RESTAURANT;
    r.booking_date = &d;
    r.booking_time = &t;
    r.duration_minutes = 90;
    r.party_size = 1 + (int)(rnd(c) % 6);
    return call(c, D_BOOKING, "/hospitality.booking.v1.BookingService/CheckAvailability", &r.base,
                &hospitality__booking__v1__check_availability_response__descriptor);
}

static hm_status_t op_profile(ctx_t *c)
{
    Hospitality__Guest__V1__GetProfileRequest r = HOSPITALITY__GUEST__V1__GET_PROFILE_REQUEST__INIT;
    r.guest_id = (char *)guest(c);
    return call(c, D_GUEST, "/hospitality.guest.v1.GuestService/GetProfile", &r.base,
                &hospitality__guest__v1__get_profile_response__descriptor);
}

static hm_status_t op_leaderboard(ctx_t *c)
{
    Hospitality__Gamification__V1__GetLeaderboardRequest r =
        HOSPITALITY__GAMIFICATION__V1__GET_LEADERBOARD_REQUEST__INIT;
    Hospitality__Common__V1__PageRequest p = HOSPITALITY__COMMON__V1__PAGE_REQUEST__INIT;
    p.page_size = 10;
    r.type = HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_TYPE__LEADERBOARD_TYPE_POINTS;
    r.window = HOSPITALITY__GAMIFICATION__V1__LEADERBOARD_WINDOW__LEADERBOARD_WINDOW_ALL_TIME;
    r.page = &p;
    return call(c, D_GAMIFICATION,
                "/hospitality.gamification.v1.GamificationService/GetLeaderboard", &r.base,
                &hospitality__gamification__v1__get_leaderboard_response__descriptor);
}

static hm_status_t op_interaction(ctx_t *c)
{
    Hospitality__Guest__V1__RecordInteractionRequest r =
        HOSPITALITY__GUEST__V1__RECORD_INTERACTION_REQUEST__INIT;
    Hospitality__Guest__V1__Interaction i = HOSPITALITY__GUEST__V1__INTERACTION__INIT;
    r.guest_id = (char *)guest(c);
    i.type = HOSPITALITY__COMMON__V1__INTERACTION_TYPE__INTERACTION_TYPE_VIEW;
    i.item_id = numbered(&c->arena, "bench-item-", rnd(c) % (unsigned long long)nitems);
    r.interaction = &i;
    r.idempotency_key = numbered(&c->arena, "bench-i-", atomic_fetch_add(&seq, 1));
    return call(c, D_GUEST, "/hospitality.guest.v1.GuestService/RecordInteraction", &r.base,
                &hospitality__guest__v1__record_interaction_response__descriptor);
}

static hm_status_t op_award(ctx_t *c)
{
    Hospitality__Gamification__V1__AwardPointsRequest r =
        HOSPITALITY__GAMIFICATION__V1__AWARD_POINTS_REQUEST__INIT;
    r.guest_id = (char *)guest(c);
    r.points = 1 + (int64_t)(rnd(c) % 50);
    r.source = HOSPITALITY__GAMIFICATION__V1__POINT_SOURCE__POINT_SOURCE_ORDER;
    char key[64];
    snprintf(key, sizeof key, "bench-%s-a-%lu", run_tag, atomic_fetch_add(&seq, 1));
    r.idempotency_key = hm_arena_strdup(&c->arena, key);
    r.reason = "bench";
    return call(c, D_GAMIFICATION, "/hospitality.gamification.v1.GamificationService/AwardPoints",
                &r.base, &hospitality__gamification__v1__award_points_response__descriptor);
}

static hm_status_t op_booking(ctx_t *c)
{
    Hospitality__Booking__V1__CreateBookingRequest r =
        HOSPITALITY__BOOKING__V1__CREATE_BOOKING_REQUEST__INIT;
    Hospitality__Common__V1__Date d = HOSPITALITY__COMMON__V1__DATE__INIT;
    Hospitality__Common__V1__TimeOfDay t = HOSPITALITY__COMMON__V1__TIME_OF_DAY__INIT;
    slot(c, &d, &t, &r.venue_id, &r.inventory_item_id, NULL);
    r.guest_id = (char *)guest(c);
    r.venue_type = HOSPITALITY__COMMON__V1__VENUE_TYPE__VENUE_TYPE_RESTAURANT;
    r.booking_date = &d;
    r.booking_time = &t;
    r.duration_minutes = 90;
    r.party_size = 2;
    r.guest_name = "Bench Guest";
    char key[64];
    snprintf(key, sizeof key, "bench-%s-b-%lu", run_tag, atomic_fetch_add(&seq, 1));
    r.idempotency_key = hm_arena_strdup(&c->arena, key);
    return call(c, D_BOOKING, "/hospitality.booking.v1.BookingService/CreateBooking", &r.base,
                &hospitality__booking__v1__create_booking_response__descriptor);
}

/* privacyd's hot path (other daemons ask it for consent); weight 0: only with --only. */
static hm_status_t op_consent(ctx_t *c)
{
    Hospitality__Privacy__V1__GetConsentRequest r =
        HOSPITALITY__PRIVACY__V1__GET_CONSENT_REQUEST__INIT;
    r.guest_id = (char *)guest(c);
    return call(c, D_PRIVACY, "/hospitality.privacy.v1.PrivacyService/GetConsent", &r.base,
                &hospitality__privacy__v1__get_consent_response__descriptor);
}

/* The mix (per mille): read-heavy like DeathStarBench's hotel reservation (search 60%,
 * recommend 39%, login 0.5%, reserve 0.5%), with this mesh's writes given a larger share. */
static op_t ops[] = {
    {"GetPersonalizationContext", 300, op_context},
    {"Recommend", 300, op_recommend},
    {"CheckAvailability", 200, op_availability},
    {"GetProfile", 100, op_profile},
    {"RecordInteraction", 40, op_interaction},
    {"AwardPoints", 30, op_award},
    {"GetLeaderboard", 20, op_leaderboard},
    {"CreateBooking", 10, op_booking},
    {"GetConsent", 0, op_consent},
};
#define NOPS (sizeof ops / sizeof ops[0])

static size_t pick(ctx_t *c)
{
    int r = (int)(rnd(c) % 1000);
    for (size_t i = 0; i < NOPS; i++) {
        if (r < ops[i].weight)
            return i;
        r -= ops[i].weight;
    }
    return 0;
}

/* ---- runner ---- */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_until_us(int64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000), (long)(t % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static int nthreads = 32;
static double rate; /* 0: closed loop */
static double duration_s = 20, warmup_s = 3;
static int64_t t_start, t_measure, t_end;

static void *runner(void *arg)
{
    ctx_t *c = arg;
    double interval = rate > 0 ? (double)nthreads * 1e6 / rate : 0;
    double next = (double)t_start + (interval > 0 ? interval * c->id / nthreads : 0);

    for (;;) {
        int64_t sched;
        if (interval > 0) {
            sched = (int64_t)next;
            next += interval;
            if (sched >= t_end)
                break;
            sleep_until_us(sched);
        } else {
            sched = now_us();
            if (sched >= t_end)
                break;
        }
        size_t o = pick(c);
        hm_status_t st = ops[o].fn(c);
        int64_t done = now_us();
        hm_arena_reset(&c->arena);
        op_stats_t *s = &c->st[o];
        s->all_by_code[(unsigned)st.code < NCODES ? st.code : NCODES - 1]++;
        if (sched < t_measure)
            continue;
        s->calls++;
        c->last_done = done;
        s->by_code[(unsigned)st.code < NCODES ? st.code : NCODES - 1]++;
        s->hist.n[h_index((uint64_t)(done - sched))]++;
        s->hist.count++;
    }
    return NULL;
}

/* ---- set-up: guests, consent, catalogue ---- */

static int setup(int nwanted)
{
    ctx_t c = {.rng = 0x9e3779b97f4a7c15ULL};
    hm_arena_init(&c.arena, 0);
    guests = calloc((size_t)nwanted, sizeof *guests);
    for (int i = 0; i < nwanted; i++) {
        Hospitality__Guest__V1__CreateGuestRequest r =
            HOSPITALITY__GUEST__V1__CREATE_GUEST_REQUEST__INIT;
        Hospitality__Guest__V1__Profile p = HOSPITALITY__GUEST__V1__PROFILE__INIT;
        Hospitality__Guest__V1__CreateGuestResponse *resp = NULL;
        char email[96];
        snprintf(email, sizeof email, "bench-%s-%d@example.org", run_tag, i);
        p.name = "Bench Guest";
        p.email = email;
        p.time_zone = "Europe/Paris";
        r.profile = &p;
        hm_client_opts_t o = {.timeout_ms = 10000, .metadata = md};
        hm_status_t st =
            hm_client_unary(client, addr[D_GUEST], "/hospitality.guest.v1.GuestService/CreateGuest",
                            &r.base, &hospitality__guest__v1__create_guest_response__descriptor,
                            &c.arena, &o, (ProtobufCMessage **)&resp);
        if (st.code != HM_CODE_OK || resp == NULL || resp->profile == NULL) {
            fprintf(stderr, "meshbench: CreateGuest: %d %s\n", st.code,
                    st.message ? st.message : "");
            return 1;
        }
        guests[nguests++] = strdup(resp->profile->guest_id);
        if (i % 2 == 0 && addr[D_PRIVACY]) { /* half the guests consent to personalization */
            Hospitality__Privacy__V1__UpdateConsentRequest u =
                HOSPITALITY__PRIVACY__V1__UPDATE_CONSENT_REQUEST__INIT;
            Hospitality__Privacy__V1__ConsentChange ch =
                HOSPITALITY__PRIVACY__V1__CONSENT_CHANGE__INIT;
            Hospitality__Privacy__V1__ConsentChange *chs[1] = {&ch};
            ProtobufCMessage *ur = NULL;
            ch.purpose = HOSPITALITY__COMMON__V1__CONSENT_PURPOSE__CONSENT_PURPOSE_PERSONALIZATION;
            ch.status = HOSPITALITY__COMMON__V1__CONSENT_STATUS__CONSENT_STATUS_GRANTED;
            u.guest_id = guests[nguests - 1];
            u.n_changes = 1;
            u.changes = chs;
            u.notice_version = "bench";
            u.source = HOSPITALITY__PRIVACY__V1__CONSENT_SOURCE__CONSENT_SOURCE_IMPORT;
            st = hm_client_unary(client, addr[D_PRIVACY],
                                 "/hospitality.privacy.v1.PrivacyService/UpdateConsent", &u.base,
                                 &hospitality__privacy__v1__update_consent_response__descriptor,
                                 &c.arena, &o, &ur);
            if (st.code != HM_CODE_OK)
                fprintf(stderr, "meshbench: UpdateConsent: %d %s (continuing)\n", st.code,
                        st.message ? st.message : "");
        }
        hm_arena_reset(&c.arena);
    }
    static const char *cats[] = {"italian", "french", "japanese", "dessert", "wine", "spa"};
    for (int base = 0; addr[D_RECOMMENDER] && base < nitems; base += 250) {
        Hospitality__Recommender__V1__UpsertItemsRequest r =
            HOSPITALITY__RECOMMENDER__V1__UPSERT_ITEMS_REQUEST__INIT;
        int n = nitems - base < 250 ? nitems - base : 250;
        r.items = hm_arena_alloc(&c.arena, (size_t)n * sizeof *r.items);
        for (int i = 0; i < n; i++) {
            Hospitality__Recommender__V1__Item *it = hm_arena_alloc(&c.arena, sizeof *it);
            Hospitality__Common__V1__Money *m = hm_arena_alloc(&c.arena, sizeof *m);
            hospitality__recommender__v1__item__init(it);
            hospitality__common__v1__money__init(m);
            it->item_id = numbered(&c.arena, "bench-item-", (unsigned long long)(base + i));
            it->name = numbered(&c.arena, "Bench item ", (unsigned long long)(base + i));
            it->category = (char *)cats[(base + i) % 6];
            it->kind = HOSPITALITY__RECOMMENDER__V1__ITEM_KIND__ITEM_KIND_MENU_ITEM;
            m->currency = "EUR";
            m->amount_minor = 500 + (int64_t)(rnd(&c) % 5000);
            it->price = m;
            r.items[i] = it;
        }
        r.n_items = (size_t)n;
        ProtobufCMessage *resp = NULL;
        hm_client_opts_t o = {.timeout_ms = 30000, .metadata = md};
        hm_status_t st = hm_client_unary(
            client, addr[D_RECOMMENDER],
            "/hospitality.recommender.v1.RecommenderService/UpsertItems", &r.base,
            &hospitality__recommender__v1__upsert_items_response__descriptor, &c.arena, &o, &resp);
        if (st.code != HM_CODE_OK) {
            fprintf(stderr, "meshbench: UpsertItems: %d %s\n", st.code,
                    st.message ? st.message : "");
            return 1;
        }
        hm_arena_reset(&c.arena);
    }
    hm_arena_deinit(&c.arena);
    return 0;
}

static const char *code_name(int code)
{
    static const char *n[NCODES] = {"OK",
                                    "CANCELLED",
                                    "UNKNOWN",
                                    "INVALID_ARGUMENT",
                                    "DEADLINE_EXCEEDED",
                                    "NOT_FOUND",
                                    "ALREADY_EXISTS",
                                    "PERMISSION_DENIED",
                                    "RESOURCE_EXHAUSTED",
                                    "FAILED_PRECONDITION",
                                    "ABORTED",
                                    "OUT_OF_RANGE",
                                    "UNIMPLEMENTED",
                                    "INTERNAL",
                                    "UNAVAILABLE",
                                    "DATA_LOSS",
                                    "UNAUTHENTICATED"};
    return n[code];
}

static void usage(void)
{
    fprintf(stderr,
            "usage: meshbench [--threads T] [--rate R] [--duration S] [--warmup S] [--guests N] "
            "[--items N] [--only OP] [--random-guests N] [--guest-file F] [--setup-only]\n"
            "  --rate 0 (default): closed loop with T callers; --rate R: open loop at R calls/s "
            "over T callers\n  --setup-only: create the guests (and catalogue), print their ids "
            "and exit; --guest-file F: use the ids in F (one per line) instead of a set-up\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"threads", 1, NULL, 't'},    {"rate", 1, NULL, 'r'},          {"duration", 1, NULL, 'd'},
        {"warmup", 1, NULL, 'w'},     {"guests", 1, NULL, 'g'},        {"items", 1, NULL, 'i'},
        {"only", 1, NULL, 'o'},       {"random-guests", 1, NULL, 'R'}, {"guest-file", 1, NULL, 'F'},
        {"setup-only", 0, NULL, 'S'}, {"help", 0, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int nguest_req = 500, random_guests = 0, opt;
    bool setup_only = false;
    const char *only = NULL, *guest_file = NULL;
    while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (opt) {
        case 't':
            nthreads = atoi(optarg);
            break;
        case 'r':
            rate = atof(optarg);
            break;
        case 'd':
            duration_s = atof(optarg);
            break;
        case 'w':
            warmup_s = atof(optarg);
            break;
        case 'g':
            nguest_req = atoi(optarg);
            break;
        case 'i':
            nitems = atoi(optarg);
            break;
        case 'o':
            only = optarg;
            break;
        case 'R':
            random_guests = atoi(optarg);
            break;
        case 'F':
            guest_file = optarg;
            break;
        case 'S':
            setup_only = true;
            break;
        default:
            usage();
            return opt == 'h' ? 0 : 2;
        }
    }
    if (nthreads < 1 || nthreads > 1024 || nguest_req < 1 || nitems < 1 || duration_s <= 0) {
        usage();
        return 2;
    }
    if (only) { /* one RPC at full weight: a per-RPC benchmark against one daemon */
        size_t k = 0;
        while (k < NOPS && strcmp(ops[k].name, only) != 0)
            k++;
        if (k == NOPS) {
            fprintf(stderr, "meshbench: --only: no operation %s\n", only);
            return 2;
        }
        for (size_t i = 0; i < NOPS; i++)
            ops[i].weight = i == k ? 1000 : 0;
    }
    for (int d = 0; d < D_COUNT; d++)
        if (!(addr[d] = getenv(daemon_env[d])) && !only) {
            fprintf(stderr, "meshbench: %s is not set\n", daemon_env[d]);
            return 2;
        }
    const char *tok = getenv("HM_BENCH_TOKEN");
    if (!tok) {
        fprintf(stderr, "meshbench: HM_BENCH_TOKEN is not set\n");
        return 2;
    }
    static char bearer[4096];
    snprintf(bearer, sizeof bearer, "Bearer %s", tok);
    md[0] = "authorization";
    md[1] = bearer;
    md[2] = NULL;
    hm_log_init("meshbench", HM_LOG_WARN);
    char u[HM_UUID_LEN + 1];
    hm_uuid_v4(u);
    memcpy(run_tag, u, 8);
    uint64_t run_seed = strtoull(run_tag, NULL, 16);
    client = hm_client_create(4 * 1024 * 1024);
    if (guest_file) { /* guests an earlier --setup-only made */
        FILE *f = fopen(guest_file, "r");
        char line[128];
        if (!f) {
            fprintf(stderr, "meshbench: %s: cannot open\n", guest_file);
            return 2;
        }
        size_t cap = 1024;
        guests = calloc(cap, sizeof *guests);
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = '\0';
            if (!hm_uuid_valid(line))
                continue;
            if (nguests == cap)
                guests = realloc(guests, (cap *= 2) * sizeof *guests);
            guests[nguests++] = strdup(line);
        }
        fclose(f);
        if (nguests == 0) {
            fprintf(stderr, "meshbench: %s: no guest ids\n", guest_file);
            return 2;
        }
    } else if (random_guests > 0) { /* no set-up: random ids (daemons create on first use) */
        guests = calloc((size_t)random_guests, sizeof *guests);
        for (int i = 0; i < random_guests; i++) {
            guests[i] = malloc(HM_UUID_LEN + 1);
            hm_uuid_v4(guests[i]);
        }
        nguests = (size_t)random_guests;
    } else {
        fprintf(stderr, "meshbench: set-up: %d guests, %d items\n", nguest_req, nitems);
        if (setup(nguest_req) != 0)
            return 1;
        if (setup_only) {
            for (size_t i = 0; i < nguests; i++)
                printf("%s\n", guests[i]);
            return 0;
        }
    }

    ctx_t *ctx = calloc((size_t)nthreads, sizeof *ctx);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    t_start = now_us() + 100000;
    t_measure = t_start + (int64_t)(warmup_s * 1e6);
    t_end = t_measure + (int64_t)(duration_s * 1e6);
    fprintf(stderr, "meshbench: %s, %d callers, %.0f s warm-up + %.0f s measured\n",
            rate > 0 ? "open loop" : "closed loop", nthreads, warmup_s, duration_s);
    for (int i = 0; i < nthreads; i++) {
        ctx[i].id = (unsigned)i;
        /* Seeded per run as well as per caller: with the same sequence every run, a run
         * would ask for the very slots the last one booked and see only conflicts. */
        ctx[i].rng = (0x2545F4914F6CDD1DULL * (uint64_t)(i + 1)) ^ (run_seed << 16) ^ 1;
        hm_arena_init(&ctx[i].arena, 0);
        pthread_create(&th[i], NULL, runner, &ctx[i]);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);

    static op_stats_t tot[MAX_OPS];
    static hist_t all;
    uint64_t calls = 0, ok = 0;
    /* Achieved throughput: the measured calls over the time until the last of them completed
     * (open loop past capacity runs late: its calls still start, but after their schedule). */
    int64_t last = t_end;
    for (int i = 0; i < nthreads; i++)
        if (ctx[i].last_done > last)
            last = ctx[i].last_done;
    double elapsed_s = (double)(last - t_measure) / 1e6;
    for (int i = 0; i < nthreads; i++) {
        for (size_t o = 0; o < NOPS; o++) {
            op_stats_t *s = &ctx[i].st[o];
            tot[o].calls += s->calls;
            for (int k = 0; k < NCODES; k++) {
                tot[o].by_code[k] += s->by_code[k];
                tot[o].all_by_code[k] += s->all_by_code[k];
            }
            for (size_t b = 0; b < H_BUCKETS; b++) {
                tot[o].hist.n[b] += s->hist.n[b];
                all.n[b] += s->hist.n[b];
            }
            tot[o].hist.count += s->hist.count;
            all.count += s->hist.count;
        }
        hm_arena_deinit(&ctx[i].arena);
    }
    printf("{\"mode\":\"%s\",\"threads\":%d,\"target_rate\":%.0f,\"duration_s\":%.1f,"
           "\"guests\":%zu,\"items\":%d,\"ops\":[",
           rate > 0 ? "open" : "closed", nthreads, rate, duration_s, nguests, nitems);
    for (size_t o = 0; o < NOPS; o++) {
        calls += tot[o].calls;
        ok += tot[o].by_code[0];
        printf("%s{\"op\":\"%s\",\"weight\":%d,\"calls\":%llu,\"p50_us\":%llu,\"p99_us\":%llu,"
               "\"p999_us\":%llu,\"codes\":{",
               o ? "," : "", ops[o].name, ops[o].weight, (unsigned long long)tot[o].calls,
               (unsigned long long)h_quantile(&tot[o].hist, 0.5),
               (unsigned long long)h_quantile(&tot[o].hist, 0.99),
               (unsigned long long)h_quantile(&tot[o].hist, 0.999));
        int first = 1;
        for (int k = 0; k < NCODES; k++)
            if (tot[o].by_code[k]) {
                printf("%s\"%s\":%llu", first ? "" : ",", code_name(k),
                       (unsigned long long)tot[o].by_code[k]);
                first = 0;
            }
        printf("},\"all_codes\":{");
        first = 1;
        for (int k = 0; k < NCODES; k++)
            if (tot[o].all_by_code[k]) {
                printf("%s\"%s\":%llu", first ? "" : ",", code_name(k),
                       (unsigned long long)tot[o].all_by_code[k]);
                first = 0;
            }
        printf("}}");
    }
    printf("],\"calls\":%llu,\"ok\":%llu,\"rate\":%.1f,\"elapsed_s\":%.1f,\"p50_us\":%llu,"
           "\"p99_us\":%llu,\"p999_us\":%llu}\n",
           (unsigned long long)calls, (unsigned long long)ok, (double)calls / elapsed_s, elapsed_s,
           (unsigned long long)h_quantile(&all, 0.5), (unsigned long long)h_quantile(&all, 0.99),
           (unsigned long long)h_quantile(&all, 0.999));
    for (size_t i = 0; i < nguests; i++)
        free(guests[i]);
    free(guests);
    free(ctx);
    free(th);
    hm_client_destroy(client);
    return 0;
}
