-- A subject's creation leaf found through the request that made it, so
-- that a create no longer adds an entry at a random place of the index of
-- chain-head leaves by subject (migration 0021): the subject id is random,
-- so that entry cost a WAL frame per create at COMMIT however few bytes it
-- held (docs/BENCHMARKS.md, "Where a create's WAL frames come from").
--
-- `subjects.created_request` names the request id of the subject's
-- CreateSubject leaf. Request ids are time-ordered (`new_request_id`), so
-- the leaf is found through `audit_log_request`, whose entries a group
-- commit appends. The index by subject keeps the other chain-changing
-- leaves (updates), which only the subject's own writes add; chain
-- verification takes the newest of them, and the creation leaf only when
-- there is none.
--
-- The column is a locator, as the subject's storage key is: a leaf it
-- finds must still pass its MAC, name this subject and action
-- `CreateSubject` in its MACed bytes, and agree with the columns that
-- selected it (`Vault::head_matches_leaf`). A database writer who points
-- it elsewhere gets a mismatch; one who clears it makes the creation leaf
-- as unfindable as editing that leaf's `subject` column always could, and
-- the full `idvault audit verify` still compares every live subject's
-- head with its newest leaf from the whole log (SECURITY.md, "Known
-- limits").
ALTER TABLE subjects ADD COLUMN created_request BLOB
    CHECK (created_request IS NULL OR length(created_request) = 16);
-- Subjects from before: their creation leaf, found by the old index.
UPDATE subjects SET created_request = (
    SELECT a.request_id FROM audit_log a
    WHERE a.subject = lower(substr(hex(subjects.subject_id), 1, 8) || '-' ||
                            substr(hex(subjects.subject_id), 9, 4) || '-' ||
                            substr(hex(subjects.subject_id), 13, 4) || '-' ||
                            substr(hex(subjects.subject_id), 17, 4) || '-' ||
                            substr(hex(subjects.subject_id), 21, 12))
      AND a.head_seq IS NOT NULL AND a.action = 'CreateSubject' AND a.outcome = 'ok'
    ORDER BY a.id LIMIT 1);
