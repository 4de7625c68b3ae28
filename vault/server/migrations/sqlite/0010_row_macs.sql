-- Row MACs (SECURITY.md, "Rows that authorise"; idvault_core::rowmac).
--
-- A database writer without the root key must not be able to authorise
-- anything by inserting or editing a row. Every row below carries a MAC
-- under the row MAC key of root key version mac_version, checked on every
-- read; consents also keep the signed grant and the device's signature,
-- verified again on every standing release.
--
-- Rows written before this migration have no MAC and authorise nothing:
-- the person enrolls again, signs again, links and sets rules again; a
-- partner asks for a new challenge. The
-- vault logs how many such rows it finds when it starts. Nothing here
-- backfills MACs: a backfill would bless whatever the table held.

ALTER TABLE devices ADD COLUMN mac_version INTEGER;
ALTER TABLE devices ADD COLUMN mac BLOB;

ALTER TABLE enrollment_codes ADD COLUMN mac_version INTEGER;
ALTER TABLE enrollment_codes ADD COLUMN mac BLOB;

ALTER TABLE consent_challenges ADD COLUMN mac_version INTEGER;
ALTER TABLE consent_challenges ADD COLUMN mac BLOB;

ALTER TABLE consents ADD COLUMN grant_bytes BLOB;
ALTER TABLE consents ADD COLUMN grant_signature BLOB;
ALTER TABLE consents ADD COLUMN mac_version INTEGER;
ALTER TABLE consents ADD COLUMN mac BLOB;

ALTER TABLE entity_links ADD COLUMN mac_version INTEGER;
ALTER TABLE entity_links ADD COLUMN mac BLOB;

ALTER TABLE subject_rules ADD COLUMN mac_version INTEGER;
ALTER TABLE subject_rules ADD COLUMN mac BLOB;
