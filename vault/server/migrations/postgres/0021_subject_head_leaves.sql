-- Only a subject's chain-changing leaves are looked up by subject.
--
-- Chain verification (`VerifySubjectChain`, `Store::subject_snapshot`)
-- reads a subject's newest leaf that carries a chain head, and the owner
-- upgrade reads its CreateSubject leaf, which carries one too. The old
-- index held every leaf naming a subject, so the newest-head lookup
-- walked back past every leaf without a head, and any partner can add
-- those to anyone's subject (a RequestChallenge names the person): a
-- partner could make the verification of someone else's subject as slow
-- as it liked. The new index holds the head-carrying leaves alone, which
-- only the subject's own writes add, and it is smaller to write: reads,
-- releases and challenges no longer add an entry.
DROP INDEX audit_log_subject;
CREATE INDEX audit_log_subject_head ON audit_log (subject, id) WHERE head_seq IS NOT NULL;
