DROP FUNCTION ps_refund(text, text, bigint, text);
DROP TABLE ps_refunds;
DROP TABLE ps_intents;
DROP TABLE ps_quotes;
DROP TABLE ps_reservations;
