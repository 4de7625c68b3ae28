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
    list_id       INTEGER PRIMARY KEY,
    log2          INTEGER NOT NULL,
    key_version   INTEGER NOT NULL,
    next_seq      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    mac_version   INTEGER,
    mac           BLOB
) STRICT;

-- One row per issued credential. subject_id and device_id are cleared
-- when the person is deleted (the row stays, revoked, until its list is
-- dropped: the index must never point at another credential).
CREATE TABLE credentials (
    list_id       INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    subject_id    BLOB    CHECK (subject_id IS NULL OR length(subject_id) = 16),
    device_id     TEXT,
    expires_at    INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    mac_version   INTEGER,
    mac           BLOB,
    PRIMARY KEY (list_id, idx),
    UNIQUE (list_id, seq)
) STRICT;

CREATE INDEX credentials_subject ON credentials (subject_id);
CREATE INDEX credentials_device ON credentials (device_id);
