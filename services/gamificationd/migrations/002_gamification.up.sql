-- gamificationd: a double-entry points ledger, rules, levels, achievements, challenges and
-- streaks (docs/gamification.md). The ledger's arithmetic lives in the functions below so that
-- every path (RPCs, the event consumer, the sweeper) runs the same statements in the caller's
-- transaction. Invariants, checked by the tests:
--   * the entries of every transaction sum to zero (deferred trigger);
--   * gm_accounts.{available,pending,redeemed,expired} = the sums of the guest's entries on
--     those accounts, and earned - reversed = minus the sum on 'issuance';
--   * available never goes below zero through a redemption (row lock on the account).

CREATE TABLE gm_accounts (
    guest_id       uuid PRIMARY KEY,
    time_zone      text        NOT NULL DEFAULT 'UTC',
    available      bigint      NOT NULL DEFAULT 0,
    pending        bigint      NOT NULL DEFAULT 0,
    redeemed       bigint      NOT NULL DEFAULT 0,
    expired        bigint      NOT NULL DEFAULT 0,
    earned         bigint      NOT NULL DEFAULT 0,
    reversed       bigint      NOT NULL DEFAULT 0,
    xp             bigint      NOT NULL DEFAULT 0,
    level          integer     NOT NULL DEFAULT 1,
    level_at       timestamptz NOT NULL DEFAULT now(), -- when the level was reached
    streak_current integer     NOT NULL DEFAULT 0,
    streak_longest integer     NOT NULL DEFAULT 0,
    streak_start   date,
    streak_last    date,
    streak_best_at timestamptz, -- when the longest streak was reached
    grace_used     boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- type: 1 award, 2 redemption, 3 reversal, 4 expiry, 5 release (TransactionType)
CREATE TABLE gm_transactions (
    txn_id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    guest_id        uuid        NOT NULL REFERENCES gm_accounts ON DELETE CASCADE,
    type            smallint    NOT NULL CHECK (type BETWEEN 1 AND 6),
    points          bigint      NOT NULL CHECK (points >= 0),
    source          smallint    NOT NULL DEFAULT 0,
    idem_key        text,
    rule_id         text        NOT NULL DEFAULT '',
    rule_version    bigint      NOT NULL DEFAULT 0,
    reward_id       text        NOT NULL DEFAULT '',
    reason          text        NOT NULL DEFAULT '',
    reverses        uuid,
    ref             text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    available_at    timestamptz,
    expires_at      timestamptz,
    available_after bigint      NOT NULL DEFAULT 0,
    UNIQUE (guest_id, type, idem_key)
);
CREATE INDEX gm_transactions_guest ON gm_transactions (guest_id, created_at DESC);
CREATE INDEX gm_transactions_ref ON gm_transactions (ref) WHERE ref <> '';

CREATE TABLE gm_entries (
    entry_id bigserial PRIMARY KEY,
    txn_id   uuid   NOT NULL REFERENCES gm_transactions ON DELETE CASCADE,
    guest_id uuid   NOT NULL,
    account  text   NOT NULL CHECK (account IN ('issuance', 'available', 'pending', 'redeemed',
                                                'expired')),
    amount   bigint NOT NULL
);
CREATE INDEX gm_entries_txn ON gm_entries (txn_id);
CREATE INDEX gm_entries_guest ON gm_entries (guest_id, account);

CREATE FUNCTION gm_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT coalesce(sum(amount), 0) FROM gm_entries WHERE txn_id = NEW.txn_id) <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.txn_id
            USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER gm_entries_balanced AFTER INSERT ON gm_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gm_entries_balanced();

