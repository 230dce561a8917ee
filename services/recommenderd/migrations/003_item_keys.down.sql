-- Hashes cannot become ids again: the column keeps them.
ALTER TABLE rc_erasures RENAME COLUMN guest_hash TO guest_id;
DROP INDEX rc_events_bought_by;
DROP INDEX rc_events_bought;
DROP INDEX rc_events_item;
CREATE INDEX rc_events_item ON rc_events (item_id) WHERE item_id <> '';
CREATE INDEX rc_items_attributes ON rc_items USING gin (attributes jsonb_path_ops);
CREATE INDEX rc_items_tags ON rc_items USING gin (tags);
DROP TABLE rc_item_keys;
