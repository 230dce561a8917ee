-- The plain ids cannot come back from their hashes: the column returns empty.
ALTER TABLE bk_erasures ADD COLUMN guest_id uuid;
ALTER TABLE bk_erasures DROP COLUMN guest_hash;
