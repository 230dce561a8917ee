-- Test fixture: an additive change (expand), two statements in one script.
ALTER TABLE items ADD COLUMN price_cents bigint NOT NULL DEFAULT 0;
CREATE INDEX items_price_idx ON items (price_cents);