-- Point lots: what an award left to spend, consumed oldest first; state 0 pending,
-- 1 available, 2 used up or expired, 3 reversed.
CREATE TABLE gm_lots (
    txn_id       uuid        PRIMARY KEY REFERENCES gm_transactions ON DELETE CASCADE,
    guest_id     uuid        NOT NULL,
    points       bigint      NOT NULL,
    remaining    bigint      NOT NULL CHECK (remaining >= 0),
    available_at timestamptz NOT NULL,
    expires_at   timestamptz,
    state        smallint    NOT NULL
);
CREATE INDEX gm_lots_spend ON gm_lots (guest_id, state, expires_at NULLS LAST, available_at);
CREATE INDEX gm_lots_due ON gm_lots (state, available_at) WHERE state = 0;
CREATE INDEX gm_lots_expiring ON gm_lots (expires_at) WHERE state = 1;

CREATE TABLE gm_rules (
    rule_id       text        PRIMARY KEY,
    event_type    text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    source        smallint    NOT NULL DEFAULT 0,
    calculation   smallint    NOT NULL DEFAULT 1, -- 1 fixed, 2 per amount
    points        bigint      NOT NULL CHECK (points >= 0),
    amount_step   bigint      NOT NULL DEFAULT 0, -- minor units per `points` (per amount)
    currency      text        NOT NULL DEFAULT '',
    xp            bigint      NOT NULL DEFAULT 0,
    multiplier    integer,                         -- percent, within the window
    mult_start    timestamptz,
    mult_end      timestamptz,
    daily_cap     bigint      NOT NULL DEFAULT 0,  -- 0 = none
    weekly_cap    bigint      NOT NULL DEFAULT 0,
    pending_ms    bigint      NOT NULL DEFAULT 0,
    lifetime_ms   bigint      NOT NULL DEFAULT 0,
    active        boolean     NOT NULL DEFAULT true,
    version       bigint      NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL DEFAULT 'migration'
);
CREATE INDEX gm_rules_event ON gm_rules (event_type) WHERE active;
CREATE TABLE gm_rule_versions (
    rule_id    text   NOT NULL,
    version    bigint NOT NULL,
    definition jsonb  NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text   NOT NULL,
    PRIMARY KEY (rule_id, version)
);
INSERT INTO gm_rules (rule_id, event_type, description, source, calculation, points, amount_step,
                      xp, daily_cap, weekly_cap) VALUES
  ('booking-completed', 'booking.completed', 'a completed booking', 1, 1, 100, 0, 100, 0, 0),
  ('review-submitted', 'feedback.review.submitted', 'a review', 2, 1, 20, 0, 20, 60, 0),
  ('rating-submitted', 'feedback.rating.submitted', 'a rating', 2, 1, 5, 0, 5, 25, 0),
  ('order-created', 'order.created', 'an order', 3, 1, 10, 0, 10, 50, 0),
  ('marketplace-purchase', 'marketplace.purchase.completed', '1 point per 1.00 spent', 4, 2,
   1, 100, 1, 0, 5000),
  ('daily-login', 'activity.login', 'first login of the day (once per local day by key)', 6, 1,
   5, 0, 5, 0, 0),
  ('referral', 'user.referral', 'a referred friend signed up', 7, 1, 50, 0, 50, 0, 250);
INSERT INTO gm_rule_versions (rule_id, version, definition, changed_by)
    SELECT rule_id, 1, to_jsonb(r) - 'updated_at', 'migration' FROM gm_rules r;

-- Counters behind achievements and challenges, and the sets some of them count.
CREATE TABLE gm_counters (
    guest_id uuid   NOT NULL REFERENCES gm_accounts ON DELETE CASCADE,
    counter  text   NOT NULL,
    value    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (guest_id, counter)
);
CREATE TABLE gm_seen (
    guest_id uuid NOT NULL REFERENCES gm_accounts ON DELETE CASCADE,
    kind     text NOT NULL, -- 'venue' | 'app'
    value    text NOT NULL,
    PRIMARY KEY (guest_id, kind, value)
);

