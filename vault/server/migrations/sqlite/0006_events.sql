-- A person's rules and actions across trusted entities (docs/events.md).
--
-- Rules, links and events are written by audited transactions; commands
-- are written to the outbox in the same transaction as the audit record
-- of the event that caused them, so an accepted event's commands are
-- never lost and never written without their audit record.

-- Entities (partner SPIFFE ids) a person linked to their profile.
CREATE TABLE entity_links (
    subject_id   BLOB    NOT NULL CHECK (length(subject_id) = 16),
    entity       TEXT    NOT NULL,
    linked_at_ms INTEGER NOT NULL,
    PRIMARY KEY (subject_id, entity)
) STRICT;

CREATE INDEX entity_links_entity ON entity_links (entity);

-- A person's rules; `fields` is the sorted, comma-separated field list.
CREATE TABLE subject_rules (
    subject_id BLOB NOT NULL CHECK (length(subject_id) = 16),
    rule_id    TEXT NOT NULL,
    source     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    target     TEXT NOT NULL,
    command    TEXT NOT NULL,
    fields     TEXT NOT NULL,
    PRIMARY KEY (subject_id, rule_id)
) STRICT;

-- Every accepted event: a publisher's event id is accepted once. The
-- values are not kept here (only in the sealed commands).
CREATE TABLE events (
    source         TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    subject_id     BLOB    NOT NULL CHECK (length(subject_id) = 16),
    event_type     TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    commands       INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)
) STRICT;

CREATE INDEX events_subject ON events (subject_id);

-- Last command sequence number per (recipient, subject).
CREATE TABLE command_counters (
    recipient  TEXT    NOT NULL,
    subject_id BLOB    NOT NULL CHECK (length(subject_id) = 16),
    last_seq   INTEGER NOT NULL,
    PRIMARY KEY (recipient, subject_id)
) STRICT;

-- The durable outbox: commands not yet acknowledged (an acknowledgement
-- deletes its row, payload included). `seq` grows in commit order (every
-- writer first takes the audit head), so draining by `seq` keeps each
-- subject's order.
CREATE TABLE command_outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id     TEXT    NOT NULL UNIQUE,
    recipient      TEXT    NOT NULL,
    subject_id     BLOB    NOT NULL CHECK (length(subject_id) = 16),
    subject_seq    INTEGER NOT NULL,
    pairwise_token TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    command        TEXT    NOT NULL,
    rule_id        TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    deliveries     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (recipient, subject_id, subject_seq)
) STRICT;

CREATE INDEX command_outbox_pending ON command_outbox (recipient, seq);
CREATE INDEX command_outbox_subject ON command_outbox (subject_id);
