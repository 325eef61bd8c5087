-- directory_aliases: the local aliases of the room directory (the
-- room-server's), from MYELIN_ROOM_ALIASES: a room with an alias in an
-- appservice's aliases namespaces interests it, whether or not the room's
-- m.room.canonical_alias names it (room_aliases holds those).
CREATE TABLE directory_aliases (
    alias   TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
CREATE INDEX directory_aliases_room ON directory_aliases (room_id);
