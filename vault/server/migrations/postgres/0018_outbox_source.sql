-- A publisher's commands waiting for one recipient, counted (up to the
-- recipient's `outbox_per_source`) when an event would add to them: the
-- bound reads at most that many index entries, whatever other publishers
-- have waiting (docs/events.md, "Bounds").
CREATE INDEX command_outbox_source ON command_outbox (recipient, source);
