-- One row per subject and match domain: which matchable fields the subject
-- has (a bitmask of MatchField codes, bit 0 given_name … bit 8 city) and
-- its *signature*, every blind index of its variants packed as
-- (field code, 8-byte index) entries. Scoring a candidate reads this one
-- row; match_index (0003) then only holds the blocking kinds, the ones
-- looked up by value.
CREATE TABLE match_subjects (
    domain      TEXT    NOT NULL,
    subject_id  BYTEA   NOT NULL CHECK (length(subject_id) = 16),
    fields      BIGINT  NOT NULL,
    signature   BYTEA   NOT NULL,
    PRIMARY KEY (domain, subject_id)
);

CREATE INDEX match_subjects_subject ON match_subjects (subject_id);
