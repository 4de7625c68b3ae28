-- Blind matching, second generation (docs/blind-matching.md).
--
-- match_index.field now also holds compound blocking keys (16 and up, one
-- code per compound kind), and signatures carry kind codes and q-gram
-- Bloom filters. Every domain's indexes are rebuilt at start: the rows of
-- the first scheme are dropped here (no personal data is lost, they are
-- derived from the packets) and match_domains is emptied, so the vault
-- backfills every configured domain under the new scheme before serving.
DROP INDEX match_index_subject;
DROP TABLE match_index;
CREATE TABLE match_index (
    domain       TEXT    NOT NULL,
    bidx         INTEGER NOT NULL,
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    field        INTEGER NOT NULL CHECK (field BETWEEN 0 AND 31),
    key_version  INTEGER NOT NULL,
    PRIMARY KEY (domain, bidx, subject_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX match_index_subject ON match_index (subject_id, domain, field);
DELETE FROM match_subjects;
DELETE FROM match_domains;
-- The index scheme a domain was built under (INDEX_SCHEME in
-- idvault_core::matching); an older one is rebuilt at start.
ALTER TABLE match_domains ADD COLUMN scheme INTEGER NOT NULL DEFAULT 0;

-- A domain's learned weights (`idvault match estimate`): m/u per field
-- and level and the commonest values' counts, MACed under the row-MAC key
-- so that a database writer cannot make strangers match.
CREATE TABLE match_models (
    domain           TEXT    PRIMARY KEY,
    estimated_at_ms  INTEGER NOT NULL,
    model            BLOB    NOT NULL,
    mac_version      INTEGER NOT NULL,
    mac              BLOB    NOT NULL
) STRICT;
