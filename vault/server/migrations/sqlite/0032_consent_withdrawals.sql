-- Consents a person withdrew before a partner presented them: RevokeConsent
-- on a consent id the vault holds no row of. A grant with that id for that
-- subject is refused when presented. A row is needed only while a grant
-- signed before the withdrawal could still be presented (the challenge
-- lifetime plus twice the clock skew); the retention job removes it after.
CREATE TABLE consent_withdrawals (
    consent_id      BLOB    NOT NULL CHECK (length(consent_id) = 16),
    subject_id      BLOB    NOT NULL CHECK (length(subject_id) = 16),
    withdrawn_at_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (consent_id, subject_id)
) STRICT, WITHOUT ROWID;
-- A person's live withdrawals are counted (bounded per person), and go
-- with the person.
CREATE INDEX consent_withdrawals_subject ON consent_withdrawals (subject_id, expires_at_ms);
CREATE INDEX consent_withdrawals_expiry ON consent_withdrawals (expires_at_ms);
