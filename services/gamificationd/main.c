/*
 * gamificationd - points ledger, levels, achievements, challenges, leaderboards and streaks
 * (docs/gamification.md).
 *
 * main.c holds the configuration, the method tables, the event consumer's declaration and the
 * periodic tasks. The ledger is in ledger.c (with its SQL functions in migration 002), rules,
 * achievements, streaks, challenges, the consumer and the data-subject interface in game.c,
 * leaderboards in board.c.
 */
#include <stddef.h>

#include "gm.h"
#include "hm/migrate.h"
#include "hospitality/privacy/v1/privacy.pb-c.h"

extern const hm_migration_t gamificationd_migrations[];
extern const size_t gamificationd_nmigrations;

static const hm_cfg_var_t config_vars[] = {
    HM_CFG_VAR(gm_config_t, level_base, "HM_LEVEL_BASE", HM_CFG_INT, "100", 1, 1000000, NULL, 0,
               "XP for level 2; level n needs base*(n-1)^2 XP"),
    HM_CFG_VAR(gm_config_t, streak_grace, "HM_STREAK_GRACE", HM_CFG_BOOL, "on", 0, 0, NULL, 0,
               "forgive one missed day per streak"),
};

#define GM(rpc, snake, fn, ...)                                                                    \
    {                                                                                              \
        "/hospitality.gamification.v1.GamificationService/" #rpc,                                  \
            &hospitality__gamification__v1__##snake##_request__descriptor,                         \
            &hospitality__gamification__v1__##snake##_response__descriptor, fn, __VA_ARGS__        \
    }
#define SELF                                                                                       \
    {                                                                                              \
        .roles = HM_ROLES_ANY, .self_field = "guest_id"                                            \
    }
#define ANY                                                                                        \
    {                                                                                              \
        .roles = HM_ROLES_ANY                                                                      \
    }
#define STAFF                                                                                      \
    {                                                                                              \
        .roles = HM_ROLE_STAFF                                                                     \
    }

static const hm_method_t methods[] = {
    GM(GetStats, get_stats, gm_get_stats, SELF),
    GM(AwardPoints, award_points, gm_award_points, STAFF),
    GM(RedeemPoints, redeem_points, gm_redeem_points, SELF),
    GM(ListTransactions, list_transactions, gm_list_transactions, SELF),
    GM(ListAchievements, list_achievements, gm_list_achievements, ANY),
    GM(GetAchievementProgress, get_achievement_progress, gm_get_achievement_progress, SELF),
    GM(ListChallenges, list_challenges, gm_list_challenges, ANY),
    GM(JoinChallenge, join_challenge, gm_join_challenge, SELF),
    GM(GetChallengeProgress, get_challenge_progress, gm_get_challenge_progress, SELF),
    GM(GetLeaderboard, get_leaderboard, gm_get_leaderboard, ANY),
    GM(GetRank, get_rank, gm_get_rank, ANY),
    GM(RecordActivity, record_activity, gm_record_activity, SELF),
    GM(UpsertRule, upsert_rule, gm_upsert_rule, STAFF),
    GM(ListRules, list_rules, gm_list_rules, STAFF),
};
static const hm_service_t service = {"hospitality.gamification.v1.GamificationService", methods,
                                     sizeof methods / sizeof methods[0]};

/* privacyd's fan-out: service callers only (admin is always allowed). */
static const hm_method_t subject_methods[] = {
    {"/hospitality.privacy.v1.DataSubjectService/ExportSubjectData",
     &hospitality__privacy__v1__export_subject_data_request__descriptor,
     &hospitality__privacy__v1__export_subject_data_response__descriptor,
     gm_export_subject,
     {.roles = HM_ROLE_SERVICE}},
    {"/hospitality.privacy.v1.DataSubjectService/EraseSubjectData",
     &hospitality__privacy__v1__erase_subject_data_request__descriptor,
     &hospitality__privacy__v1__erase_subject_data_response__descriptor,
     gm_erase_subject,
     {.roles = HM_ROLE_SERVICE}},
};
static const hm_service_t subject_service = {"hospitality.privacy.v1.DataSubjectService",
                                             subject_methods, 2};
static const hm_service_t *const services[] = {&service, &subject_service};

static const char *const streams[] = {"hm:events:booking", "hm:events:feedback", "hm:events:order",
                                      "hm:events:marketplace", "hm:events:guest"};
static const char *const types[] = {
    "booking.completed",         "booking.cancelled", "feedback.review.submitted",
    "feedback.rating.submitted", "order.created",     "marketplace.purchase.completed",
    "guest.interaction.recorded"};
static const hm_daemon_consumer_t consumer = {streams,         sizeof streams / sizeof streams[0],
                                              types,           sizeof types / sizeof types[0],
                                              gm_handle_event, true};
static const hm_task_t tasks[] = {
    {"points-release-expire", 5000, gm_task_release_expire},
    {"default-challenges", 3600000, gm_task_challenges},
    {"leaderboards", 250, gm_board_task},
};

int main(int argc, char **argv)
{
    const hm_daemon_t daemon = {
        .name = "gamificationd",
        .description = "points ledger, levels, achievements, challenges, leaderboards and streaks",
        .default_grpc_addr = "0.0.0.0:50054",
        .default_admin_addr = "0.0.0.0:9104",
        .services = services,
        .nservices = 2,
        .config_vars = config_vars,
        .nconfig_vars = sizeof config_vars / sizeof config_vars[0],
        .config = &gm_cfg,
        .migrations = gamificationd_migrations,
        .nmigrations = gamificationd_nmigrations,
        .consumer = &consumer,
        .tasks = tasks,
        .ntasks = sizeof tasks / sizeof tasks[0],
        .data_subject = true,
    };
    return hm_daemon_main(argc, argv, &daemon);
}
