-- Indexes that cost every write and served only maintenance. Four of
-- them were written by every CreateSubject, each on a random page (on
-- SQLite a WAL frame per page at COMMIT): without them about +17–20 %
-- creates/s on SQLite (docs/BENCHMARKS.md, "Thirteen indexes fewer").
--
-- * The `(mac_version, key)` indexes of migrations 0013, 0016 and 0019
--   served the rewrap's walk in version order. Every row-MAC walk now
--   goes in primary-key order from the last key read, passing over rows
--   already at the target (`idvault_server::store::rekey`), so no index
--   on the version is needed; counting rows of a version (`keys retire`,
--   the rewrap's backlog) reads the table.
-- * `match_subjects_subject` and `pairwise_tokens_subject` served one
--   statement each, the deletion of a subject. It now names the few
--   domains (partners) present with a loose index scan of the primary key
--   and deletes by `(domain, subject)` (`(partner, subject)`).
DROP INDEX IF EXISTS subjects_mac_version;
DROP INDEX IF EXISTS pairwise_tokens_mac_version;
DROP INDEX IF EXISTS devices_mac_version;
DROP INDEX IF EXISTS enrollment_codes_mac_version;
DROP INDEX IF EXISTS consent_challenges_mac_version;
DROP INDEX IF EXISTS consents_mac_version;
DROP INDEX IF EXISTS entity_links_mac_version;
DROP INDEX IF EXISTS subject_rules_mac_version;
DROP INDEX IF EXISTS status_lists_mac_version;
DROP INDEX IF EXISTS credentials_mac_version;
DROP INDEX IF EXISTS transactions_mac_version;
DROP INDEX IF EXISTS match_subjects_subject;
DROP INDEX IF EXISTS pairwise_tokens_subject;
