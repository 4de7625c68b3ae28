-- Pairwise tokens bound to the root key (SECURITY.md, "Rows that
-- authorise"; idvault_core::rowmac::pairwise_token).
--
-- A partner names a person by its pairwise token when it asks for a
-- transaction code or publishes an event, and the vault finds the person
-- through this table. A database writer who pointed a partner's token at
-- another subject would have that subject's phone asked to approve the
-- partner's transaction, or that subject's rules run on its event. The
-- row now carries a MAC over (partner, subject_id, token) under the row
-- MAC key, checked on every read.
--
-- Rows written before this migration have no MAC and name nobody until
-- the operator runs `idvault keys seal-upgraded-tokens`, once, right after
-- the upgrade: it seals them as they are (the table trusted as it is at
-- the upgrade, as a fresh vault trusts its empty one), in audited
-- batches. The vault never seals a token on its own: whatever it decided
-- from would be in the database, which a writer without the root key
-- could set up (take every MAC away, redirect a token) to have forged
-- rows sealed. The vault logs at start how many rows carry no MAC.

ALTER TABLE pairwise_tokens ADD COLUMN mac_version BIGINT;
ALTER TABLE pairwise_tokens ADD COLUMN mac BYTEA;

CREATE INDEX pairwise_tokens_mac_version ON pairwise_tokens (mac_version, partner, subject_id);
CREATE INDEX pairwise_tokens_unsealed ON pairwise_tokens (partner, subject_id) WHERE mac IS NULL;
