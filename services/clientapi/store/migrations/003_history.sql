-- History visibility. Each event records the room's history_visibility in
-- the state before it and after it (they differ only for an
-- m.room.history_visibility event), as the consumer saw the room's current
-- state when the event arrived. NULL means "shared", the spec's default.
ALTER TABLE sync_events ADD COLUMN visibility_before TEXT, ADD COLUMN visibility_after TEXT;

-- Every membership change of every user, in stream order, so that the
-- membership a user had at any event (and whether they joined later) can
-- be read for the visibility rules.
CREATE TABLE membership_log (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    pos        BIGINT NOT NULL,
    membership TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, pos)
);

-- Events stored before this migration: their member events are the log.
INSERT INTO membership_log (room_id, user_id, pos, membership)
    SELECT room_id, state_key, pos, membership FROM sync_events
    WHERE type = 'm.room.member' AND state_key IS NOT NULL AND membership IS NOT NULL
    ON CONFLICT DO NOTHING;