CREATE TABLE gm_achievements (
    achievement_id text    PRIMARY KEY,
    name           text    NOT NULL,
    description    text    NOT NULL,
    counter        text    NOT NULL,
    tiers          jsonb   NOT NULL, -- [{"tier":1,"threshold":1,"points":50,"xp":50}, ...]
    icon           text    NOT NULL DEFAULT '',
    hidden         boolean NOT NULL DEFAULT false,
    active         boolean NOT NULL DEFAULT true
);
INSERT INTO gm_achievements (achievement_id, name, description, counter, tiers) VALUES
  ('first-booking', 'First booking', 'Complete your first booking', 'bookings_completed',
   '[{"tier":1,"threshold":1,"points":50,"xp":50}]'),
  ('regular', 'Regular', 'Complete bookings', 'bookings_completed',
   '[{"tier":2,"threshold":5,"points":100,"xp":100},{"tier":3,"threshold":20,"points":250,"xp":250},{"tier":4,"threshold":50,"points":500,"xp":500},{"tier":5,"threshold":100,"points":1000,"xp":1000}]'),
  ('critic', 'Critic', 'Write reviews', 'reviews',
   '[{"tier":1,"threshold":1,"points":20,"xp":20},{"tier":2,"threshold":10,"points":100,"xp":100},{"tier":3,"threshold":25,"points":250,"xp":250}]'),
  ('explorer', 'Explorer', 'Visit different venues', 'distinct_venues',
   '[{"tier":1,"threshold":3,"points":50,"xp":50},{"tier":2,"threshold":10,"points":150,"xp":150},{"tier":3,"threshold":25,"points":400,"xp":400}]'),
  ('on-a-roll', 'On a roll', 'Keep a daily streak', 'streak_days',
   '[{"tier":1,"threshold":7,"points":70,"xp":70},{"tier":3,"threshold":30,"points":300,"xp":300},{"tier":5,"threshold":100,"points":1000,"xp":1000}]'),
  ('foodie', 'Foodie', 'Place orders', 'orders',
   '[{"tier":1,"threshold":5,"points":50,"xp":50},{"tier":2,"threshold":25,"points":150,"xp":150}]'),
  ('shopper', 'Shopper', 'Buy on the marketplace', 'purchases',
   '[{"tier":1,"threshold":1,"points":25,"xp":25},{"tier":2,"threshold":10,"points":150,"xp":150}]'),
  ('cross-app', 'Everywhere', 'Use the booking, marketplace and web apps', 'apps_used',
   '[{"tier":3,"threshold":3,"points":200,"xp":200}]'),
  ('collector', 'Point collector', 'Earn points', 'points_earned',
   '[{"tier":2,"threshold":1000,"points":0,"xp":100},{"tier":4,"threshold":10000,"points":0,"xp":1000},{"tier":5,"threshold":100000,"points":0,"xp":5000}]'),
  ('rater', 'Rater', 'Rate what you tried', 'ratings',
   '[{"tier":1,"threshold":5,"points":25,"xp":25},{"tier":2,"threshold":50,"points":150,"xp":150}]'),
  ('early-bird', 'Early bird', 'Log in', 'logins',
   '[{"tier":1,"threshold":1,"points":10,"xp":10}]');
CREATE TABLE gm_unlocks (
    guest_id       uuid        NOT NULL REFERENCES gm_accounts ON DELETE CASCADE,
    achievement_id text        NOT NULL REFERENCES gm_achievements,
    tier           smallint    NOT NULL,
    unlocked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guest_id, achievement_id, tier)
);

-- Challenges: status is derived from the window; progress counts the challenge's counter for
-- joined guests while the challenge is active; the first max_winners to complete win.
CREATE TABLE gm_challenges (
    challenge_id text        PRIMARY KEY,
    name         text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    period       smallint    NOT NULL, -- 1 weekly, 2 monthly, 3 custom
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL CHECK (ends_at > starts_at),
    counter      text        NOT NULL,
    target       bigint      NOT NULL CHECK (target > 0),
    reward_points bigint     NOT NULL DEFAULT 0,
    max_winners  integer     NOT NULL DEFAULT 0 -- 0 = everyone who completes
);
CREATE TABLE gm_participants (
    challenge_id text        NOT NULL REFERENCES gm_challenges ON DELETE CASCADE,
    guest_id     uuid        NOT NULL REFERENCES gm_accounts ON DELETE CASCADE,
    progress     bigint      NOT NULL DEFAULT 0,
    joined_at    timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    rank         integer,
    winner       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (challenge_id, guest_id)
);

