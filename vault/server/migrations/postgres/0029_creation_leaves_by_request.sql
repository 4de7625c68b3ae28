-- A subject's creation leaf found through the request that made it: the
-- SQLite migration of the same number says why, and why the column needs
-- no MAC. The new index and the old one's drop follow in 0030 and 0031,
-- each alone in its file so that its build does not block writes.
--
-- Stop every replica of an older version first: the backfill below
-- rewrites every subject row in one transaction (their writes to those
-- rows wait for it), subjects they create afterwards would name no
-- creating request (chain verification would then find no creation leaf
-- to compare a never-updated subject's head with; `audit verify` still
-- would), and after 0031 their chain verification would find no index
-- for its leaf lookup.
ALTER TABLE subjects ADD COLUMN created_request BYTEA
    CONSTRAINT subjects_created_request_check CHECK (length(created_request) = 16);
-- Subjects from before: their creation leaf, found by the old index (a
-- leaf names its subject in the UUID's hyphenated text form).
UPDATE subjects s SET created_request = (
    SELECT a.request_id FROM audit_log a
    WHERE a.subject = CAST(CAST(encode(s.subject_id, 'hex') AS uuid) AS text)
      AND a.head_seq IS NOT NULL AND a.action = 'CreateSubject' AND a.outcome = 'ok'
    ORDER BY a.id LIMIT 1);
