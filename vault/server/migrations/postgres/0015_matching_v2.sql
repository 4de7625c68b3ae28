-- Blind matching, second generation (docs/blind-matching.md).
--
-- match_index.field now also holds compound blocking keys (16 and up, one
-- code per compound kind), and signatures carry kind codes and q-gram
-- Bloom filters. Every domain's indexes are rebuilt at start: the rows of
-- the first scheme are dropped here (no personal data is lost, they are
-- derived from the packets) and match_domains is emptied, so the vault
-- backfills every configured domain under the new scheme before serving.
TRUNCATE match_index, match_subjects;
ALTER TABLE match_index DROP CONSTRAINT match_index_field_check;
ALTER TABLE match_index ADD CONSTRAINT match_index_field_check CHECK (field BETWEEN 0 AND 31);
DELETE FROM match_domains;
-- The index scheme a domain was built under (INDEX_SCHEME in
-- idvault_core::matching); an older one is rebuilt at start.
ALTER TABLE match_domains ADD COLUMN scheme BIGINT NOT NULL DEFAULT 0;

-- A domain's learned weights (`idvault match estimate`): m/u per field
-- and level and the commonest values' counts, MACed under the row-MAC key
-- so that a database writer cannot make strangers match.
CREATE TABLE match_models (
    domain           TEXT    PRIMARY KEY,
    estimated_at_ms  BIGINT  NOT NULL,
    model            BYTEA   NOT NULL,
    mac_version      BIGINT  NOT NULL,
    mac              BYTEA   NOT NULL
);
