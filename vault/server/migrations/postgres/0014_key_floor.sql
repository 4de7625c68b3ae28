-- The key version floor: the lowest root key version a new audit leaf may
-- be MACed under. Every write transaction writes a leaf under its
-- process's current version, so once `keys rewrap` raises the floor to the
-- version it moves data to, a process still running without that version
-- (not restarted after `keys rotate`) can write nothing: it fails closed
-- instead of writing rows only a version about to be retired opens.
CREATE TABLE key_floor (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT  NOT NULL
);

INSERT INTO key_floor (id, version) VALUES (1, 0);

CREATE FUNCTION audit_log_key_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Shared with every other writer, exclusive for a raise of the floor:
    -- a raise waits for the transactions that already checked the old
    -- floor to end, so none commits a leaf below the new one after it.
    PERFORM pg_advisory_xact_lock_shared(7418210);
    IF NEW.key_version < (SELECT version FROM key_floor WHERE id = 1) THEN
        RAISE EXCEPTION 'idvault: root key version below the key floor: restart this process with the current key file';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_log_key_floor BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_key_floor();
