-- no-transaction
-- The index of every leaf naming a subject, replaced by the one of
-- chain-head leaves in 0021; dropped without blocking writes.
DROP INDEX CONCURRENTLY IF EXISTS audit_log_subject;
