-- Blind matching (docs/blind-matching.md).
--
-- match_index holds only keyed, truncated blind indexes of normalised
-- variants of subjects' matchable fields, once per match domain (each
-- domain has its own keys). `field` is the MatchField code (0 given_name,
-- 1 family_name, 2 date_of_birth, 3 national_id, 4 phone, 5 email,
-- 6 street_address, 7 postcode, 8 city). WITHOUT ROWID makes the primary
-- key the table, so the per-subject index below covers every column.
CREATE TABLE match_index (
    domain       TEXT    NOT NULL,
    bidx         INTEGER NOT NULL,
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    field        INTEGER NOT NULL CHECK (field BETWEEN 0 AND 8),
    key_version  INTEGER NOT NULL,
    PRIMARY KEY (domain, bidx, subject_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX match_index_subject ON match_index (subject_id, domain, field);

-- Match domains whose indexes cover every subject (backfilled at start).
CREATE TABLE match_domains (
    domain         TEXT    PRIMARY KEY,
    indexed_at_ms  INTEGER NOT NULL
) STRICT;

-- Pairwise tokens: one random token per (partner, subject), handed out by
-- CreateSubject and match answers, so a partner can join answers to its own
-- records while two partners' tokens for one person are unrelated.
CREATE TABLE pairwise_tokens (
    partner     TEXT NOT NULL,
    subject_id  BLOB NOT NULL CHECK (length(subject_id) = 16),
    token       TEXT NOT NULL UNIQUE,
    PRIMARY KEY (partner, subject_id)
) STRICT;

CREATE INDEX pairwise_tokens_subject ON pairwise_tokens (subject_id);
