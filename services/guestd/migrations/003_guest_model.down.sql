DROP FUNCTION IF EXISTS gd_merge_preferences(uuid, uuid[]);
DROP FUNCTION IF EXISTS gd_consent(uuid, smallint, smallint, bigint, timestamptz);
DROP FUNCTION IF EXISTS gd_effective(uuid, text, timestamptz);
DROP FUNCTION IF EXISTS gd_put_preferences(uuid, jsonb, bigint, smallint, text);
DROP FUNCTION IF EXISTS gd_rebuild_signals(uuid);
DROP TRIGGER IF EXISTS interactions_signals ON interactions;
DROP FUNCTION IF EXISTS gd_interaction_trigger();
DROP FUNCTION IF EXISTS gd_apply_interaction(interactions);
DROP FUNCTION IF EXISTS gd_recompute_implicit(uuid);
DROP FUNCTION IF EXISTS gd_recompute_segments(uuid);
DROP FUNCTION IF EXISTS gd_metrics(uuid);
DROP FUNCTION IF EXISTS gd_decay(double precision, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS gd_weight(smallint, double precision);
DROP FUNCTION IF EXISTS gd_touch(uuid);
DROP TABLE IF EXISTS guest_erasures, pii_access_log, guest_consents, guest_app_profiles,
    guest_segment_state, guest_segments, segment_rules, guest_time_slots,
    guest_category_affinity, guest_signals, interactions, guest_implicit_preferences,
    venue_brands, preference_defaults, guest_preferences, guest_merges, guest_identifiers,
    guest_profile_versions;
ALTER TABLE guests DROP COLUMN IF EXISTS merged_into, DROP COLUMN IF EXISTS ctx_version,
    DROP COLUMN IF EXISTS erased_at, DROP COLUMN IF EXISTS pii_reads;
