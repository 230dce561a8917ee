DROP FUNCTION gm_board_rows(uuid);
DROP FUNCTION gm_streak(uuid, date, boolean);
DROP FUNCTION gm_bump(uuid, text, bigint);
DROP FUNCTION gm_expire_due(integer);
DROP FUNCTION gm_release_due(integer);
DROP FUNCTION gm_reverse(uuid, text);
DROP FUNCTION gm_redeem(uuid, bigint, text, text, text);
DROP FUNCTION gm_award(uuid, bigint, smallint, text, text, text, bigint, timestamptz, timestamptz,
                       text, bigint, bigint);
DROP FUNCTION gm_level_for(bigint, bigint);
DROP FUNCTION gm_account(uuid, text);
DROP TABLE gm_participants, gm_challenges, gm_unlocks, gm_achievements, gm_seen, gm_counters,
           gm_rule_versions, gm_rules, gm_lots, gm_entries, gm_transactions, gm_accounts;
DROP FUNCTION gm_entries_balanced();
