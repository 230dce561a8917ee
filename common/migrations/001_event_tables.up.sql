-- The event backbone's tables, the same in every daemon's database (DESIGN.md §6):
-- the transactional outbox (written in the same transaction as the state change, moved to
-- Redis Streams by the relay) and the ids of consumed events (exactly-once effects).
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL,
    subject      text        NOT NULL DEFAULT '',
    stream       text        NOT NULL,
    envelope     bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE processed_events (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
