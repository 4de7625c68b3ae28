-- Wrong transaction codes get a primary key, as on PostgreSQL (where the
-- table without one refused deletes under logical replication): the
-- device, the time and a random column the database draws, since two
-- wrong codes of one device may share a millisecond. The key serves the
-- per-device count the index served.
CREATE TABLE code_failures_keyed (
    device_id TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    id        BLOB    NOT NULL DEFAULT (randomblob(16)),
    PRIMARY KEY (device_id, at_ms, id)
) STRICT, WITHOUT ROWID;
INSERT INTO code_failures_keyed (device_id, at_ms) SELECT device_id, at_ms FROM code_failures;
DROP TABLE code_failures;
ALTER TABLE code_failures_keyed RENAME TO code_failures;
-- The retention job takes the oldest rows first: by time, without reading
-- the whole table.
CREATE INDEX code_failures_time ON code_failures (at_ms);
