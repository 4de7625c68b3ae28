-- The blind-matching rows of a subject found by its storage key
-- (migration 0026) instead of by its random id: the SQLite migration of
-- the same number says why, and why the key needs no MAC. The blocking
-- rows stay keyed by (domain, bidx, subject_id); the per-subject index
-- over them and the signatures' primary key lead with the key. Rows of
-- subjects created before 0026 take their id as key.
--
-- Both tables are rebuilt (each row written once, each index built
-- once) under an exclusive lock, taken first so that no row an older
-- replica commits meanwhile is left behind in the old tables: stop every
-- replica of an older version first. They would write rows without a
-- key, which this refuses. The constraints keep their former names.
LOCK TABLE match_index, match_subjects IN ACCESS EXCLUSIVE MODE;
CREATE TABLE match_index_by_key (
    domain       TEXT    NOT NULL,
    bidx         BIGINT  NOT NULL,
    subject_id   BYTEA   NOT NULL CONSTRAINT match_index_subject_id_check
                         CHECK (length(subject_id) = 16),
    field        BIGINT  NOT NULL CONSTRAINT match_index_field_check
                         CHECK (field BETWEEN 0 AND 31),
    key_version  BIGINT  NOT NULL,
    subject_key  BYTEA   NOT NULL CONSTRAINT match_index_subject_key_check
                         CHECK (length(subject_key) = 16)
);
INSERT INTO match_index_by_key (domain, bidx, subject_id, field, key_version, subject_key)
    SELECT m.domain, m.bidx, m.subject_id, m.field, m.key_version,
           COALESCE(s.subject_key, m.subject_id)
    FROM match_index m LEFT JOIN subjects s ON s.subject_id = m.subject_id;
DROP TABLE match_index;
ALTER TABLE match_index_by_key RENAME TO match_index;
ALTER TABLE match_index ADD CONSTRAINT match_index_pkey PRIMARY KEY (domain, bidx, subject_id);
CREATE INDEX match_index_key ON match_index (subject_key, domain);

CREATE TABLE match_subjects_by_key (
    domain       TEXT    NOT NULL,
    subject_key  BYTEA   NOT NULL CONSTRAINT match_subjects_subject_key_check
                         CHECK (length(subject_key) = 16),
    subject_id   BYTEA   NOT NULL CONSTRAINT match_subjects_subject_id_check
                         CHECK (length(subject_id) = 16),
    fields       BIGINT  NOT NULL,
    signature    BYTEA   NOT NULL,
    mac_version  BIGINT  NOT NULL,
    mac          BYTEA   NOT NULL CONSTRAINT match_subjects_mac_check
                         CHECK (length(mac) = 32)
);
INSERT INTO match_subjects_by_key
    (domain, subject_key, subject_id, fields, signature, mac_version, mac)
    SELECT m.domain, COALESCE(s.subject_key, m.subject_id), m.subject_id,
           m.fields, m.signature, m.mac_version, m.mac
    FROM match_subjects m LEFT JOIN subjects s ON s.subject_id = m.subject_id;
DROP TABLE match_subjects;
ALTER TABLE match_subjects_by_key RENAME TO match_subjects;
ALTER TABLE match_subjects ADD CONSTRAINT match_subjects_pkey
    PRIMARY KEY (domain, subject_key, subject_id);
-- Fresh tables have no statistics until autovacuum comes by; the match
-- lookups are planned from the first query.
ANALYZE match_index;
ANALYZE match_subjects;
