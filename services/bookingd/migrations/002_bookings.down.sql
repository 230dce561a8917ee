DROP TABLE bk_erasures;
DROP TABLE bk_partner_actions;
DROP TABLE bk_saga_steps;
DROP TABLE bk_sagas;
DROP TABLE bk_idempotency;
DROP TABLE bk_status_history;
DROP TABLE bk_bookings;
