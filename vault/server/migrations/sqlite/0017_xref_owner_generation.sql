-- The cross-reference generation per owner (docs/tokenize.md): an import
-- that changes one partner's links invalidates that partner's cached
-- lookups only, never every partner's, and imports of different partners
-- no longer update one shared row.
CREATE TABLE xref_owner_generation (
    owner  TEXT    PRIMARY KEY,
    value  BIGINT  NOT NULL
);

DROP TABLE xref_generation;
