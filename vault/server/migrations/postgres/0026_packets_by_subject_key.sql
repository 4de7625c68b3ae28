-- Packets keyed by an internal, time-ordered subject key instead of the
-- subject id: the SQLite migration of the same number says why, and why
-- the key needs neither a MAC nor a unique index. A subject whose key is
-- NULL (created before) has its id as its key: version 4, so never
-- equal to a new version-7 key.
--
-- It rewrites `packets` under an exclusive lock. Replicas of an older
-- version keep working beside this one: the trigger gives their packets
-- their subject's key, though their reads of packets by subject id then
-- scan the table; upgrade them all soon.
ALTER TABLE subjects ADD COLUMN subject_key BYTEA CHECK (length(subject_key) = 16);

-- `subject_id` stays beside the key, unindexed, for operators' own
-- queries and tools.
ALTER TABLE packets ADD COLUMN subject_key BYTEA CHECK (length(subject_key) = 16);
UPDATE packets SET subject_key = subject_id;
ALTER TABLE packets DROP CONSTRAINT packets_pkey;
ALTER TABLE packets ADD PRIMARY KEY (subject_key, seq);

-- A packet inserted without a key (by a tool, by hand, by an older
-- replica) or whose subject id is edited takes its subject's key, so
-- whatever names a packet by subject id, the vault finds it there.
CREATE FUNCTION packets_subject_key() RETURNS trigger LANGUAGE plpgsql AS $$
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
