-- Pairwise tokens found by (partner, storage key, subject id) instead of
-- (partner, subject id): the SQLite migration of the same number says
-- why, and why the key needs no MAC. A subject whose key is NULL (created
-- before 0026) has its id as its key. The table keeps its rows; only its
-- primary key changes, and a trigger gives a row inserted or moved by
-- subject id alone its subject's key, as for packets.
--
-- Stop every replica of an older version first: their token inserts name
-- the old key in their conflict clause, which no longer exists, so their
-- creates and first match answers would fail.
LOCK TABLE pairwise_tokens IN ACCESS EXCLUSIVE MODE;
ALTER TABLE pairwise_tokens ADD COLUMN subject_key BYTEA
    CONSTRAINT pairwise_tokens_subject_key_check CHECK (length(subject_key) = 16);
UPDATE pairwise_tokens t SET subject_key = COALESCE(
    (SELECT COALESCE(s.subject_key, s.subject_id) FROM subjects s
     WHERE s.subject_id = t.subject_id),
    t.subject_id);
ALTER TABLE pairwise_tokens ALTER COLUMN subject_key SET NOT NULL;
ALTER TABLE pairwise_tokens DROP CONSTRAINT pairwise_tokens_pkey;
ALTER TABLE pairwise_tokens ADD CONSTRAINT pairwise_tokens_pkey
    PRIMARY KEY (partner, subject_key, subject_id);

-- The function that gives packets their key (migration 0026) reads only
-- NEW.subject_id and sets NEW.subject_key: it serves both tables, under a
-- name that says so (its packet triggers follow it by reference).
ALTER FUNCTION packets_subject_key() RENAME TO row_subject_key;
CREATE TRIGGER pairwise_tokens_key_on_insert BEFORE INSERT ON pairwise_tokens
    FOR EACH ROW WHEN (NEW.subject_key IS NULL) EXECUTE FUNCTION row_subject_key();
CREATE TRIGGER pairwise_tokens_key_on_move BEFORE UPDATE OF subject_id ON pairwise_tokens
    FOR EACH ROW WHEN (NEW.subject_id IS DISTINCT FROM OLD.subject_id)
    EXECUTE FUNCTION row_subject_key();
ANALYZE pairwise_tokens;
