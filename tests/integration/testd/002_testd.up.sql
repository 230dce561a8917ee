CREATE TABLE sent (notification_id text PRIMARY KEY);
CREATE TABLE effects (notification_id text PRIMARY KEY, guest_id text NOT NULL);
CREATE TABLE ticks (n bigint NOT NULL);
INSERT INTO ticks VALUES (0);
