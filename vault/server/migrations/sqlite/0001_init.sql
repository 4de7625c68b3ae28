-- idvault schema v1 (SQLite). Row types live in src/store/rows.rs.
-- No foreign keys between packets and subjects on purpose: the packet
-- chain itself proves membership, and the tamper tests move rows.

CREATE TABLE subjects (
    subject_id       BLOB    PRIMARY KEY CHECK (length(subject_id) = 16),
    created_by       TEXT    NOT NULL,
    wrapped_dek      BLOB    NOT NULL,
    kek_version      INTEGER NOT NULL,
    head_seq         INTEGER NOT NULL,
    head_hash        BLOB    NOT NULL CHECK (length(head_hash) = 32),
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
) STRICT;

CREATE TABLE packets (
    subject_id  BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    field_name  TEXT    NOT NULL,
    packet      BLOB    NOT NULL,
    PRIMARY KEY (subject_id, seq)
) STRICT;

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB    NOT NULL
) STRICT;

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    time_ms      INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    key_version  INTEGER NOT NULL,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL,
    mac          BLOB    NOT NULL
) STRICT;
