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

ALTER TABLE devices ADD COLUMN mac_version BIGINT;
ALTER TABLE devices ADD COLUMN mac BYTEA;

ALTER TABLE enrollment_codes ADD COLUMN mac_version BIGINT;
ALTER TABLE enrollment_codes ADD COLUMN mac BYTEA;

ALTER TABLE consent_challenges ADD COLUMN mac_version BIGINT;
ALTER TABLE consent_challenges ADD COLUMN mac BYTEA;

ALTER TABLE consents ADD COLUMN grant_bytes BYTEA;
ALTER TABLE consents ADD COLUMN grant_signature BYTEA;
ALTER TABLE consents ADD COLUMN mac_version BIGINT;
ALTER TABLE consents ADD COLUMN mac BYTEA;

ALTER TABLE entity_links ADD COLUMN mac_version BIGINT;
ALTER TABLE entity_links ADD COLUMN mac BYTEA;

ALTER TABLE subject_rules ADD COLUMN mac_version BIGINT;
ALTER TABLE subject_rules ADD COLUMN mac BYTEA;
