-- Rooms published in the room directory (visibility "public"). A room not
-- listed here is "private".
CREATE TABLE room_directory (
    room_id      TEXT PRIMARY KEY,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