-- ---- functions ----

-- The account of a guest, created on first use; locked for the rest of the transaction.
CREATE FUNCTION gm_account(g uuid, tz text) RETURNS gm_accounts LANGUAGE plpgsql AS $$
DECLARE a gm_accounts;
BEGIN
    INSERT INTO gm_accounts (guest_id, time_zone) VALUES (g, coalesce(nullif(tz, ''), 'UTC'))
        ON CONFLICT (guest_id) DO NOTHING;
    SELECT * INTO a FROM gm_accounts WHERE guest_id = g FOR UPDATE;
    IF tz IS NOT NULL AND tz <> '' AND a.time_zone <> tz THEN
        UPDATE gm_accounts SET time_zone = tz WHERE guest_id = g RETURNING * INTO a;
    END IF;
    RETURN a;
END $$;

-- Level for an amount of XP: level n needs base * (n-1)^2 XP (100, 400, 900, ... with 100).
CREATE FUNCTION gm_level_for(xp bigint, base bigint) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT 1 + floor(sqrt(greatest(xp, 0)::numeric / greatest(base, 1)))::integer
$$;

-- Awards points. Idempotent by (guest, key): a second call returns the first transaction with
-- created = false. pending_until in the future makes a pending lot, released by gm_release_due.
CREATE FUNCTION gm_award(g uuid, pts bigint, src smallint, key text, why text, rule text,
                         rule_ver bigint, pending_until timestamptz, expires timestamptz,
                         reference text, xp_gain bigint, level_base bigint,
                         OUT txn uuid, OUT created boolean, OUT old_level integer,
                         OUT new_level integer)
LANGUAGE plpgsql AS $$
DECLARE a gm_accounts; pend boolean;
BEGIN
    a := gm_account(g, NULL);
    old_level := a.level;
    new_level := a.level;
    SELECT txn_id INTO txn FROM gm_transactions WHERE guest_id = g AND type = 1 AND idem_key = key;
    IF FOUND THEN
        created := false;
        RETURN;
    END IF;
    pend := pending_until IS NOT NULL AND pending_until > now();
    INSERT INTO gm_transactions (guest_id, type, points, source, idem_key, rule_id, rule_version,
                                 reason, ref, available_at, expires_at, available_after)
        VALUES (g, 1, pts, src, key, coalesce(rule, ''), coalesce(rule_ver, 0), coalesce(why, ''),
                coalesce(reference, ''), CASE WHEN pend THEN pending_until ELSE now() END,
                expires, a.available + CASE WHEN pend THEN 0 ELSE pts END)
        RETURNING txn_id INTO txn;
    INSERT INTO gm_entries (txn_id, guest_id, account, amount) VALUES
        (txn, g, 'issuance', -pts), (txn, g, CASE WHEN pend THEN 'pending' ELSE 'available' END, pts);
    INSERT INTO gm_lots (txn_id, guest_id, points, remaining, available_at, expires_at, state)
        VALUES (txn, g, pts, pts, CASE WHEN pend THEN pending_until ELSE now() END, expires,
                CASE WHEN pend THEN 0 ELSE 1 END);
    UPDATE gm_accounts SET
        available = available + CASE WHEN pend THEN 0 ELSE pts END,
        pending = pending + CASE WHEN pend THEN pts ELSE 0 END,
        earned = earned + pts,
        xp = xp + coalesce(xp_gain, pts),
        level = greatest(level, gm_level_for(xp + coalesce(xp_gain, pts), level_base)),
        level_at = CASE WHEN gm_level_for(xp + coalesce(xp_gain, pts), level_base) > level
                        THEN clock_timestamp() ELSE level_at END,
        updated_at = now()
        WHERE guest_id = g RETURNING level INTO new_level;
    INSERT INTO gm_counters (guest_id, counter, value) VALUES (g, 'points_earned', pts)
        ON CONFLICT (guest_id, counter) DO UPDATE SET value = gm_counters.value + pts;
    created := true;
