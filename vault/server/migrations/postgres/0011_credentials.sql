-- Digital-ID revocation: Token Status Lists (docs/digital-id.md,
-- "Revocation"; idvault_core::sdjwt::status).
--
-- A list has 2^log2 entries; its n-th credential (seq n) sits at index
-- permutation(n) under the list's permutation key (root key version
-- key_version). next_seq counts the credentials placed. Both tables carry
-- row MACs: a credential is valid in the published list only if its row
-- verifies and is not revoked, and every seq below next_seq without such a
-- row is published as revoked, so deleting a row revokes rather than
-- reinstates.
CREATE TABLE status_lists (
    list_id       BIGINT PRIMARY KEY,
    log2          BIGINT  NOT NULL,
    key_version   BIGINT  NOT NULL,
    next_seq      BIGINT  NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    mac_version   BIGINT,
    mac           BYTEA
);

-- One row per issued credential. subject_id and device_id are cleared
-- when the person is deleted (the row stays, revoked, until its list is
-- dropped: the index must never point at another credential).
CREATE TABLE credentials (
    list_id       BIGINT  NOT NULL,
    idx           BIGINT  NOT NULL,
    seq           BIGINT  NOT NULL,
    subject_id    BYTEA   CHECK (subject_id IS NULL OR octet_length(subject_id) = 16),
    device_id     TEXT,
    expires_at    BIGINT  NOT NULL,
    revoked_at_ms BIGINT,
    mac_version   BIGINT,
    mac           BYTEA,
    PRIMARY KEY (list_id, idx),
    UNIQUE (list_id, seq)
);

CREATE INDEX credentials_subject ON credentials (subject_id);
CREATE INDEX credentials_device ON credentials (device_id);
