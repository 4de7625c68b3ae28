-- A partner's open challenges (unused, unexpired), counted before each
-- RequestChallenge against its caps (`MAX_OPEN_CHALLENGES_PER_PARTNER`,
-- `MAX_OPEN_CHALLENGES_PER_PERSON`). Partial: a used challenge leaves it,
-- so the count walks only what is still open.
CREATE INDEX consent_challenges_open ON consent_challenges (partner, expires_at_ms) WHERE used_at_ms IS NULL;
