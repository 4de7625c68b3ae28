-- The index of a subject's chain-changing leaves other than its
-- creation, which is found through its request instead (migration 0029
-- says why). Replaces `audit_log_subject_head` (0021), dropped in 0031.
CREATE INDEX audit_log_subject_update ON audit_log (subject, id)
    WHERE head_seq IS NOT NULL AND action <> 'CreateSubject';
