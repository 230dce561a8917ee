-- guestd's model beyond the profile row: profile history, identifiers and merges, versioned
-- preferences with inherited defaults, interactions, incrementally maintained behaviour
-- signals, rule-based segments, per-app profiles, the consent projection and a context
-- version that every change bumps (the personalization context cache is keyed by it).

ALTER TABLE guests
    ADD COLUMN merged_into    uuid REFERENCES guests (guest_id),
    ADD COLUMN ctx_version    bigint NOT NULL DEFAULT 1,
    ADD COLUMN erased_at      timestamptz,
    ADD COLUMN pii_reads      bigint NOT NULL DEFAULT 0;

-- Every version of a profile: the packed hospitality.guest.v1.Profile, encrypted (it holds
-- name, email and phone), with what changed and who changed it.
CREATE TABLE guest_profile_versions (
    guest_id       uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    version        bigint      NOT NULL,
    snapshot_enc   bytea       NOT NULL,
    changed_fields text[]      NOT NULL DEFAULT '{}',
    actor_type     smallint    NOT NULL DEFAULT 0,
    actor_id       text        NOT NULL DEFAULT '',
    changed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, version)
);

-- Identifiers. value_index is a keyed HMAC of "type:app:normalized value" (unique: one guest
-- per identifier); the value itself is encrypted, bound to its index.
CREATE TABLE guest_identifiers (
    identifier_id bigserial   PRIMARY KEY,
    guest_id      uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    type          smallint    NOT NULL,
    app           smallint    NOT NULL DEFAULT 0,
    value_index   text        NOT NULL UNIQUE,
    value_enc     bytea       NOT NULL,
    verified      boolean     NOT NULL DEFAULT false,
    first_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    merge_id      uuid,
    rule_id       text        NOT NULL DEFAULT 'linked'
);
CREATE INDEX guest_identifiers_guest ON guest_identifiers (guest_id);

-- Merges with their evidence (packed identifiers, encrypted) and the rule that decided them.
CREATE TABLE guest_merges (
    merge_id           uuid        PRIMARY KEY,
    surviving_guest_id uuid        NOT NULL,
    merged_guest_ids   uuid[]      NOT NULL,
    rule_id            text        NOT NULL,
    evidence_enc       bytea,
    evidence_index     text[]      NOT NULL DEFAULT '{}',
    reason             text        NOT NULL DEFAULT '',
    actor_type         smallint    NOT NULL DEFAULT 0,
    actor_id           text        NOT NULL DEFAULT '',
    interactions_moved bigint      NOT NULL DEFAULT 0,
    identifiers_moved  bigint      NOT NULL DEFAULT 0,
    idempotency_key    text        UNIQUE,
    merged_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX guest_merges_surviving ON guest_merges (surviving_guest_id);
CREATE INDEX guest_merges_merged ON guest_merges USING gin (merged_guest_ids);

-- Explicit preferences, one row per version, as a flat JSON object keyed by field path of
-- hospitality.guest.v1.ExplicitPreferences ("dietary_restrictions",
-- "notification_settings.email_enabled", "other.budget"); absent keys inherit defaults.
CREATE TABLE guest_preferences (
    guest_id       uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    version        bigint      NOT NULL,
    prefs          jsonb       NOT NULL DEFAULT '{}',
    changed_fields text[]      NOT NULL DEFAULT '{}',
    actor_type     smallint    NOT NULL DEFAULT 0,
    actor_id       text        NOT NULL DEFAULT '',
    changed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, version)
);

