-- Each new audit leaf row carries a nonce its MAC covers (the leaf's
-- time in milliseconds, big-endian, then 8 random bytes): a database
-- writer who copies a genuine leaf row gets a second row with the same
-- nonce, which this index refuses and the sequencer will not sign
-- (docs/audit.md, "Leaf rows"). Rows written before this migration keep
-- no nonce and their MAC over the leaf hash alone. The time first keeps
-- the index's new entries at its right edge; rows without a nonce are
-- left out of it, so adding it to a long log is quick.
ALTER TABLE audit_log ADD COLUMN nonce BYTEA CHECK (nonce IS NULL OR octet_length(nonce) = 16);
CREATE UNIQUE INDEX audit_log_nonce ON audit_log (nonce) WHERE nonce IS NOT NULL;
