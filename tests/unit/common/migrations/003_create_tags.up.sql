-- Test fixture: a table referencing another, with a comment holding a quote ' and "quotes".
CREATE TABLE item_tags (
    item_id bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    tag text NOT NULL CHECK (tag <> ''),
    PRIMARY KEY (item_id, tag)
);
