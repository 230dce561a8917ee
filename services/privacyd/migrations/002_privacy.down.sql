-- Reverts 002_privacy.up.sql.
DROP FUNCTION pv_audit_append(int, text, text, text, text, text);
DROP FUNCTION pv_audit_canonical(bigint, timestamptz, int, text, text, text, text, text, text);
DROP TABLE pv_audit;
DROP FUNCTION pv_audit_immutable();
DROP TABLE pv_own_erasures;
DROP TABLE pv_suppressed;
DROP TABLE pv_exports;
DROP TABLE pv_extensions;
DROP TABLE pv_participants;
DROP TABLE pv_requests;
DROP TABLE pv_consent_history;
DROP TABLE pv_consents;
DROP TABLE pv_consent_guests;
DROP FUNCTION pv_iso(timestamptz);
DROP FUNCTION pv_us(timestamptz);
