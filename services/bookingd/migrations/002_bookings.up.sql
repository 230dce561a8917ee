-- bookingd (docs/bookingd.md): bookings, their status history, idempotency keys, the saga log
-- and the partner actions left to do.
--
-- No double booking: the exclusion constraint bk_no_overlap makes overlapping active bookings
-- (PENDING 1, CONFIRMED 2, CHECKED_IN 3) of one inventory item impossible, whatever the code
-- does. `period` is half-open, [start, end): back-to-back slots do not overlap.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE bk_bookings (
    booking_id               uuid        PRIMARY KEY,
    reference                text        NOT NULL UNIQUE,
    idempotency_key          text        NOT NULL DEFAULT '',
    guest_id                 uuid        NOT NULL,
    -- personal data, AES-256-GCM (hm/crypto.h), aad "booking:<field>:<booking_id>"; NULL when
    -- not given or erased
    guest_name               bytea,
    guest_email              bytea,
    guest_phone              bytea,
    venue_id                 text        NOT NULL,
    venue_type               smallint    NOT NULL,
    venue_name               text        NOT NULL DEFAULT '',
    time_zone                text        NOT NULL,
    booking_date             date        NOT NULL,
    booking_time             time        NOT NULL,
    duration_minutes         integer     NOT NULL DEFAULT 0,
    nights                   integer     NOT NULL DEFAULT 0,
    period                   tstzrange   NOT NULL CHECK (NOT isempty(period)),
    party_size               integer     NOT NULL CHECK (party_size >= 1),
    status                   smallint    NOT NULL CHECK (status BETWEEN 1 AND 7),
    version                  bigint      NOT NULL DEFAULT 1,
    currency                 text        NOT NULL,
    base_price               bigint      NOT NULL DEFAULT 0,
    tax_amount               bigint      NOT NULL DEFAULT 0,
    discount_amount          bigint      NOT NULL DEFAULT 0,
    total_price              bigint      NOT NULL DEFAULT 0,
    pricing_defaulted        boolean     NOT NULL DEFAULT false,
    promotion_code           text        NOT NULL DEFAULT '',
    quote_id                 text        NOT NULL DEFAULT '',
    payment_intent_id        text        NOT NULL DEFAULT '',
    payment_status           smallint    NOT NULL DEFAULT 0,
    refund_id                text        NOT NULL DEFAULT '',
    inventory_reservation_id text        NOT NULL DEFAULT '',
    inventory_item_id        text        NOT NULL,
    special_requests         text        NOT NULL DEFAULT '',
    internal_notes           text        NOT NULL DEFAULT '',
    source                   smallint    NOT NULL DEFAULT 0,
    metadata                 jsonb       NOT NULL DEFAULT '{}',
    created_at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    confirmed_at             timestamptz,
    cancelled_at             timestamptz,
    checked_in_at            timestamptz,
    completed_at             timestamptz,
    expires_at               timestamptz,
    cancellation_reason      text        NOT NULL DEFAULT '',
    cancelled_by_type        smallint    NOT NULL DEFAULT 0,
    cancelled_by_id          text        NOT NULL DEFAULT '',
    -- true while the create saga runs: the row holds the slot but nobody sees it yet
    provisional              boolean     NOT NULL DEFAULT true,
    -- the saga changing the booking (update), if any: other changes wait (ABORTED)
    saga_id                  uuid,
    anonymized_at            timestamptz,
    CONSTRAINT bk_no_overlap EXCLUDE USING gist (
        venue_id WITH =, inventory_item_id WITH =, period WITH &&) WHERE (status IN (1, 2, 3))
);
-- conflicts of one item (the pre-check before partner calls, availability answers)
CREATE INDEX bk_bookings_item ON bk_bookings (venue_id, inventory_item_id, lower(period))
    WHERE status IN (1, 2, 3);
CREATE INDEX bk_bookings_guest ON bk_bookings (guest_id, lower(period));
CREATE INDEX bk_bookings_venue ON bk_bookings (venue_id, lower(period));
CREATE INDEX bk_bookings_venue_date ON bk_bookings (venue_id, booking_date);
CREATE INDEX bk_bookings_status ON bk_bookings (status);
CREATE INDEX bk_bookings_date ON bk_bookings (booking_date);
CREATE INDEX bk_bookings_expiry ON bk_bookings (expires_at) WHERE status = 1;

-- actor_type: hospitality.common.v1.ActorType; from_status 0 = the creation entry
CREATE TABLE bk_status_history (
    id          bigserial   PRIMARY KEY,
    booking_id  uuid        NOT NULL REFERENCES bk_bookings ON DELETE CASCADE,
    from_status smallint    NOT NULL,
    to_status   smallint    NOT NULL,
    actor_type  smallint    NOT NULL,
    actor_id    text        NOT NULL DEFAULT '',
    reason      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX bk_status_history_booking ON bk_status_history (booking_id, id);

-- One row per (operation:caller, key). state 0 = running (lease_until bounds a crashed
-- owner), 1 = done with the original outcome: the response (encrypted: it holds personal data)
-- or the error. Kept 24 h (expires_at); an expired row is reused.
CREATE TABLE bk_idempotency (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,
    state       smallint    NOT NULL DEFAULT 0,
    booking_id  uuid,
    response    bytea,
    err_code    integer,
    err_reason  text,
    err_message text,
    lease_until timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX bk_idempotency_expiry ON bk_idempotency (expires_at);

-- Sagas with the partners (create, update). While the owner runs it holds a session advisory
-- lock on the saga (bk_saga_lock): recovery takes over a running saga only when it can take
-- that lock, i.e. when the owner's connection (its process) is gone.
CREATE TABLE bk_sagas (
    saga_id    uuid        PRIMARY KEY,
    booking_id uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('create', 'update')),
    state      text        NOT NULL DEFAULT 'running'
                           CHECK (state IN ('running', 'done', 'compensated')),
    step       text        NOT NULL DEFAULT 'started',
    data       jsonb       NOT NULL DEFAULT '{}',
    idem_scope text,
    idem_key   text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX bk_sagas_running ON bk_sagas (created_at) WHERE state = 'running';

CREATE TABLE bk_saga_steps (
    seq     bigserial   PRIMARY KEY,
    saga_id uuid        NOT NULL REFERENCES bk_sagas ON DELETE CASCADE,
    step    text        NOT NULL,
    status  text        NOT NULL,
    detail  jsonb       NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX bk_saga_steps_saga ON bk_saga_steps (saga_id, seq);

-- Partner calls that must happen after a commit (release a hold, cancel or refund a payment
-- intent): written in the transaction that made them necessary, done right after it and
-- retried by the partner-actions task until they succeed (claimed with a lease: replica-safe).
CREATE TABLE bk_partner_actions (
    action_id  bigserial   PRIMARY KEY,
    booking_id uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('release', 'settle')),
    target     text        NOT NULL, -- reservation id / payment intent id
    key        text        NOT NULL, -- refund idempotency key for 'settle'
    reason     text        NOT NULL DEFAULT '',
    attempts   integer     NOT NULL DEFAULT 0,
    next_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    done_at    timestamptz,
    result     text        NOT NULL DEFAULT '',
    last_error text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX bk_partner_actions_due ON bk_partner_actions (next_at) WHERE done_at IS NULL;
CREATE INDEX bk_partner_actions_booking ON bk_partner_actions (booking_id);

-- Erasure receipts by privacyd's request id (EraseSubjectData is idempotent by it).
CREATE TABLE bk_erasures (
    request_id text        PRIMARY KEY,
    guest_id   uuid        NOT NULL,
    receipt    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
