-- The index of every chain-head leaf by subject, replaced in 0030 by one
-- that leaves creations out (migration 0029).
DROP INDEX IF EXISTS audit_log_subject_head;