-- Defaults in the same flat form: scope 'platform' (scope_id ''), 'brand' or 'venue'.
CREATE TABLE preference_defaults (
    scope    text  NOT NULL CHECK (scope IN ('platform', 'brand', 'venue')),
    scope_id text  NOT NULL DEFAULT '',
    prefs    jsonb NOT NULL,
    PRIMARY KEY (scope, scope_id)
);
CREATE TABLE venue_brands (
    venue_id text PRIMARY KEY,
    brand_id text NOT NULL
);
INSERT INTO preference_defaults VALUES
    ('platform', '', '{"notification_settings.email_enabled": true,
                       "notification_settings.sms_enabled": false,
                       "notification_settings.push_enabled": true,
                       "notification_settings.in_app_enabled": true,
                       "language": "en"}');

-- Preferences derived from behaviour.
CREATE TABLE guest_implicit_preferences (
    guest_id   uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    key        text        NOT NULL,
    value      text        NOT NULL,
    confidence double precision NOT NULL,
    source     text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, key, value)
);

CREATE TABLE interactions (
    interaction_id  uuid        PRIMARY KEY,
    guest_id        uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    type            smallint    NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    venue_id        text        NOT NULL DEFAULT '',
    item_id         text        NOT NULL DEFAULT '',
    category        text        NOT NULL DEFAULT '',
    booking_id      text        NOT NULL DEFAULT '',
    order_id        text        NOT NULL DEFAULT '',
    amount_minor    bigint      NOT NULL DEFAULT 0,
    currency        text        NOT NULL DEFAULT '',
    search_query    text        NOT NULL DEFAULT '',
    search_filters  jsonb       NOT NULL DEFAULT '{}',
    rating          double precision NOT NULL DEFAULT 0,
    app             smallint    NOT NULL DEFAULT 0,
    session_id      text        NOT NULL DEFAULT '',
    platform        text        NOT NULL DEFAULT '',
    page            text        NOT NULL DEFAULT '',
    referrer        text        NOT NULL DEFAULT '',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    party_size      integer     NOT NULL DEFAULT 0,
    source_event_id text        UNIQUE,
    -- "<guest at recording>:<client key>[:<index in batch>]": retries are found, merges keep it.
    idempotency_key text        UNIQUE
);
CREATE INDEX interactions_guest_time ON interactions (guest_id, occurred_at DESC, interaction_id DESC);
CREATE INDEX interactions_recorded ON interactions (recorded_at);

-- Behaviour signals maintained by the interactions trigger (and rebuilt after merges).
CREATE TABLE guest_signals (
    guest_id            uuid        PRIMARY KEY REFERENCES guests ON DELETE CASCADE,
    first_interaction_at timestamptz,
    last_interaction_at timestamptz,
    interactions_total  bigint      NOT NULL DEFAULT 0,
    bookings_created    bigint      NOT NULL DEFAULT 0,
    bookings_completed  bigint      NOT NULL DEFAULT 0,
    bookings_cancelled  bigint      NOT NULL DEFAULT 0,
    lifetime_spend_minor bigint     NOT NULL DEFAULT 0,
    party_size_sum      bigint      NOT NULL DEFAULT 0,
    party_size_count    bigint      NOT NULL DEFAULT 0,
    computed_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Category affinity with exponential time decay: `score` is the value at score_at.
CREATE TABLE guest_category_affinity (
    guest_id            uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    category            text        NOT NULL,
    score               double precision NOT NULL,
    score_at            timestamptz NOT NULL,
    last_interaction_at timestamptz NOT NULL,
    PRIMARY KEY (guest_id, category)
);
CREATE TABLE guest_time_slots (
    guest_id    uuid     NOT NULL REFERENCES guests ON DELETE CASCADE,
    day_of_week smallint NOT NULL,
    hour_of_day smallint NOT NULL,
    n           bigint   NOT NULL,
    PRIMARY KEY (guest_id, day_of_week, hour_of_day)
);

-- Declarative segment rules: a guest is in a segment when every row of it holds.
CREATE TABLE segment_rules (
    segment_id   text    NOT NULL,
    name         text    NOT NULL,
    metric       text    NOT NULL,
    op           text    NOT NULL CHECK (op IN ('>=', '<=', '>', '<', '=')),
    threshold    numeric NOT NULL,
    rule_version text    NOT NULL DEFAULT '1',
    PRIMARY KEY (segment_id, metric)
);
INSERT INTO segment_rules (segment_id, name, metric, op, threshold) VALUES
    ('new',              'New guest',        'days_since_first_seen',      '<=', 30),
    ('frequent_diner',   'Frequent diner',   'dining_bookings_90_days',    '>=', 4),
    ('high_value',       'High value',       'lifetime_spend_minor',       '>=', 100000),
    ('lapsed',           'Lapsed',           'days_since_last_interaction', '>=', 90),
    ('lapsed',           'Lapsed',           'interactions_total',         '>=', 1),
    ('family_traveller', 'Family traveller', 'average_party_size',         '>=', 3),
    ('family_traveller', 'Family traveller', 'bookings_created',           '>=', 2);

CREATE TABLE guest_segments (
    guest_id     uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    segment_id   text        NOT NULL,
    reason       text        NOT NULL,
    rule_version text        NOT NULL,
    since        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, segment_id)
);
CREATE TABLE guest_segment_state (
    guest_id    uuid        PRIMARY KEY REFERENCES guests ON DELETE CASCADE,
    computed_at timestamptz NOT NULL
);

