-- Match signatures bound to the root key (SECURITY.md, "Rows that
-- authorise"; idvault_core::rowmac::match_signature).
--
-- A match answer names the subjects whose signature rows scored, by the
-- partner's pairwise token. A database writer who copied one person's
-- signature (and blocking rows) onto another subject would have the
-- partner handed that other subject's token for the person it asked
-- about, and a transaction code asked for by that token sent to the other
-- subject's phone. Each row now carries a MAC over (domain, subject_id,
-- fields, signature) under the row MAC key, checked for every candidate a
-- query answers with.
--
-- The rows are derived data: the table is made again empty here, and the
-- vault rebuilds every domain from the subjects' packets (authenticated
-- by their data keys and chains) before it serves, because this release
-- writes index scheme 3 (idvault_core::matching::INDEX_SCHEME). Nothing is
-- sealed from what the table held.
DROP INDEX match_subjects_subject;
DROP TABLE match_subjects;
CREATE TABLE match_subjects (
    domain       TEXT    NOT NULL,
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    fields       INTEGER NOT NULL,
    signature    BLOB    NOT NULL,
    mac_version  INTEGER NOT NULL,
    mac          BLOB    NOT NULL CHECK (length(mac) = 32),
    PRIMARY KEY (domain, subject_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX match_subjects_subject ON match_subjects (subject_id);
