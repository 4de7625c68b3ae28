-- The retention job (service/retention.rs) removes spent single-use rows
-- and old processed events in batches, oldest first: these indexes let
-- each batch find its rows without scanning the table.
CREATE INDEX consent_challenges_expiry ON consent_challenges (expires_at_ms);
CREATE INDEX enrollment_codes_expiry ON enrollment_codes (expires_at_ms);
CREATE INDEX device_requests_at ON device_requests (at_ms);
CREATE INDEX events_accepted ON events (accepted_at_ms);
