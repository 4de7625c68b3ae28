-- no-transaction
-- The index of a subject's chain-changing leaves other than its
-- creation, which is found through its request instead (migration 0029).
-- Replaces `audit_log_subject_head` (0021), dropped in 0031.
--
-- Built CONCURRENTLY (outside a transaction, so alone in its file), so
-- that writes go on while it builds. If the build is interrupted,
-- PostgreSQL leaves an invalid index of this name and the next start
-- stops here ("already exists"): drop it (`DROP INDEX CONCURRENTLY
-- audit_log_subject_update`) and start again.
CREATE INDEX CONCURRENTLY audit_log_subject_update ON audit_log (subject, id)
    WHERE head_seq IS NOT NULL AND action <> 'CreateSubject';