END $$;

-- Redeems points, oldest lots first. Raises HM001 'insufficient points' (no write) when the
-- available balance does not cover it. Idempotent by (guest, key).
CREATE FUNCTION gm_redeem(g uuid, pts bigint, key text, reward text, why text,
                          OUT txn uuid, OUT created boolean)
LANGUAGE plpgsql AS $$
DECLARE a gm_accounts; need bigint := pts; l record; take bigint;
BEGIN
    a := gm_account(g, NULL);
    IF key IS NOT NULL THEN
        SELECT txn_id INTO txn FROM gm_transactions WHERE guest_id = g AND type = 2 AND idem_key = key;
        IF FOUND THEN
            created := false;
            RETURN;
        END IF;
    END IF;
    IF a.available < pts THEN
        RAISE EXCEPTION 'insufficient points: % available, % requested', a.available, pts
            USING ERRCODE = 'HM001';
    END IF;
    INSERT INTO gm_transactions (guest_id, type, points, idem_key, reward_id, reason,
                                 available_after)
        VALUES (g, 2, pts, key, coalesce(reward, ''), coalesce(why, ''), a.available - pts)
        RETURNING txn_id INTO txn;
    INSERT INTO gm_entries (txn_id, guest_id, account, amount) VALUES
        (txn, g, 'available', -pts), (txn, g, 'redeemed', pts);
    FOR l IN SELECT * FROM gm_lots WHERE guest_id = g AND state = 1 AND remaining > 0
             ORDER BY expires_at NULLS LAST, available_at, txn_id FOR UPDATE LOOP
        EXIT WHEN need = 0;
        take := least(need, l.remaining);
        UPDATE gm_lots SET remaining = remaining - take,
                           state = CASE WHEN remaining - take = 0 THEN 2 ELSE 1 END
            WHERE txn_id = l.txn_id;
        need := need - take;
    END LOOP;
    UPDATE gm_accounts SET available = available - pts, redeemed = redeemed + pts,
                           updated_at = now() WHERE guest_id = g;
    created := true;
END $$;

