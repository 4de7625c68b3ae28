-- The audit log becomes a transparency log (docs/audit.md).
--
-- A request writes its leaf in the same transaction as its data and
-- touches no shared row to do so: `id` is SQLite's rowid (max + 1 under the
-- batch writer's lock). The sequencer, off the request path, gives leaves
-- their tree index `idx` in batches, stores the tree's perfect nodes and
-- publishes signed checkpoints.
--
-- The hash-chained log of format 1 stays as read-only history (audit_chain_v1);
-- its head row goes (it was the global hot row).
ALTER TABLE audit_log RENAME TO audit_chain_v1;
DROP TABLE audit_head;

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    idx          INTEGER UNIQUE CHECK (idx >= 0),
    time_ms      INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT,
    outcome      TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    request_id   BLOB    NOT NULL CHECK (length(request_id) = 16),
    head_seq     INTEGER,
    leaf         BLOB    NOT NULL,
    key_version  INTEGER NOT NULL,
    mac          BLOB    NOT NULL CHECK (length(mac) = 32)
) STRICT;

CREATE INDEX audit_log_pending ON audit_log (id) WHERE idx IS NULL;
CREATE INDEX audit_log_request ON audit_log (request_id);
CREATE INDEX audit_log_subject ON audit_log (subject, id) WHERE subject IS NOT NULL;

-- Perfect subtrees: `hash` covers leaves [idx << level, (idx + 1) << level).
CREATE TABLE audit_nodes (
    level  INTEGER NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    hash   BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

-- Every published checkpoint, as signed.
CREATE TABLE audit_checkpoints (
    tree_size  INTEGER PRIMARY KEY CHECK (tree_size > 0),
    root       BLOB    NOT NULL CHECK (length(root) = 32),
    note       TEXT    NOT NULL,
    time_ms    INTEGER NOT NULL
) STRICT;
