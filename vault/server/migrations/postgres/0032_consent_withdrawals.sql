-- Consents a person withdrew before a partner presented them: RevokeConsent
-- on a consent id the vault holds no row of. A grant with that id for that
-- subject is refused when presented. A row is needed only while a grant
-- signed before the withdrawal could still be presented (the challenge
-- lifetime plus twice the clock skew); the retention job removes it after,
-- and so does the next withdrawal by the same person.
CREATE TABLE consent_withdrawals (
    consent_id      BYTEA  NOT NULL CHECK (octet_length(consent_id) = 16),
    subject_id      BYTEA  NOT NULL CHECK (octet_length(subject_id) = 16),
    device_id       TEXT   NOT NULL,
    withdrawn_at_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (consent_id, subject_id)
);
-- A device's live withdrawals are counted (bounded per device, so a stolen
-- phone, once revoked, does not hold the person's other phones back), a
-- person's expired ones are cleared, and all go with the person.
CREATE INDEX consent_withdrawals_subject ON consent_withdrawals (subject_id, device_id, expires_at_ms);
CREATE INDEX consent_withdrawals_expiry ON consent_withdrawals (expires_at_ms);
