-- Rooms a user forgot (POST /rooms/{roomId}/forget): the membership event
-- (their leave or ban) that was current when they forgot. A memberships row
-- whose event_id matches is hidden from /sync and from history access; a
-- later membership change has another event ID and shows the room again.
CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
