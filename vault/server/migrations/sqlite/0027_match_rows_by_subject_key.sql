-- The blind-matching rows of a subject found by its storage key
-- (migration 0026) instead of by its random id: a create's signature
-- rows and the per-subject index over its blocking rows then land on the
-- last pages of their B-trees, beside the rest of its group commit's,
-- where the random id put each on a page of its own (a WAL frame each at
-- COMMIT: docs/BENCHMARKS.md, "Where a create's WAL frames come from").
-- The blocking rows themselves stay keyed by (domain, bidx, subject_id):
-- they are looked up by blind index, and an index is random anyway.
--
-- As for packets, the key is a locator only, with no MAC: every row
-- still names its subject id, a signature's MAC covers the id (not the
-- key), and every per-subject read and delete names the id beside the
-- key (a signature read by key keeps only the row of the id ranked
-- under it). Rows a database writer moves or copies under another key
-- answer, if at all, for the subject they name, whose MAC they carry;
-- moved off their subject's key, they are out of reach of its updates
-- and deletion (SECURITY.md). Rows of subjects created before 0026 take
-- their id as key.
CREATE TABLE match_index_by_key (
    domain       TEXT    NOT NULL,
    bidx         INTEGER NOT NULL,
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    field        INTEGER NOT NULL CHECK (field BETWEEN 0 AND 31),
    key_version  INTEGER NOT NULL,
    subject_key  BLOB    NOT NULL CHECK (length(subject_key) = 16),
    PRIMARY KEY (domain, bidx, subject_id)
) STRICT, WITHOUT ROWID;
INSERT INTO match_index_by_key (domain, bidx, subject_id, field, key_version, subject_key)
    SELECT m.domain, m.bidx, m.subject_id, m.field, m.key_version,
           COALESCE((SELECT COALESCE(s.subject_key, s.subject_id) FROM subjects s
                     WHERE s.subject_id = m.subject_id), m.subject_id)
    FROM match_index m;
DROP INDEX match_index_subject;
DROP TABLE match_index;
ALTER TABLE match_index_by_key RENAME TO match_index;
-- A subject's rows (an update, a re-index, a deletion drop them): the
-- key first, so a create's entries are appended.
CREATE INDEX match_index_key ON match_index (subject_key, domain);

CREATE TABLE match_subjects_by_key (
    domain       TEXT    NOT NULL,
    subject_key  BLOB    NOT NULL CHECK (length(subject_key) = 16),
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    fields       INTEGER NOT NULL,
    signature    BLOB    NOT NULL,
    mac_version  INTEGER NOT NULL,
    mac          BLOB    NOT NULL CHECK (length(mac) = 32),
    PRIMARY KEY (domain, subject_key, subject_id)
) STRICT, WITHOUT ROWID;
INSERT INTO match_subjects_by_key
    (domain, subject_key, subject_id, fields, signature, mac_version, mac)
    SELECT m.domain,
           COALESCE((SELECT COALESCE(s.subject_key, s.subject_id) FROM subjects s
                     WHERE s.subject_id = m.subject_id), m.subject_id),
           m.subject_id, m.fields, m.signature, m.mac_version, m.mac
    FROM match_subjects m;
DROP TABLE match_subjects;
ALTER TABLE match_subjects_by_key RENAME TO match_subjects;