-- Reverses an award (a cancelled booking's points): the whole award comes back out of pending
-- or available (available may go below zero when the points were already spent: the guest owes
-- them, and redemptions wait until it is positive again). Idempotent: an award is reversed once.
-- Levels and unlocked achievements stay (documented).
CREATE FUNCTION gm_reverse(award uuid, why text, OUT txn uuid, OUT pts bigint)
LANGUAGE plpgsql AS $$
DECLARE t gm_transactions; l gm_lots; acct text;
BEGIN
    SELECT * INTO t FROM gm_transactions WHERE txn_id = award AND type = 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM gm_account(t.guest_id, NULL);
    SELECT txn_id INTO txn FROM gm_transactions WHERE reverses = award AND type = 3;
    IF FOUND THEN
        pts := 0;
        RETURN;
    END IF;
    SELECT * INTO l FROM gm_lots WHERE txn_id = award FOR UPDATE;
    pts := t.points;
    acct := CASE WHEN l.state = 0 THEN 'pending' ELSE 'available' END;
    INSERT INTO gm_transactions (guest_id, type, points, source, idem_key, rule_id, reason,
                                 reverses, ref)
        VALUES (t.guest_id, 3, pts, t.source, 'reverse:' || award, t.rule_id, coalesce(why, ''),
                award, t.ref)
        RETURNING txn_id INTO txn;
    INSERT INTO gm_entries (txn_id, guest_id, account, amount) VALUES
        (txn, t.guest_id, acct, -pts), (txn, t.guest_id, 'issuance', pts);
    UPDATE gm_lots SET remaining = 0, state = 3 WHERE txn_id = award;
    UPDATE gm_accounts SET
        available = available - CASE WHEN acct = 'available' THEN pts ELSE 0 END,
        pending = pending - CASE WHEN acct = 'pending' THEN pts ELSE 0 END,
        reversed = reversed + pts,
        xp = greatest(xp - pts, 0),
        updated_at = now()
        WHERE guest_id = t.guest_id;
    UPDATE gm_counters SET value = value - pts
        WHERE guest_id = t.guest_id AND counter = 'points_earned';
END $$;

-- Pending lots whose time has come become available (a 'release' transaction each).
CREATE FUNCTION gm_release_due(max_lots integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE l record; n integer := 0; txn uuid;
BEGIN
    FOR l IN SELECT * FROM gm_lots WHERE state = 0 AND available_at <= now()
             ORDER BY available_at LIMIT max_lots FOR UPDATE SKIP LOCKED LOOP
        PERFORM 1 FROM gm_accounts WHERE guest_id = l.guest_id FOR UPDATE;
        INSERT INTO gm_transactions (guest_id, type, points, idem_key, ref)
            VALUES (l.guest_id, 5, l.remaining, 'release:' || l.txn_id, 'lot:' || l.txn_id)
            RETURNING txn_id INTO txn;
        INSERT INTO gm_entries (txn_id, guest_id, account, amount) VALUES
            (txn, l.guest_id, 'pending', -l.remaining), (txn, l.guest_id, 'available', l.remaining);
        UPDATE gm_lots SET state = 1 WHERE txn_id = l.txn_id;
        UPDATE gm_accounts SET pending = pending - l.remaining, available = available + l.remaining,
                               updated_at = now() WHERE guest_id = l.guest_id;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Available lots past their expiry lose what is left of them (an 'expiry' transaction each).
-- The account row is locked before the lot, in the same order as redemptions, so the sweeper and
-- a redemption never deadlock.
CREATE FUNCTION gm_expire_due(max_lots integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE g uuid; l record; n integer := 0; txn uuid;
BEGIN
    FOR g IN SELECT DISTINCT guest_id FROM gm_lots WHERE state = 1 AND remaining > 0
                AND expires_at <= now() LIMIT max_lots LOOP
        PERFORM 1 FROM gm_accounts WHERE guest_id = g FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        FOR l IN SELECT * FROM gm_lots WHERE guest_id = g AND state = 1 AND remaining > 0
                    AND expires_at <= now() FOR UPDATE LOOP
            INSERT INTO gm_transactions (guest_id, type, points, idem_key, ref)
                VALUES (g, 4, l.remaining, 'expire:' || l.txn_id, 'lot:' || l.txn_id)
                RETURNING txn_id INTO txn;
            INSERT INTO gm_entries (txn_id, guest_id, account, amount) VALUES
                (txn, g, 'available', -l.remaining), (txn, g, 'expired', l.remaining);
            UPDATE gm_lots SET remaining = 0, state = 2 WHERE txn_id = l.txn_id;
            UPDATE gm_accounts SET available = available - l.remaining,
                                   expired = expired + l.remaining, updated_at = now()
                WHERE guest_id = g;
            n := n + 1;
        END LOOP;
    END LOOP;
    RETURN n;
END $$;

-- Adds delta to a counter and returns the new value.
CREATE FUNCTION gm_bump(g uuid, name text, delta bigint) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO gm_counters (guest_id, counter, value) VALUES (g, name, delta)
        ON CONFLICT (guest_id, counter) DO UPDATE SET value = gm_counters.value + delta
        RETURNING value
$$;

-- The daily streak for activity on local day `day`: consecutive days extend it, one missed day
-- is forgiven once per streak when grace is on, anything longer starts a new streak; a day
-- before the last one counted changes nothing. Returns the account and whether a streak started.
CREATE FUNCTION gm_streak(g uuid, day date, grace boolean, OUT started boolean,
                          OUT current_days integer, OUT longest_days integer,
                          OUT start_day date, OUT last_day date, OUT grace_used boolean)
LANGUAGE plpgsql AS $$
DECLARE a gm_accounts;
BEGIN
    SELECT * INTO a FROM gm_accounts WHERE guest_id = g FOR UPDATE;
    started := false;
    IF a.streak_last IS NOT NULL AND day <= a.streak_last THEN
        NULL;
    ELSIF a.streak_last IS NOT NULL AND day = a.streak_last + 1 THEN
        a.streak_current := a.streak_current + 1;
    ELSIF a.streak_last IS NOT NULL AND grace AND NOT a.grace_used AND day = a.streak_last + 2 THEN
        a.streak_current := a.streak_current + 1;
        a.grace_used := true;
    ELSE
        a.streak_current := 1;
        a.streak_start := day;
        a.grace_used := false;
        started := true;
    END IF;
    a.streak_last := greatest(coalesce(a.streak_last, day), day);
    IF a.streak_current > a.streak_longest THEN
        a.streak_longest := a.streak_current;
        a.streak_best_at := clock_timestamp();
    END IF;
    UPDATE gm_accounts SET streak_current = a.streak_current, streak_longest = a.streak_longest,
                           streak_best_at = a.streak_best_at,
                           streak_start = a.streak_start, streak_last = a.streak_last,
                           grace_used = a.grace_used, updated_at = now()
        WHERE guest_id = g;
    INSERT INTO gm_counters (guest_id, counter, value) VALUES (g, 'streak_days', a.streak_longest)
        ON CONFLICT (guest_id, counter) DO UPDATE SET value = a.streak_longest;
    current_days := a.streak_current;
    longest_days := a.streak_longest;
    start_day := a.streak_start;
    last_day := a.streak_last;
    grace_used := a.grace_used;
END $$;

-- A guest's entry on every leaderboard (docs/gamification.md): points all-time and in the
-- current week and month of the guest's own time zone (ISO weeks), level, achievements unlocked
-- and longest streak, each with the time the score was reached (the tie-break: earlier first).
CREATE FUNCTION gm_board_rows(g uuid) RETURNS TABLE (board text, score bigint, reach timestamptz)
LANGUAGE sql STABLE AS $$
    WITH a AS (SELECT * FROM gm_accounts WHERE guest_id = g),
    w AS (SELECT to_char(now() AT TIME ZONE time_zone, 'IYYY-"W"IW') AS wk,
                 to_char(now() AT TIME ZONE time_zone, 'YYYY-MM') AS mo, time_zone FROM a),
    t AS (SELECT CASE x.type WHEN 1 THEN x.points ELSE -x.points END AS d, x.created_at,
                 to_char(x.created_at AT TIME ZONE w.time_zone, 'IYYY-"W"IW') AS wk,
                 to_char(x.created_at AT TIME ZONE w.time_zone, 'YYYY-MM') AS mo
            FROM gm_transactions x, w WHERE x.guest_id = g AND x.type IN (1, 3))
    SELECT 'points:all', (SELECT coalesce(sum(d), 0) FROM t)::bigint,
           (SELECT max(created_at) FROM t) FROM a
    UNION ALL
    SELECT 'points:w:' || w.wk, (SELECT coalesce(sum(d), 0) FROM t WHERE t.wk = w.wk)::bigint,
           (SELECT max(created_at) FROM t WHERE t.wk = w.wk) FROM w
    UNION ALL
    SELECT 'points:m:' || w.mo, (SELECT coalesce(sum(d), 0) FROM t WHERE t.mo = w.mo)::bigint,
           (SELECT max(created_at) FROM t WHERE t.mo = w.mo) FROM w
    UNION ALL
    SELECT 'level:all', level::bigint, level_at FROM a
    UNION ALL
    SELECT 'achievements:all', (SELECT count(*) FROM gm_unlocks u WHERE u.guest_id = g)::bigint,
           (SELECT max(unlocked_at) FROM gm_unlocks u WHERE u.guest_id = g) FROM a
    UNION ALL
    SELECT 'streak:all', streak_longest::bigint, streak_best_at FROM a
$$;
