-- The plain ids cannot come back from their hashes: the column returns empty.
ALTER TABLE guest_erasures ADD COLUMN guest_id uuid;
ALTER TABLE guest_erasures DROP COLUMN guest_hash;
