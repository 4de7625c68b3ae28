-- Packets keyed by an internal, time-ordered subject key instead of the
-- subject id. The subject id is random (it reaches partners and phones,
-- and a time-ordered one would tell them when the person was enrolled),
-- so every create put its packets on a random page of the packets
-- index: a WAL frame per create at COMMIT however few bytes changed.
-- The key is a version-7 UUID made when the subject is created, ordered
-- by time, so a group commit's new packets share the index's last pages
-- (docs/BENCHMARKS.md, "Where a create's WAL frames come from").
--
-- The key is a locator only: it never leaves the store (no API, log,
-- leaf or error carries it) and authorises nothing, so it has no MAC. A
-- database writer who moves rows between keys gains nothing: every
-- packet is read for the subject id asked for and opened under that
-- subject's data key with its header (subject id included) as
-- associated data, so a packet found under the wrong subject fails to
-- open, and the chain head catches a missing one. A subject whose key
-- is NULL (created before this migration) has its id as its key:
-- random, but version 4, so never equal to a new version-7 key. No
-- unique index: the 74 random bits make keys unique, and a key a
-- database writer copies onto another subject only makes that
-- subject's reads fail (as above).
ALTER TABLE subjects ADD COLUMN subject_key BLOB
    CHECK (subject_key IS NULL OR length(subject_key) = 16);

-- `subject_id` stays beside the key, unindexed: operators' own queries
-- and tools name packets by it, and the triggers below keep the key
-- following it.
CREATE TABLE packets_by_key (
    subject_key BLOB,
    seq         INTEGER NOT NULL,
    subject_id  BLOB    NOT NULL,
    field_name  TEXT    NOT NULL,
    packet      BLOB    NOT NULL
) STRICT;
INSERT INTO packets_by_key (subject_key, seq, subject_id, field_name, packet)
    SELECT subject_id, seq, subject_id, field_name, packet FROM packets;
DROP TABLE packets;
ALTER TABLE packets_by_key RENAME TO packets;
-- The key of the table in all but name: a STRICT table's primary key
-- may not be NULL, and a row inserted without a key must get one from
-- the trigger below rather than fail.
CREATE UNIQUE INDEX packets_key ON packets (subject_key, seq);

-- A packet inserted without a key (by a tool, by hand) or whose subject
-- id is edited takes its subject's key, so whatever names a packet by
-- subject id, the vault finds it there (an edit that moves a packet to
-- another subject is then reported as that, not as a missing packet).
-- The vault itself always gives the key.
CREATE TRIGGER packets_key_on_insert AFTER INSERT ON packets
WHEN NEW.subject_key IS NULL
BEGIN
    UPDATE packets SET subject_key = COALESCE(
        (SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = NEW.subject_id),
        NEW.subject_id)
    WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER packets_key_on_move AFTER UPDATE OF subject_id ON packets
WHEN NEW.subject_id IS NOT OLD.subject_id
BEGIN
    UPDATE packets SET subject_key = COALESCE(
        (SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = NEW.subject_id),
        NEW.subject_id)
    WHERE rowid = NEW.rowid;
END;
