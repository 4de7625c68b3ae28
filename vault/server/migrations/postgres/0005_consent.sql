-- Consent-signed release (docs/consent.md).
--
-- The uniqueness constraints here are the replay protection: a challenge,
-- a consent id, an enrollment code and a device request id are each
-- accepted once, across restarts and across replicas sharing a database.

-- Enrolled device keys (SEC1 uncompressed P-256 points).
CREATE TABLE devices (
    device_id      TEXT    PRIMARY KEY,
    subject_id     BYTEA   NOT NULL CHECK (octet_length(subject_id) = 16),
    public_key     BYTEA   NOT NULL UNIQUE CHECK (octet_length(public_key) = 65),
    enrolled_by    TEXT    NOT NULL,
    enrolled_at_ms BIGINT NOT NULL,
    revoked_at_ms  BIGINT
);

CREATE INDEX devices_subject ON devices (subject_id);

-- One-time enrollment codes, stored as SHA-256 of the code only.
CREATE TABLE enrollment_codes (
    code_hash     BYTEA   PRIMARY KEY CHECK (octet_length(code_hash) = 32),
    subject_id    BYTEA   NOT NULL CHECK (octet_length(subject_id) = 16),
    issued_to     TEXT    NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT
);

CREATE INDEX enrollment_codes_subject ON enrollment_codes (subject_id);

-- Single-use challenges, bound to a partner and a subject.
CREATE TABLE consent_challenges (
    challenge     BYTEA   PRIMARY KEY CHECK (octet_length(challenge) = 32),
    partner       TEXT    NOT NULL,
    subject_id    BYTEA   NOT NULL CHECK (octet_length(subject_id) = 16),
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT
);

CREATE INDEX consent_challenges_subject ON consent_challenges (subject_id);

-- Every grant ever presented; standing ones are used again by consent id.
CREATE TABLE consents (
    consent_id    BYTEA   PRIMARY KEY CHECK (octet_length(consent_id) = 16),
    subject_id    BYTEA   NOT NULL CHECK (octet_length(subject_id) = 16),
    device_id     TEXT    NOT NULL,
    audience      TEXT    NOT NULL,
    purpose       TEXT    NOT NULL,
    fields        TEXT    NOT NULL,
    standing      BIGINT   NOT NULL CHECK (standing IN (0, 1)),
    issued_at     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    grant_hash    BYTEA   NOT NULL CHECK (octet_length(grant_hash) = 32),
    presented_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE INDEX consents_subject ON consents (subject_id);

-- One receipt per release: what was released to whom, never a value.
CREATE TABLE consent_receipts (
    receipt_id     TEXT    PRIMARY KEY,
    consent_id     BYTEA   NOT NULL CHECK (octet_length(consent_id) = 16),
    subject_id     BYTEA   NOT NULL CHECK (octet_length(subject_id) = 16),
    partner        TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    fields         TEXT    NOT NULL,
    released_at_ms BIGINT NOT NULL,
    grant_hash     BYTEA   NOT NULL CHECK (octet_length(grant_hash) = 32)
);

CREATE INDEX consent_receipts_subject ON consent_receipts (subject_id, released_at_ms);

-- Device request ids seen (replay protection of device-signed calls).
CREATE TABLE device_requests (
    request_id BYTEA   PRIMARY KEY CHECK (octet_length(request_id) = 16),
    device_id  TEXT    NOT NULL,
    at_ms      BIGINT NOT NULL
);
