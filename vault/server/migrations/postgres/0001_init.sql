-- idvault schema v1 (PostgreSQL). Row types live in src/store/rows.rs.
-- Tables are keyed by subject_id first so that a distributed
-- PostgreSQL-compatible engine can shard by subject.

CREATE TABLE subjects (
    subject_id       BYTEA   PRIMARY KEY CHECK (length(subject_id) = 16),
    created_by       TEXT    NOT NULL,
    wrapped_dek      BYTEA   NOT NULL,
    kek_version      BIGINT  NOT NULL,
    head_seq         BIGINT  NOT NULL,
    head_hash        BYTEA   NOT NULL CHECK (length(head_hash) = 32),
    created_at_ms    BIGINT  NOT NULL,
    updated_at_ms    BIGINT  NOT NULL
);

CREATE TABLE packets (
    subject_id  BYTEA   NOT NULL,
    seq         BIGINT  NOT NULL,
    field_name  TEXT    NOT NULL,
    packet      BYTEA   NOT NULL,
    PRIMARY KEY (subject_id, seq)
);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  BYTEA   NOT NULL
);

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_log (
    seq          BIGINT  PRIMARY KEY,
    time_ms      BIGINT  NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    key_version  BIGINT  NOT NULL,
    prev_hash    BYTEA   NOT NULL,
    hash         BYTEA   NOT NULL,
    mac          BYTEA   NOT NULL
);
