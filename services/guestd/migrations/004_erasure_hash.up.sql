-- Erasure receipts are kept by the SHA-256 of the guest id (lower-case hex of the id's text),
-- as privacyd and recommenderd keep theirs: after an erasure nothing here names the guest.
-- The stored receipt (a packed ErasureReceipt) loses its guest_id field (tag 3, 36 bytes of
-- UUID text); a repeated request gets the id back from the request itself.
ALTER TABLE guest_erasures ADD COLUMN guest_hash text;
UPDATE guest_erasures
   SET guest_hash = coalesce(encode(sha256(convert_to(guest_id::text, 'UTF8')), 'hex'), ''),
       receipt = CASE WHEN guest_id IS NULL THEN receipt  -- lost by an earlier down migration
                 ELSE decode(replace(encode(receipt, 'hex'),
                                     encode('\x1a24'::bytea || convert_to(guest_id::text, 'UTF8'),
                                            'hex'), ''), 'hex') END;
ALTER TABLE guest_erasures ALTER COLUMN guest_hash SET NOT NULL;
ALTER TABLE guest_erasures DROP COLUMN guest_id;
