-- Credentials by expiry, for the retention job: a credential's row is
-- removed `[retention] expired_grace_hours` (plus the clock skew) after it
-- expires. Its list then publishes it as revoked (every placed seq
-- without a row is), and a presentation of it is refused as expired
-- before its status is read. Without it the rows of every credential
-- ever issued stayed, and each re-signing of the lists read them all.
CREATE INDEX credentials_expiry ON credentials (expires_at);
