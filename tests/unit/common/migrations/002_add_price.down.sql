DROP INDEX items_price_idx;
ALTER TABLE items DROP COLUMN price_cents;
