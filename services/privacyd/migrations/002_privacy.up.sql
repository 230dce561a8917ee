-- privacyd's data (docs/privacy.md): consent (current state, versions, history), data-subject
-- requests with per-participant state, stored exports (encrypted), the erasure suppression
-- list (hashed ids), receipts of privacyd's own erasures and the hash-chained audit log.
-- Enum columns hold the proto enum values (hospitality.common.v1 / hospitality.privacy.v1).

-- Timestamps as privacyd reads them: epoch microseconds, and ISO 8601 in UTC for exports.
CREATE FUNCTION pv_us(t timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM t) * 1000000)::bigint
$$;
CREATE FUNCTION pv_iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- One row per guest that ever had a consent decision: the consent version (optimistic
-- locking for UpdateConsent; increases by one per update).
CREATE TABLE pv_consent_guests (
    guest_id   uuid        PRIMARY KEY,
    version    bigint      NOT NULL CHECK (version > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The current decision per guest and purpose.
CREATE TABLE pv_consents (
    guest_id       uuid        NOT NULL REFERENCES pv_consent_guests ON DELETE CASCADE,
    purpose        int         NOT NULL CHECK (purpose BETWEEN 1 AND 5),
    status         int         NOT NULL CHECK (status BETWEEN 1 AND 3),
    source         int         NOT NULL CHECK (source BETWEEN 1 AND 6),
    notice_version text        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    expires_at     timestamptz,
    actor_type     int         NOT NULL,
    actor_id       text        NOT NULL,
    version        bigint      NOT NULL,
    PRIMARY KEY (guest_id, purpose)
);
-- Grants that lapse (the expiry task turns them into WITHDRAWN with source EXPIRY).
CREATE INDEX pv_consents_expiring ON pv_consents (expires_at) WHERE status = 1 AND expires_at IS NOT NULL;

-- Every decision ever recorded, append-only (newest first by id).
CREATE TABLE pv_consent_history (
    id             bigserial   PRIMARY KEY,
    guest_id       uuid        NOT NULL REFERENCES pv_consent_guests ON DELETE CASCADE,
    purpose        int         NOT NULL,
    status         int         NOT NULL,
    source         int         NOT NULL,
    notice_version text        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    expires_at     timestamptz,
    actor_type     int         NOT NULL,
    actor_id       text        NOT NULL,
    version        bigint      NOT NULL
);
CREATE INDEX pv_consent_history_guest ON pv_consent_history (guest_id, id DESC);

-- Export and erasure requests. guest_id is cleared (NULL) once an erasure of the guest
-- completed; subject_hash (SHA-256 hex of the id) stays. lease_until is when a worker's claim
-- on the request lapses (replica-safe processing without a transaction across peer calls).
CREATE TABLE pv_requests (
    request_id        uuid        PRIMARY KEY,
    guest_id          uuid,
    subject_hash      text        NOT NULL,
    type              int         NOT NULL CHECK (type IN (1, 2)),
    status            int         NOT NULL CHECK (status BETWEEN 1 AND 5),
    jurisdiction      int         NOT NULL CHECK (jurisdiction BETWEEN 1 AND 3),
    categories        int[]       NOT NULL DEFAULT '{}',
    erasure_mode      int         NOT NULL DEFAULT 0,
    include_csv       boolean     NOT NULL DEFAULT false,
    reason            text        NOT NULL DEFAULT '',
    requested_by_type int         NOT NULL,
    requested_by_id   text        NOT NULL,
    idempotency_key   text        NOT NULL DEFAULT '',
    code_hash         text        NOT NULL DEFAULT '',
    code_sealed       bytea,
    received_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    due_at            timestamptz NOT NULL,
    export_expires_at timestamptz,
    attempts          int         NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until       timestamptz,
    failure_reason    text        NOT NULL DEFAULT '',
    verification      bytea,
    overdue_alerted   boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX pv_requests_idem ON pv_requests (subject_hash, type, idempotency_key)
    WHERE idempotency_key <> '';
CREATE INDEX pv_requests_guest ON pv_requests (guest_id, received_at DESC);
CREATE INDEX pv_requests_open ON pv_requests (next_attempt_at) WHERE status IN (1, 2);
CREATE INDEX pv_requests_recent ON pv_requests (received_at DESC, request_id DESC);

-- One participant's part of a request.
CREATE TABLE pv_participants (
    request_id       uuid        NOT NULL REFERENCES pv_requests ON DELETE CASCADE,
    participant      text        NOT NULL,
    status           int         NOT NULL DEFAULT 1 CHECK (status BETWEEN 1 AND 4),
    attempts         int         NOT NULL DEFAULT 0,
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz,
    last_error       text        NOT NULL DEFAULT '',
    exported_records bigint      NOT NULL DEFAULT 0,
    receipt          bytea,
    -- Erasures: how many times verification sent this participant back (its erase calls
    -- then carry "<request id>:<round>" so that an idempotent participant erases again).
    erase_round      int         NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, participant)
);

-- Extensions of a request's statutory deadline, oldest first.
CREATE TABLE pv_extensions (
    id              bigserial   PRIMARY KEY,
    request_id      uuid        NOT NULL REFERENCES pv_requests ON DELETE CASCADE,
    previous_due_at timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    reason          text        NOT NULL,
    actor_type      int         NOT NULL,
    actor_id        text        NOT NULL,
    extended_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX pv_extensions_request ON pv_extensions (request_id, id);

-- Finished exports: a packed hospitality.privacy.v1.DataExport encrypted with the PII keyring
-- (aad "privacyd:export:<request id>"); deleted after expires_at by the retention task.
CREATE TABLE pv_exports (
    request_id   uuid        PRIMARY KEY REFERENCES pv_requests ON DELETE CASCADE,
    sealed       bytea       NOT NULL,
    generated_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX pv_exports_expiry ON pv_exports (expires_at);

-- The erasure suppression list (hm/suppress.h): SHA-256 hex of erased guest ids, mirrored
-- into the Redis set hm:privacy:suppressed.
CREATE TABLE pv_suppressed (
    subject_hash text        PRIMARY KEY,
    request_id   uuid        NOT NULL,
    added_at     timestamptz NOT NULL DEFAULT now()
);

-- Receipts of privacyd's own DataSubjectService erasures (idempotency by request id).
CREATE TABLE pv_own_erasures (
    request_id text        PRIMARY KEY,
    receipt    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The audit log: append-only, each entry's hash covers its content and its predecessor's hash
-- (pv_audit_canonical). Subjects appear only as hashes.
CREATE TABLE pv_audit (
    seq          bigint      PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor_type   int         NOT NULL,
    actor_id     text        NOT NULL,
    action       text        NOT NULL,
    subject_hash text        NOT NULL,
    request_id   text        NOT NULL,
    detail       text        NOT NULL,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL
);

CREATE FUNCTION pv_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pv_audit is append-only' USING ERRCODE = 'HM001';
END $$;
CREATE TRIGGER pv_audit_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON pv_audit
    FOR EACH STATEMENT EXECUTE FUNCTION pv_audit_immutable();

-- The text an entry's hash is the SHA-256 of (privacyd's VerifyAuditLog recomputes it in C).
CREATE FUNCTION pv_audit_canonical(seq bigint, at timestamptz, actor_type int, actor_id text,
                                   action text, subject_hash text, request_id text,
                                   detail text, prev_hash text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT seq::text || '|' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '|' || actor_type::text || '|' || actor_id || '|' || action || '|' || subject_hash
        || '|' || request_id || '|' || detail || '|' || prev_hash
$$;

-- Appends one entry in the caller's transaction. The advisory lock (held to the end of the
-- transaction) serializes appends so that the chain has no forks.
CREATE FUNCTION pv_audit_append(p_actor_type int, p_actor_id text, p_action text,
                                p_subject_hash text, p_request_id text, p_detail text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_prev text;
    v_seq  bigint;
    v_at   timestamptz := date_trunc('microseconds', clock_timestamp());
BEGIN
    PERFORM pg_advisory_xact_lock(7203310);
    SELECT seq, hash INTO v_seq, v_prev FROM pv_audit ORDER BY seq DESC LIMIT 1;
    v_seq := coalesce(v_seq, 0) + 1;
    v_prev := coalesce(v_prev, repeat('0', 64));
    INSERT INTO pv_audit (seq, at, actor_type, actor_id, action, subject_hash, request_id,
                          detail, prev_hash, hash)
    VALUES (v_seq, v_at, p_actor_type, p_actor_id, p_action, p_subject_hash, p_request_id,
            p_detail, v_prev,
            encode(sha256(convert_to(pv_audit_canonical(v_seq, v_at, p_actor_type, p_actor_id,
                p_action, p_subject_hash, p_request_id, p_detail, v_prev), 'UTF8')), 'hex'));
    RETURN v_seq;
END $$;
