-- The presence service's schema: receipts, presence and a copy of room
-- memberships (from the room-server's JetStream stream). Typing is kept in
-- memory only; its positions come from the same sequence.

-- One position for every ephemeral change (typing, receipt, presence), so
-- a /sync token needs a single ephemeral component.
CREATE SEQUENCE stream_pos;

CREATE TABLE receipts (
    room_id      TEXT   NOT NULL,
    receipt_type TEXT   NOT NULL, -- m.read, m.read.private, m.fully_read
    user_id      TEXT   NOT NULL,
    thread_id    TEXT   NOT NULL DEFAULT '', -- '' = unthreaded
    event_id     TEXT   NOT NULL,
    ts           BIGINT NOT NULL,
    origin       TEXT   NOT NULL,
    pos          BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_pos ON receipts (room_id, pos);

CREATE TABLE presence (
    user_id        TEXT   PRIMARY KEY,
    state          TEXT   NOT NULL, -- online, unavailable, offline
    status_msg     TEXT,
    last_active_ts BIGINT,          -- ms since the epoch
    origin         TEXT   NOT NULL,
    pos            BIGINT NOT NULL
);
CREATE INDEX presence_pos ON presence (pos);
CREATE INDEX presence_active ON presence (state, last_active_ts) WHERE state <> 'offline';

-- Current membership per (room, user), as of the room-server stream
-- position that set it (older redeliveries never overwrite newer rows).
-- joined_pos is the ephemeral position at which the copy learnt of the
-- join: users who newly share a room get each other's presence.
CREATE TABLE memberships (
    room_id    TEXT   NOT NULL,
    user_id    TEXT   NOT NULL,
    membership TEXT   NOT NULL,
    stream_pos BIGINT NOT NULL,
    joined_pos BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id) WHERE membership = 'join';
