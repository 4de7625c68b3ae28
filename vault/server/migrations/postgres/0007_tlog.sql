-- The audit log becomes a transparency log (docs/audit.md).
--
-- A request writes its leaf in the same transaction as its data and
-- touches no shared row to do so: `id` comes from a sequence (no row lock;
-- on a distributed engine use its unordered unique id instead, see
-- docs/scale-out.md). The sequencer, off the request path, gives leaves
-- their tree index `idx` in batches, stores the tree's perfect nodes and
-- publishes signed checkpoints.
--
-- The hash-chained log of format 1 stays as read-only history; its head
-- row goes (it was the global hot row every replica serialised on).
ALTER TABLE audit_log RENAME TO audit_chain_v1;
DROP TABLE audit_head;

CREATE TABLE audit_log (
    id           BIGSERIAL PRIMARY KEY,
    idx          BIGINT  UNIQUE CHECK (idx >= 0),
    time_ms      BIGINT  NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    request_id   BYTEA   NOT NULL CHECK (octet_length(request_id) = 16),
    head_seq     BIGINT,
    leaf         BYTEA   NOT NULL,
    key_version  BIGINT  NOT NULL,
    mac          BYTEA   NOT NULL CHECK (octet_length(mac) = 32)
);

CREATE INDEX audit_log_pending ON audit_log (id) WHERE idx IS NULL;
CREATE INDEX audit_log_request ON audit_log (request_id);
CREATE INDEX audit_log_subject ON audit_log (subject, id) WHERE subject IS NOT NULL;

-- Perfect subtrees: `hash` covers leaves [idx << level, (idx + 1) << level).
CREATE TABLE audit_nodes (
    level  BIGINT   NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx    BIGINT   NOT NULL CHECK (idx >= 0),
    hash   BYTEA    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Every published checkpoint, as signed.
CREATE TABLE audit_checkpoints (
    tree_size  BIGINT PRIMARY KEY CHECK (tree_size > 0),
    root       BYTEA  NOT NULL CHECK (octet_length(root) = 32),
    note       TEXT   NOT NULL,
    time_ms    BIGINT NOT NULL
);
