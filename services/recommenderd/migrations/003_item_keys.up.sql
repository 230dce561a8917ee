-- recommenderd: the catalogue's inverted index and the graph walk's indexes (docs/recommender.md).
--
-- rc_item_keys holds each item's content keys ("category:<c>", "tag:<t>", "<attribute>:<value>"),
-- the same keys as the guests' affinities: content candidates and affinity updates become
-- index look-ups instead of GIN scans of rc_items (rewritten with the item by UpsertItems).
-- The two partial indexes give the two-hop walk over PURCHASED edges index-only scans both ways.
CREATE TABLE rc_item_keys (
    key     text NOT NULL,
    item_id text NOT NULL REFERENCES rc_items ON DELETE CASCADE,
    PRIMARY KEY (key, item_id)
);
CREATE INDEX rc_item_keys_item ON rc_item_keys (item_id);
INSERT INTO rc_item_keys (key, item_id)
SELECT DISTINCT k, i.item_id FROM rc_items i CROSS JOIN LATERAL (
    SELECT 'category:' || i.category AS k WHERE i.category <> ''
    UNION SELECT 'tag:' || unnest(i.tags)
    UNION SELECT x.key || ':' || x.value FROM jsonb_each_text(i.attributes) x) keys;

DROP INDEX rc_items_tags;
DROP INDEX rc_items_attributes;
DROP INDEX rc_events_item;
CREATE INDEX rc_events_item ON rc_events (item_id);
CREATE INDEX rc_events_bought ON rc_events (item_id, guest_id) INCLUDE (weight)
    WHERE type IN (6, 7, 8) AND item_id <> '';
CREATE INDEX rc_events_bought_by ON rc_events (guest_id, item_id) INCLUDE (weight)
    WHERE type IN (6, 7, 8) AND item_id <> '';

-- Erasure receipts are kept by the SHA-256 of the guest id too (lower-case hex, as
-- rc_erased_guests and the erasure suppression list), so that no row names an erased guest.
ALTER TABLE rc_erasures RENAME COLUMN guest_id TO guest_hash;
ALTER TABLE rc_erasures ALTER COLUMN guest_hash TYPE text
    USING encode(sha256(convert_to(guest_hash::text, 'UTF8')), 'hex');
