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
-- Rows written before this migration are sealed once, by the first
-- process with the root key that opens the database while no token
-- carries a MAC yet (Store::seal_upgraded_pairwise_tokens; it logs the
-- count): the table is trusted as it is at the upgrade, as a fresh vault
-- trusts its empty one. A row without a MAC found once any token is
-- sealed was inserted by hand: it authorises nothing and is never sealed.

ALTER TABLE pairwise_tokens ADD COLUMN mac_version INTEGER;
ALTER TABLE pairwise_tokens ADD COLUMN mac BLOB;

CREATE INDEX pairwise_tokens_mac_version ON pairwise_tokens (mac_version, partner, subject_id);
