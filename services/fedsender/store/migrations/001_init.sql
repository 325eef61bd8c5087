-- The federation sender's schema: the membership copy it learns from the
-- room-server's stream, the per-destination queues of PDUs and EDUs, each
-- destination's retry state, and the positions of its stream consumers.

-- instance holds one random token, made once: transaction IDs are
-- <token>.<sequence>, so a fresh database (a new deployment with the same
-- server name) never reuses an ID a remote may remember.
CREATE TABLE instance (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    token     TEXT NOT NULL
);
INSERT INTO instance (token) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 12));

CREATE SEQUENCE txn_seq;

-- consumer_positions: the last stream sequence each durable consumer
-- applied, written in the same transaction as what it applied, so a
-- message delivered again (a crash between commit and ack) changes nothing.
CREATE TABLE consumer_positions (
    consumer   TEXT PRIMARY KEY,
    stream_seq BIGINT NOT NULL
);

-- The membership copy: every m.room.member in the current state of the
-- rooms the stream showed, with the server of the member.
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY
);
CREATE TABLE memberships (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    server_name TEXT NOT NULL,
    membership  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id) WHERE membership = 'join';
CREATE INDEX memberships_room_joined ON memberships (room_id, server_name) WHERE membership = 'join';
CREATE INDEX memberships_event ON memberships (event_id);

-- typing_sent: the local users whose typing in a room was last announced
-- as on (to diff the presence service's full lists).
CREATE TABLE typing_sent (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- destinations: each remote server's retry state.
CREATE TABLE destinations (
    destination   TEXT PRIMARY KEY,
    -- consecutive failed attempts since the last answer
    failures      INT NOT NULL DEFAULT 0,
    -- no attempt before this time
    retry_at      TIMESTAMPTZ,
    -- the first failure of the current run of failures
    failing_since TIMESTAMPTZ,
    -- the destination has been down long enough that only each room's
    -- newest PDUs are kept (the remote fetches the rest)
    catch_up      BOOLEAN NOT NULL DEFAULT FALSE,
    last_success  TIMESTAMPTZ
);

-- queue_pdus: PDUs waiting for a destination. txn_id is set once a
-- transaction takes the row; that transaction is retried with exactly
-- these rows until the destination answers, then the rows go.
CREATE TABLE queue_pdus (
    seq          BIGSERIAL PRIMARY KEY,
    destination  TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_json   BYTEA NOT NULL,
    txn_id       TEXT,
    -- the transaction's origin_server_ts (ms), fixed with its rows
    txn_ts       BIGINT,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (destination, event_id)
);
CREATE INDEX queue_pdus_dest ON queue_pdus (destination, seq);
CREATE INDEX queue_pdus_txn ON queue_pdus (destination, txn_id) WHERE txn_id IS NOT NULL;
CREATE INDEX queue_pdus_room ON queue_pdus (destination, room_id, seq);

-- queue_edus: EDUs waiting for a destination. coalesce_key names what a
-- newer EDU replaces while the older one waits (a user's typing in a room,
-- a user's receipt in a thread, a user's presence, a to-device message ID).
CREATE TABLE queue_edus (
    seq          BIGSERIAL PRIMARY KEY,
    destination  TEXT NOT NULL,
    edu_type     TEXT NOT NULL,
    coalesce_key TEXT,
    content      BYTEA NOT NULL,
    txn_id       TEXT,
    txn_ts       BIGINT,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX queue_edus_dest ON queue_edus (destination, seq);
CREATE INDEX queue_edus_txn ON queue_edus (destination, txn_id) WHERE txn_id IS NOT NULL;
CREATE UNIQUE INDEX queue_edus_coalesce ON queue_edus (destination, coalesce_key)
    WHERE txn_id IS NULL AND coalesce_key IS NOT NULL;
