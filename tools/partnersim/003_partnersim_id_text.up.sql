-- The partner API names reservations and payment intents by their id as text, and the queries
-- compare reservation_id::text / payment_intent_id::text: without these indexes each of those
-- was a sequential scan (found by the mesh benchmark: 10-13 ms a release or cancel at 13k rows).
CREATE INDEX ps_reservations_id_text ON ps_reservations ((reservation_id::text));
CREATE INDEX ps_intents_id_text ON ps_intents ((payment_intent_id::text));
