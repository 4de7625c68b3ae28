-- Wrong transaction codes get a primary key, the one table that had none.
-- Without one, PostgreSQL's logical replication (a publication FOR ALL
-- TABLES, as a replica or a change-data-capture feed sets up) refuses
-- every DELETE from the table, so a person's deletion and the retention
-- job failed there; and distributed engines want a key that starts with
-- the distribution column (docs/scale-out.md). Two wrong codes of one
-- device in the same millisecond are two rows, hence the random column;
-- it is drawn by the database and means nothing else. The key serves the
-- per-device count the index served.
ALTER TABLE code_failures ADD COLUMN id UUID NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE code_failures ADD PRIMARY KEY (device_id, at_ms, id);
DROP INDEX code_failures_device;
-- The retention job takes the oldest rows first: by time, without reading
-- the whole table.
CREATE INDEX code_failures_time ON code_failures (at_ms);
