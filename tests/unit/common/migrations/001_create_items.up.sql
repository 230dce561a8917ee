-- Test fixture: the first migration creates a table.
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
