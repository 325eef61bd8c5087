-- Every send inserts an events, an outbox and (usually) a transactions
-- row, so each index and foreign key on them is paid per event: a btree
-- insert per index, and per foreign key a lookup of the referenced row
-- that also locks it (FOR KEY SHARE: a write to the rooms row each time).
--
-- events_room_depth_idx: no query reads events by (room, depth).
DROP INDEX events_room_depth_idx;

-- The foreign keys into rooms and events from the tables written per
-- event. The room-server is the only writer of its schema and writes
-- these rows inside the room's write transaction, right after it read or
-- inserted the rows they name (rooms and events are never deleted), so
-- the checks could only catch a bug in that code.
ALTER TABLE events DROP CONSTRAINT events_room_nid_fkey;
ALTER TABLE events DROP CONSTRAINT events_state_key_nid_fkey;
ALTER TABLE transactions DROP CONSTRAINT transactions_room_nid_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_room_nid_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_event_nid_fkey;
ALTER TABLE state_snapshots DROP CONSTRAINT state_snapshots_room_nid_fkey;
ALTER TABLE state_snapshots DROP CONSTRAINT state_snapshots_parent_nid_fkey;
