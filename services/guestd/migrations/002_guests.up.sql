-- Guest profiles. Personal data (name, email, phone) is stored only encrypted (AES-256-GCM,
-- key id inside each blob), and so are precise coordinates; email and phone are found
-- through keyed HMAC blind indexes.
CREATE TABLE guests (
    guest_id        uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    status          smallint    NOT NULL DEFAULT 1,
    version         bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    name_enc        bytea,
    email_enc       bytea,
    email_index     text        UNIQUE,
    phone_enc       bytea,
    phone_index     text        UNIQUE,
    location_city   text        NOT NULL DEFAULT '',
    location_region text        NOT NULL DEFAULT '',
    location_country text       NOT NULL DEFAULT '',
    location_point_enc bytea,
    theme           smallint    NOT NULL DEFAULT 0,
    visibility      smallint    NOT NULL DEFAULT 0,
    show_on_leaderboards boolean NOT NULL DEFAULT false,
    avatar_url      text        NOT NULL DEFAULT '',
    bio             text        NOT NULL DEFAULT '',
    language        text        NOT NULL DEFAULT '',
    time_zone       text        NOT NULL DEFAULT '',
    origin_app      smallint    NOT NULL DEFAULT 0,
    idempotency_key text        UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