-- Per-app profiles (seed 003). `fields_enc` is the encrypted JSON object of the app's fields
-- (mapped fields mirror personal data of the unified profile).
CREATE TABLE guest_app_profiles (
    guest_id               uuid        NOT NULL REFERENCES guests ON DELETE CASCADE,
    app                    smallint    NOT NULL,
    app_user_id            text        NOT NULL DEFAULT '',
    fields_enc             bytea,
    preferences            jsonb       NOT NULL DEFAULT '{}',
    version                bigint      NOT NULL DEFAULT 1,
    sync_status            smallint    NOT NULL DEFAULT 2,
    synced_profile_version bigint      NOT NULL DEFAULT 0,
    last_synced_at         timestamptz,
    last_error             text        NOT NULL DEFAULT '',
    failed_attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, app)
);
CREATE INDEX guest_app_profiles_due ON guest_app_profiles (next_attempt_at) WHERE sync_status <> 1;

-- Consent as privacyd publishes it (guest.consent.updated): the projection guestd's
-- personalization context reads. No row means not granted.
CREATE TABLE guest_consents (
    guest_id   uuid        NOT NULL,
    purpose    smallint    NOT NULL,
    status     smallint    NOT NULL,
    version    bigint      NOT NULL,
    expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (guest_id, purpose)
);

