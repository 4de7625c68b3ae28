-- Packets keyed by an internal, time-ordered subject key instead of the
-- subject id: the SQLite migration of the same number says why, and why
-- the key needs neither a MAC nor a unique index. A subject whose key is
-- NULL (created before) has its id as its key: version 4, so never
-- equal to a new version-7 key.
--
-- `packets` is rebuilt (each row written once, the new primary key built
-- once) under an exclusive lock: stop every replica of an older version
-- first. They would read packets by subject id, which no index serves
-- any more.
ALTER TABLE subjects ADD COLUMN subject_key BYTEA CHECK (length(subject_key) = 16);

-- `subject_id` stays beside the key, unindexed, for operators' own
-- queries and tools.
CREATE TABLE packets_by_key (
    subject_key BYTEA   NOT NULL,
    seq         BIGINT  NOT NULL,
    subject_id  BYTEA   NOT NULL,
    field_name  TEXT    NOT NULL,
    packet      BYTEA   NOT NULL
);
INSERT INTO packets_by_key (subject_key, seq, subject_id, field_name, packet)
    SELECT subject_id, seq, subject_id, field_name, packet FROM packets;
DROP TABLE packets;
ALTER TABLE packets_by_key RENAME TO packets;
ALTER TABLE packets ADD CONSTRAINT packets_pkey PRIMARY KEY (subject_key, seq);

-- A packet inserted without a key (by a tool, by hand) or whose subject
-- id is edited takes its subject's key, so whatever names a packet by
-- subject id, the vault finds it there (an edit that moves a packet to
-- another subject is then reported as that, not as a missing packet).
-- The search path is the migration's, so a caller's own cannot redirect
-- `subjects`.
CREATE FUNCTION packets_subject_key() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    NEW.subject_key := COALESCE(
        (SELECT COALESCE(s.subject_key, s.subject_id) FROM subjects s
         WHERE s.subject_id = NEW.subject_id),
        NEW.subject_id);
    RETURN NEW;
END
$$;
CREATE TRIGGER packets_key_on_insert BEFORE INSERT ON packets
    FOR EACH ROW WHEN (NEW.subject_key IS NULL) EXECUTE FUNCTION packets_subject_key();
CREATE TRIGGER packets_key_on_move BEFORE UPDATE OF subject_id ON packets
    FOR EACH ROW WHEN (NEW.subject_id IS DISTINCT FROM OLD.subject_id)
    EXECUTE FUNCTION packets_subject_key();
