-- Unread notification counts (unread.go). One row per (user, room,
-- thread) with unread notifications: the number of notifications rows
-- after the newest receipt covering their thread, kept up to date by the
-- room event consumer (a notification adds one, a user's own event clears
-- its thread) and recomputed for a user's room when a receipt moves. So a
-- /sync reads counts without counting notifications one by one, which for
-- a user who never reads grew with every message.
CREATE TABLE unread_counts (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    notify    INT NOT NULL,
    highlight INT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

INSERT INTO unread_counts (user_id, room_id, thread_id, notify, highlight)
SELECT n.user_id, n.room_id, n.thread_id, COUNT(*), COUNT(*) FILTER (WHERE n.highlight)
FROM notifications n
WHERE n.pos > COALESCE((SELECT MAX(se.pos) FROM push_receipts r JOIN sync_events se ON se.event_id = r.event_id
    WHERE r.user_id = n.user_id AND r.room_id = n.room_id AND (r.thread_id = '' OR r.thread_id = n.thread_id)), 0)
GROUP BY n.user_id, n.room_id, n.thread_id;

-- A recount reads a room's notifications after its oldest receipt.
DROP INDEX notifications_user_room;
CREATE INDEX notifications_user_room_pos ON notifications (user_id, room_id, pos);

-- Storing an event finds the receipts that named it before it arrived.
CREATE INDEX push_receipts_event ON push_receipts (event_id);