-- Staff reads of personal data (privacy by design): who read whose profile, when, why.
CREATE TABLE pii_access_log (
    id         bigserial   PRIMARY KEY,
    guest_id   uuid        NOT NULL,
    actor_type smallint    NOT NULL,
    actor_id   text        NOT NULL,
    method     text        NOT NULL,
    request_id text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX pii_access_log_guest ON pii_access_log (guest_id, at);

-- Erasure receipts (DataSubjectService), kept so a retried request answers the same.
CREATE TABLE guest_erasures (
    request_id text        PRIMARY KEY,
    guest_id   uuid        NOT NULL,
    receipt    bytea       NOT NULL,
    erased_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- ------------------------------------------------------------------------------------------
-- Functions

-- Any change to what the personalization context is built from bumps the guest's ctx_version.
CREATE FUNCTION gd_touch(g uuid) RETURNS void LANGUAGE sql AS $$
    UPDATE guests SET ctx_version = ctx_version + 1 WHERE guest_id = g
$$;

-- Weight of one interaction for category affinity.
CREATE FUNCTION gd_weight(t smallint, rating double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE t
        WHEN 1 THEN 1.0            -- view
        WHEN 2 THEN 0.5            -- search
        WHEN 3 THEN 3.0            -- booking created
        WHEN 4 THEN -1.0           -- booking cancelled
        WHEN 5 THEN 5.0            -- booking completed
        WHEN 6 THEN 3.0            -- order created
        WHEN 7 THEN 1.0            -- order items selected
        WHEN 8 THEN rating - 2.5   -- review: 1..5 around neutral
        WHEN 9 THEN rating - 2.5
        WHEN 13 THEN 3.0           -- marketplace purchase
        WHEN 16 THEN 1.5           -- recommendation clicked
        ELSE 0.5 END
$$;

-- Affinity half-life: 30 days.
CREATE FUNCTION gd_decay(score double precision, from_t timestamptz, to_t timestamptz)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT score * exp(-ln(2) * greatest(extract(epoch FROM to_t - from_t), 0) / (30 * 86400.0))
$$;

-- The metrics segment rules test, for one guest, now.
CREATE FUNCTION gd_metrics(g uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'days_since_first_seen', floor(extract(epoch FROM now() - gu.created_at) / 86400),
        'days_since_last_interaction',
            coalesce(floor(extract(epoch FROM now() - s.last_interaction_at) / 86400), 0),
        'interactions_total', coalesce(s.interactions_total, 0),
        'bookings_created', coalesce(s.bookings_created, 0),
        'bookings_completed', coalesce(s.bookings_completed, 0),
        'lifetime_spend_minor', coalesce(s.lifetime_spend_minor, 0),
        'average_party_size', CASE WHEN coalesce(s.party_size_count, 0) = 0 THEN 0
                                   ELSE round(s.party_size_sum::numeric / s.party_size_count, 2) END,
        'dining_bookings_90_days', (SELECT count(*) FROM interactions i
            WHERE i.guest_id = g AND i.type = 3 AND i.occurred_at > now() - interval '90 days'
              AND i.category IN ('restaurant', 'cafe', 'dining')))
    FROM guests gu LEFT JOIN guest_signals s USING (guest_id) WHERE gu.guest_id = g
$$;

-- Re-evaluates the segment rules for one guest; keeps `since` of segments that still apply and
-- bumps the context version only when the set of segments changed.
CREATE FUNCTION gd_recompute_segments(g uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m jsonb := gd_metrics(g);
    before text;
    after text;
BEGIN
    IF m IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(segment_id, ',' ORDER BY segment_id) INTO before
        FROM guest_segments WHERE guest_id = g;
    WITH hit AS (
        SELECT r.segment_id,
               string_agg(format('%s = %s (rule: %s %s)', r.metric, m ->> r.metric, r.op,
                                 r.threshold), ' and ' ORDER BY r.metric) AS reason,
               max(r.rule_version) AS rule_version
        FROM segment_rules r
        GROUP BY r.segment_id
        HAVING bool_and(CASE r.op
            WHEN '>=' THEN (m ->> r.metric)::numeric >= r.threshold
            WHEN '<=' THEN (m ->> r.metric)::numeric <= r.threshold
            WHEN '>'  THEN (m ->> r.metric)::numeric >  r.threshold
            WHEN '<'  THEN (m ->> r.metric)::numeric <  r.threshold
            ELSE (m ->> r.metric)::numeric = r.threshold END)),
    gone AS (
        DELETE FROM guest_segments s WHERE s.guest_id = g
            AND s.segment_id NOT IN (SELECT segment_id FROM hit))
    INSERT INTO guest_segments AS s (guest_id, segment_id, reason, rule_version)
    SELECT g, segment_id, reason, rule_version FROM hit
    ON CONFLICT (guest_id, segment_id) DO UPDATE
        SET reason = excluded.reason, rule_version = excluded.rule_version
        WHERE s.reason IS DISTINCT FROM excluded.reason
           OR s.rule_version IS DISTINCT FROM excluded.rule_version;
    INSERT INTO guest_segment_state VALUES (g, now())
    ON CONFLICT (guest_id) DO UPDATE SET computed_at = now();
    SELECT string_agg(segment_id, ',' ORDER BY segment_id) INTO after
        FROM guest_segments WHERE guest_id = g;
    IF before IS DISTINCT FROM after THEN
        PERFORM gd_touch(g);
    END IF;
END
$$;

-- Implicit preferences from category affinities: confidence is the decayed affinity's share
-- of the strongest (top 10 kept).
CREATE FUNCTION gd_recompute_implicit(g uuid) RETURNS void LANGUAGE sql AS $$
    WITH top AS (
        SELECT category, round((s / greatest(max(s) OVER (), 1e-9))::numeric, 4) AS c
        FROM (SELECT category, gd_decay(score, score_at, now()) AS s
              FROM guest_category_affinity WHERE guest_id = g) a
        WHERE s > 0 ORDER BY s DESC LIMIT 10),
    gone AS (
        DELETE FROM guest_implicit_preferences p WHERE p.guest_id = g
            AND p.source = 'interactions' AND p.key = 'category'
            AND p.value NOT IN (SELECT category FROM top))
    INSERT INTO guest_implicit_preferences AS p (guest_id, key, value, confidence, source)
    SELECT g, 'category', category, c, 'interactions' FROM top
    ON CONFLICT (guest_id, key, value) DO UPDATE
        SET confidence = excluded.confidence, source = excluded.source, updated_at = now()
        WHERE p.confidence IS DISTINCT FROM excluded.confidence OR p.source <> excluded.source;
$$;

-- Applies one interaction to the incremental signals.
CREATE FUNCTION gd_apply_interaction(i interactions) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    w double precision := gd_weight(i.type, i.rating);
    spend bigint := CASE WHEN i.type IN (5, 6, 13) THEN i.amount_minor ELSE 0 END;
BEGIN
    INSERT INTO guest_signals AS s (guest_id, first_interaction_at, last_interaction_at,
        interactions_total, bookings_created, bookings_completed, bookings_cancelled,
        lifetime_spend_minor, party_size_sum, party_size_count, computed_at)
    VALUES (i.guest_id, i.occurred_at, i.occurred_at, 1,
        (i.type = 3)::int, (i.type = 5)::int, (i.type = 4)::int, spend,
        CASE WHEN i.type = 3 THEN i.party_size ELSE 0 END,
        CASE WHEN i.type = 3 AND i.party_size > 0 THEN 1 ELSE 0 END, clock_timestamp())
    ON CONFLICT (guest_id) DO UPDATE SET
        first_interaction_at = least(s.first_interaction_at, excluded.first_interaction_at),
        last_interaction_at = greatest(s.last_interaction_at, excluded.last_interaction_at),
        interactions_total = s.interactions_total + 1,
        bookings_created = s.bookings_created + excluded.bookings_created,
        bookings_completed = s.bookings_completed + excluded.bookings_completed,
        bookings_cancelled = s.bookings_cancelled + excluded.bookings_cancelled,
        lifetime_spend_minor = s.lifetime_spend_minor + excluded.lifetime_spend_minor,
        party_size_sum = s.party_size_sum + excluded.party_size_sum,
        party_size_count = s.party_size_count + excluded.party_size_count,
        computed_at = clock_timestamp();
    IF i.category <> '' THEN
        INSERT INTO guest_category_affinity AS a VALUES
            (i.guest_id, i.category, w, i.occurred_at, i.occurred_at)
        ON CONFLICT (guest_id, category) DO UPDATE SET
            score = CASE WHEN excluded.score_at >= a.score_at
                         THEN gd_decay(a.score, a.score_at, excluded.score_at) + excluded.score
                         ELSE a.score + gd_decay(excluded.score, excluded.score_at, a.score_at) END,
            score_at = greatest(a.score_at, excluded.score_at),
            last_interaction_at = greatest(a.last_interaction_at, excluded.last_interaction_at);
    END IF;
    IF i.type IN (3, 5, 6, 13) THEN
        INSERT INTO guest_time_slots AS t VALUES (i.guest_id,
            extract(isodow FROM i.occurred_at AT TIME ZONE coalesce(nullif(
                (SELECT time_zone FROM guests WHERE guest_id = i.guest_id), ''), 'UTC'))::smallint,
            extract(hour FROM i.occurred_at AT TIME ZONE coalesce(nullif(
                (SELECT time_zone FROM guests WHERE guest_id = i.guest_id), ''), 'UTC'))::smallint,
            1)
        ON CONFLICT (guest_id, day_of_week, hour_of_day) DO UPDATE SET n = t.n + 1;
    END IF;
END
$$;

CREATE FUNCTION gd_interaction_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gd_apply_interaction(NEW);
    IF NEW.category <> '' THEN
        PERFORM gd_recompute_implicit(NEW.guest_id);
    END IF;
    -- Segment rules read booking, spend and recency metrics: views and searches can only
    -- change them for a guest who is lapsed or has never been evaluated (the periodic task
    -- covers the passage of time).
    IF NEW.type IN (3, 4, 5, 6, 13)
       OR NOT EXISTS (SELECT 1 FROM guest_segment_state WHERE guest_id = NEW.guest_id)
       OR EXISTS (SELECT 1 FROM guest_segments WHERE guest_id = NEW.guest_id
                  AND segment_id = 'lapsed') THEN
        PERFORM gd_recompute_segments(NEW.guest_id);
    END IF;
    PERFORM gd_touch(NEW.guest_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER interactions_signals AFTER INSERT ON interactions
    FOR EACH ROW EXECUTE FUNCTION gd_interaction_trigger();

-- Rebuilds a guest's signals from its interactions (after a merge moved some).
CREATE FUNCTION gd_rebuild_signals(g uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r interactions;
BEGIN
    DELETE FROM guest_signals WHERE guest_id = g;
    DELETE FROM guest_category_affinity WHERE guest_id = g;
    DELETE FROM guest_time_slots WHERE guest_id = g;
    FOR r IN SELECT * FROM interactions WHERE guest_id = g ORDER BY occurred_at LOOP
        PERFORM gd_apply_interaction(r);
    END LOOP;
    PERFORM gd_recompute_implicit(g);
    PERFORM gd_recompute_segments(g);
    PERFORM gd_touch(g);
END
$$;

-- Explicit preference changes: a new version holding `prefs`, with the changed keys.
-- Returns the new version, or raises HM001 when expected (> 0) is not the current version.
CREATE FUNCTION gd_put_preferences(g uuid, newp jsonb, expected bigint, a_type smallint,
                                   a_id text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cur record;
    changed text[];
BEGIN
    PERFORM 1 FROM guests WHERE guest_id = g FOR UPDATE;
    SELECT version, prefs INTO cur FROM guest_preferences WHERE guest_id = g
        ORDER BY version DESC LIMIT 1;
    IF expected > 0 AND coalesce(cur.version, 0) <> expected THEN
        RAISE EXCEPTION 'preferences version is %, not %', coalesce(cur.version, 0), expected
            USING ERRCODE = 'HM002';
    END IF;
    SELECT coalesce(array_agg(k ORDER BY k), '{}') INTO changed FROM (
        SELECT k FROM jsonb_object_keys(newp) k
            WHERE (coalesce(cur.prefs, '{}') -> k) IS DISTINCT FROM (newp -> k)
        UNION
        SELECT k FROM jsonb_object_keys(coalesce(cur.prefs, '{}')) k WHERE NOT newp ? k) x;
    IF cur.version IS NOT NULL AND cardinality(changed) = 0 THEN
        RETURN cur.version;
    END IF;
    INSERT INTO guest_preferences (guest_id, version, prefs, changed_fields, actor_type, actor_id)
    VALUES (g, coalesce(cur.version, 0) + 1, newp, changed, a_type, a_id);
    PERFORM gd_touch(g);
    RETURN coalesce(cur.version, 0) + 1;
END
$$;

-- Effective preferences: platform, then brand, then venue defaults, then the guest's values;
-- one row per key with its origin.
CREATE FUNCTION gd_effective(g uuid, venue text, at timestamptz)
RETURNS TABLE (key text, value jsonb, origin smallint, origin_id text) LANGUAGE sql STABLE AS $$
    WITH layers AS (
        SELECT 1 AS lvl, 1::smallint AS origin, '' AS origin_id, prefs FROM preference_defaults
            WHERE scope = 'platform'
        UNION ALL
        SELECT 2, 2::smallint, d.scope_id, d.prefs FROM preference_defaults d
            JOIN venue_brands vb ON vb.brand_id = d.scope_id AND vb.venue_id = venue
            WHERE d.scope = 'brand'
        UNION ALL
        SELECT 3, 3::smallint, scope_id, prefs FROM preference_defaults
            WHERE scope = 'venue' AND scope_id = venue AND venue <> ''
        UNION ALL
        SELECT 4, 4::smallint, '', p.prefs FROM (SELECT prefs FROM guest_preferences
            WHERE guest_id = g AND changed_at <= at ORDER BY version DESC LIMIT 1) p)
    SELECT DISTINCT ON (e.key) e.key, e.value, l.origin, l.origin_id
    FROM layers l, jsonb_each(l.prefs) e
    ORDER BY e.key, l.lvl DESC
$$;

-- Records a consent change from privacyd (newer versions only).
CREATE FUNCTION gd_consent(g uuid, p smallint, st smallint, ver bigint, exp timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO guest_consents AS c (guest_id, purpose, status, version, expires_at)
    VALUES (g, p, st, ver, exp)
    ON CONFLICT (guest_id, purpose) DO UPDATE
        SET status = excluded.status, version = excluded.version,
            expires_at = excluded.expires_at, updated_at = clock_timestamp()
        WHERE c.version <= excluded.version;
    SELECT gd_touch(g);
$$;

-- Merging preferences: for every explicit key, the value from whichever profile changed it
-- last; implicit preferences other than the interaction-derived ones (rebuilt from the moved
-- interactions) are combined, keeping the higher confidence.
CREATE FUNCTION gd_merge_preferences(surv uuid, srcs uuid[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    merged jsonb;
BEGIN
    WITH latest AS (
        SELECT DISTINCT ON (p.guest_id) p.guest_id, p.prefs FROM guest_preferences p
        WHERE p.guest_id = surv OR p.guest_id = ANY (srcs) ORDER BY p.guest_id, p.version DESC),
    keyed AS (
        SELECT l.guest_id, e.key AS k, e.value AS v,
               (SELECT max(h.changed_at) FROM guest_preferences h
                WHERE h.guest_id = l.guest_id AND e.key = ANY (h.changed_fields)) AS at
        FROM latest l, jsonb_each(l.prefs) e)
    SELECT coalesce(jsonb_object_agg(k, v), '{}') INTO merged FROM (
        SELECT DISTINCT ON (k) k, v FROM keyed ORDER BY k, at DESC NULLS LAST) x;
    IF merged <> '{}' THEN
        PERFORM gd_put_preferences(surv, merged, 0, 5::smallint, 'merge');
    END IF;
    INSERT INTO guest_implicit_preferences AS ip (guest_id, key, value, confidence, source)
    SELECT surv, i.key, i.value, max(i.confidence), 'merge' FROM guest_implicit_preferences i
    WHERE i.guest_id = ANY (srcs) AND i.source <> 'interactions' GROUP BY i.key, i.value
    ON CONFLICT (guest_id, key, value) DO UPDATE
        SET confidence = greatest(ip.confidence, excluded.confidence);
    DELETE FROM guest_implicit_preferences WHERE guest_id = ANY (srcs);
END
$$;
