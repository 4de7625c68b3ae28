-- Commands reach a recipient's stream in outbox order, and a stream
-- reads "after the last position it sent". With requests committing in
-- parallel (no global audit row any more), a transaction that enqueues
-- commands for a recipient first takes that recipient's row here, so
-- its outbox positions are assigned and committed in the same order and
-- no stream can pass a position that commits later. One row per
-- recipient, touched only by transactions that enqueue commands for it.
CREATE TABLE outbox_recipients (
    recipient  TEXT    PRIMARY KEY,
    enqueued   BIGINT  NOT NULL
);
