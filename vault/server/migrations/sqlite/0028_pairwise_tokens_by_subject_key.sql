-- Pairwise tokens found by (partner, storage key, subject id) instead of
-- (partner, subject id). The subject id is random, so every create put
-- its creator's token on a random page of that key's index: a WAL frame
-- per create at COMMIT however few bytes changed. Under the storage key
-- (migration 0026, a version-7 UUID drawn at create) a group commit's new
-- tokens share the index's last pages of each partner
-- (docs/BENCHMARKS.md, "Where a create's WAL frames come from"). The
-- token's own unique index stays random: a partner names the person by
-- it, and a time-ordered token would tell the partner when the person was
-- enrolled.
--
-- As for packets and match rows, the key is a locator only, with no MAC:
-- the row's MAC covers (partner, subject id, token), not the key, and
-- every read and delete names the subject id beside the key, so a token
-- found under a key answers for the subject it names or for nobody. A row
-- a database writer moves off its subject's key is out of that subject's
-- reads (it has no token then, and a match answer makes a new one) and
-- of its deletion (SECURITY.md); a token looked up by itself still names
-- its MACed subject, which a deletion has removed. Rows of subjects
-- created before 0026 take their id as key.
--
-- A rowid table, as `packets` is: the key is filled by the triggers below
-- for a row inserted or moved by subject id alone (a tool, an older
-- replica, a tamper test), so whatever names a token by subject id, the
-- vault finds it there. The vault itself always gives the key.
CREATE TABLE pairwise_tokens_by_key (
    partner     TEXT NOT NULL,
    subject_id  BLOB NOT NULL CHECK (length(subject_id) = 16),
    token       TEXT NOT NULL UNIQUE,
    mac_version INTEGER,
    mac         BLOB,
    subject_key BLOB CHECK (subject_key IS NULL OR length(subject_key) = 16)
) STRICT;
INSERT INTO pairwise_tokens_by_key (partner, subject_id, token, mac_version, mac, subject_key)
    SELECT t.partner, t.subject_id, t.token, t.mac_version, t.mac,
           COALESCE((SELECT COALESCE(s.subject_key, s.subject_id) FROM subjects s
                     WHERE s.subject_id = t.subject_id), t.subject_id)
    FROM pairwise_tokens t;
DROP TABLE pairwise_tokens;
ALTER TABLE pairwise_tokens_by_key RENAME TO pairwise_tokens;
-- One token per partner and subject; the key's first column the partner,
-- as before, so a deletion seeks each partner present (a loose scan).
CREATE UNIQUE INDEX pairwise_tokens_key ON pairwise_tokens (partner, subject_key, subject_id);
-- Dropped with the old table (migration 0019): rows without a MAC, which
-- only `idvault keys seal-upgraded-tokens` seals.
CREATE INDEX pairwise_tokens_unsealed ON pairwise_tokens (partner, subject_id) WHERE mac IS NULL;

CREATE TRIGGER pairwise_tokens_key_on_insert AFTER INSERT ON pairwise_tokens
WHEN NEW.subject_key IS NULL
BEGIN
    UPDATE pairwise_tokens SET subject_key = COALESCE(
        (SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = NEW.subject_id),
        NEW.subject_id)
    WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER pairwise_tokens_key_on_move AFTER UPDATE OF subject_id ON pairwise_tokens
WHEN NEW.subject_id IS NOT OLD.subject_id
BEGIN
    UPDATE pairwise_tokens SET subject_key = COALESCE(
        (SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = NEW.subject_id),
        NEW.subject_id)
    WHERE rowid = NEW.rowid;
END;
