-- One-time transaction codes (docs/digital-id.md, "Transaction codes";
-- idvault_core::transaction).
--
-- code_mac is HMAC(transaction-code key, code): a copy of the table does
-- not give the 40-bit codes away. Rows carry row MACs: a forged or edited
-- row (an approval the person never gave) is refused. The retention job
-- removes transactions an hour after they expire.
CREATE TABLE transactions (
    transaction_id  BLOB    PRIMARY KEY CHECK (length(transaction_id) = 16),
    code_mac        BLOB    NOT NULL UNIQUE CHECK (length(code_mac) = 32),
    partner         TEXT    NOT NULL,
    subject_id      BLOB    NOT NULL CHECK (length(subject_id) = 16),
    pairwise_token  TEXT    NOT NULL,
    binding_message TEXT    NOT NULL,
    claims          TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    answered_by     TEXT,
    answered_at_ms  INTEGER,
    approved        TEXT    NOT NULL,
    mac_version     INTEGER,
    mac             BLOB
) STRICT;

-- The pending counts read only unexpired rows through these.
CREATE INDEX transactions_subject ON transactions (subject_id, state, expires_at_ms);
CREATE INDEX transactions_partner ON transactions (partner, state, expires_at_ms);
CREATE INDEX transactions_expiry ON transactions (expires_at_ms);

-- Wrong codes entered per device, to rate-limit guessing (pruned by the
-- retention job).
CREATE TABLE code_failures (
    device_id TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL
) STRICT;

CREATE INDEX code_failures_device ON code_failures (device_id, at_ms);
