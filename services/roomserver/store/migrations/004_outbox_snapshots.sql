-- The publisher finds new outbox rows by transaction visibility instead of
-- by a position watermark, so that outbox positions need no global lock:
-- without it, a row may commit after rows with higher positions, and a
-- position watermark would skip it. Each row records its transaction ID
-- (txid); the publisher remembers the snapshot up to which it has
-- published (publish_watermark.snapshot) and each round publishes the rows
-- whose transactions committed between that snapshot and the current one.
-- Per room, positions are still commit order: a room's writers are
-- serialized by the room lock, held until COMMIT.
ALTER TABLE outbox ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outbox_txid_idx ON outbox (txid);

-- NULL until the first round: then every row after published_up_to (the
-- position watermark of before this migration) is new.
ALTER TABLE publish_watermark ADD COLUMN snapshot pg_snapshot;
