DROP INDEX ps_intents_id_text;
DROP INDEX ps_reservations_id_text;
