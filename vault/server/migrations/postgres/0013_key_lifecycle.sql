-- Key lifecycle (docs/keys.md, "Rewrap and retire").
--
-- `idvault keys rewrap` moves every row MAC forward to the newest root key
-- version in batches of `WHERE mac_version < $target ORDER BY mac_version,
-- <primary key>`; these indexes make each batch a range read instead of a
-- scan and sort of the whole table, and let
-- `idvault keys retire` count what still names a version. (Subjects, links
-- and audit leaves are walked by their primary keys instead: no index on
-- their hottest insert paths.)
CREATE INDEX devices_mac_version ON devices (mac_version, device_id);
CREATE INDEX enrollment_codes_mac_version ON enrollment_codes (mac_version, code_hash);
CREATE INDEX consent_challenges_mac_version ON consent_challenges (mac_version, challenge);
CREATE INDEX consents_mac_version ON consents (mac_version, consent_id);
CREATE INDEX entity_links_mac_version ON entity_links (mac_version, subject_id, entity);
CREATE INDEX subject_rules_mac_version ON subject_rules (mac_version, subject_id, rule_id);
CREATE INDEX status_lists_mac_version ON status_lists (mac_version, list_id);
CREATE INDEX credentials_mac_version ON credentials (mac_version, list_id, idx);
CREATE INDEX transactions_mac_version ON transactions (mac_version, transaction_id);
