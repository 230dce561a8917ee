-- recommenderd: tracked events, the catalogue, the knowledge graph, features, served lists,
-- feedback, cross-sell offers (docs/recommender.md). The knowledge graph is relational: users,
-- items, categories and interests are the rows of rc_events, rc_items and rc_interests; the
-- edges are the view rc_graph_edges over them.

CREATE TABLE rc_items (
    item_id        text PRIMARY KEY,
    name           text        NOT NULL DEFAULT '',
    kind           smallint    NOT NULL DEFAULT 0,
    category       text        NOT NULL DEFAULT '',
    subcategories  text[]      NOT NULL DEFAULT '{}',
    description    text        NOT NULL DEFAULT '',
    price_minor    bigint,
    currency       text        NOT NULL DEFAULT '',
    image_url      text        NOT NULL DEFAULT '',
    image_file     text        NOT NULL DEFAULT '',
    tags           text[]      NOT NULL DEFAULT '{}',
    dietary_labels text[]      NOT NULL DEFAULT '{}',
    attributes     jsonb       NOT NULL DEFAULT '{}',
    app            smallint    NOT NULL DEFAULT 0,
    venue_id       text        NOT NULL DEFAULT '',
    venue_type     smallint    NOT NULL DEFAULT 0,
    hidden         boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rc_items_category ON rc_items (category);
CREATE INDEX rc_items_tags ON rc_items USING gin (tags);
CREATE INDEX rc_items_attributes ON rc_items USING gin (attributes jsonb_path_ops);
CREATE INDEX rc_items_app ON rc_items (app);

-- Item -> item edges (COMPLEMENTS = 1, SIMILAR_TO = 2).
CREATE TABLE rc_item_relations (
    item_id    text        NOT NULL REFERENCES rc_items ON DELETE CASCADE,
    related_id text        NOT NULL,
    type       smallint    NOT NULL,
    weight     float8      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, type, related_id)
);

-- Tracked events (API and bus); `source` is "api" or the bus event id's type.
CREATE TABLE rc_events (
    event_id    uuid PRIMARY KEY,
    guest_id    uuid        NOT NULL,
    type        smallint    NOT NULL,
    item_id     text        NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    rating      float8,
    weight      float8      NOT NULL DEFAULT 1,
    source      text        NOT NULL DEFAULT 'api',
    event       bytea       NOT NULL -- packed hospitality.recommender.v1.TrackedEvent
);
CREATE INDEX rc_events_guest ON rc_events (guest_id, occurred_at DESC);
CREATE INDEX rc_events_item ON rc_events (item_id) WHERE item_id <> '';

-- Popularity, time-decayed, kept incrementally as log(sum w * exp((t - t0) / tau)): ranking
-- by it is ranking by the decayed score at any moment, so it can be indexed.
CREATE TABLE rc_popularity (
    item_id   text PRIMARY KEY,
    ln_score  float8 NOT NULL,
    events    bigint NOT NULL DEFAULT 0
);
CREATE INDEX rc_popularity_rank ON rc_popularity (ln_score DESC);

CREATE TABLE rc_interests (
    guest_id   uuid        NOT NULL,
    category   text        NOT NULL,
    value      text        NOT NULL,
    confidence float8      NOT NULL,
    source     smallint    NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guest_id, category, value)
);
CREATE INDEX rc_interests_value ON rc_interests (category, value);

-- Feature state, updated with every event (decayed affinities) and on refresh.
CREATE TABLE rc_affinity (
    guest_id   uuid        NOT NULL,
    key        text        NOT NULL, -- "category:<c>" or "<attr>:<value>" / "tag:<t>"
    score      float8      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guest_id, key)
);
CREATE TABLE rc_features (
    guest_id     uuid PRIMARY KEY,
    version      bigint      NOT NULL DEFAULT 0,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    counts       jsonb       NOT NULL DEFAULT '{}', -- type number -> count
    last_event   timestamptz,
    rating_sum   float8      NOT NULL DEFAULT 0,
    rating_count bigint      NOT NULL DEFAULT 0
);

CREATE TABLE rc_recommendations (
    recommendation_id uuid PRIMARY KEY,
    guest_id          uuid,
    kind              smallint    NOT NULL,
    strategy          smallint    NOT NULL,
    model_version     text        NOT NULL DEFAULT '',
    personalized      boolean     NOT NULL,
    app               smallint    NOT NULL DEFAULT 0,
    served_at         timestamptz NOT NULL DEFAULT now(),
    rules             text[]      NOT NULL DEFAULT '{}', -- cross-sell: "item=rule" pairs
    record            bytea       NOT NULL -- packed RecommendationRecord
);
CREATE INDEX rc_recommendations_guest ON rc_recommendations (guest_id, served_at DESC);

CREATE TABLE rc_offers (
    offer_id    uuid PRIMARY KEY,
    source_app  smallint    NOT NULL,
    target_app  smallint    NOT NULL,
    priority    integer     NOT NULL DEFAULT 0,
    active      boolean     NOT NULL DEFAULT true,
    valid_from  timestamptz,
    valid_until timestamptz,
    item_ids    text[]      NOT NULL DEFAULT '{}',
    categories  text[]      NOT NULL DEFAULT '{}',
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    offer       bytea       NOT NULL -- packed Offer (stats and output fields unset)
);

CREATE TABLE rc_feedback (
    feedback_id       uuid PRIMARY KEY,
    recommendation_id uuid        NOT NULL,
    guest_id          uuid,
    item_id           text        NOT NULL,
    type              smallint    NOT NULL,
    position          integer     NOT NULL DEFAULT 0,
    offer_id          text        NOT NULL DEFAULT '',
    rule_id           text        NOT NULL DEFAULT '',
    strategy          smallint    NOT NULL DEFAULT 0,
    model_version     text        NOT NULL DEFAULT '',
    value_minor       bigint      NOT NULL DEFAULT 0,
    currency          text        NOT NULL DEFAULT '',
    occurred_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rc_feedback_guest ON rc_feedback (guest_id);
CREATE INDEX rc_feedback_offer ON rc_feedback (offer_id) WHERE offer_id <> '';

-- Erasures: receipts by request id, and the erased guests a model must not carry, kept only as
-- SHA-256 of the guest id (like privacyd's suppression list): no id of an erased guest stays.
CREATE TABLE rc_erasures (
    request_id text PRIMARY KEY,
    guest_id   uuid        NOT NULL,
    receipt    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE rc_erased_guests (
    guest_hash text PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- The knowledge graph's edges (GraphEdgeType numbers): PURCHASED 1, INTERESTED_IN 2,
-- BELONGS_TO 3, COMPLEMENTS 4, SIMILAR_TO 5.
CREATE VIEW rc_graph_edges AS
    SELECT guest_id::text AS source_id, item_id AS target_id, 1::smallint AS type,
           sum(weight * exp(-extract(epoch FROM now() - occurred_at) / (86400.0 * 90)))
               AS weight, max(occurred_at) AS updated_at
      FROM rc_events WHERE type IN (6, 7, 8) AND item_id <> '' GROUP BY guest_id, item_id
    UNION ALL
    SELECT guest_id::text, 'interest:' || category || ':' || value, 2::smallint, confidence,
           updated_at FROM rc_interests
    UNION ALL
    SELECT item_id, 'category:' || category, 3::smallint, 1.0, updated_at FROM rc_items
     WHERE category <> ''
    UNION ALL
    SELECT item_id, related_id, CASE type WHEN 1 THEN 4 ELSE 5 END::smallint, weight, updated_at
      FROM rc_item_relations;
