-- The owner of a subject bound to the root key (SECURITY.md, "Rows that
-- authorise"; idvault_core::rowmac::subject_owner).
--
-- `created_by` decides which partner may update or delete a subject,
-- verify its chain and issue enrollment codes for it, so a database
-- writer who set it to a partner they control could enroll their own
-- device and have the person's data released to them. The row now carries
-- a MAC over (subject_id, created_by, created_at_ms) under the row MAC
-- key, and only a row whose MAC verifies has an owner.
--
-- Rows written before this migration are sealed when the vault starts,
-- but only on evidence a database writer cannot forge: the subject's
-- CreateSubject audit leaf, whose MAC verifies under the audit key and
-- whose caller is the partner the row names. Nothing here backfills from
-- the table alone: that would bless whatever it held.

ALTER TABLE subjects ADD COLUMN mac_version INTEGER;
ALTER TABLE subjects ADD COLUMN mac BLOB;

CREATE INDEX subjects_mac_version ON subjects (mac_version, subject_id);
CREATE INDEX subjects_unsealed ON subjects (subject_id) WHERE mac IS NULL;
