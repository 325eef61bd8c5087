-- Room-server outputs of federation (issue #16).
--
-- Backfilled history is placed before a room's earliest event: it takes
-- positions from this descending sequence (-1, -2, ...), so every
-- backfilled event sorts before everything stored earlier, and the
-- room-server publishes each backfilled batch newest first.
CREATE SEQUENCE sync_backfill_pos INCREMENT BY -1 MAXVALUE -1 START WITH -1;

-- The stripped state an invite or a knock of a local user into a room of
-- another server carried (the room-server's OUT_OF_ROOM events): what
-- /sync shows under invite or knock, as this server has no state of the
-- room. A JSON array of stripped state events.
CREATE TABLE out_of_room_state (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stripped JSONB NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
