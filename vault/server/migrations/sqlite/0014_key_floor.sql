-- The key version floor: the lowest root key version a new audit leaf may
-- be MACed under. Every write transaction writes a leaf under its
-- process's current version, so once `keys rewrap` raises the floor to the
-- version it moves data to, a process still running without that version
-- (not restarted after `keys rotate`) can write nothing: it fails closed
-- instead of writing rows only a version about to be retired opens.
CREATE TABLE key_floor (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
) STRICT;

INSERT INTO key_floor (id, version) VALUES (1, 0);

CREATE TRIGGER audit_log_key_floor BEFORE INSERT ON audit_log
WHEN NEW.key_version < (SELECT version FROM key_floor WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'idvault: root key version below the key floor: restart this process with the current key file');
END;
