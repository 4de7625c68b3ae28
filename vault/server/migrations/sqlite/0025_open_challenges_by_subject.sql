-- A person's open challenges (unused, unexpired), counted before each
-- RequestChallenge against `MAX_OPEN_CHALLENGES_PER_PERSON`. Without it the
-- count walked every challenge row of the person still kept (used and
-- expired ones too, until retention drops them), each with a table read:
-- its cost grew with the person's history, and a partner requesting
-- challenges it never uses made every partner's next request for that
-- person slower. Partial, by person and partner, ordered by expiry: the
-- count now reads only the partner's own challenges for the person that
-- are still open.
CREATE INDEX consent_challenges_open_subject ON consent_challenges (subject_id, partner, expires_at_ms) WHERE used_at_ms IS NULL;
