DROP TABLE IF EXISTS processed_events;
DROP TABLE IF EXISTS outbox;
