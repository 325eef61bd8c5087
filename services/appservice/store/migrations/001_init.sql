-- The appservice service's schema: the room copy it learns from the
-- room-server's stream (joined members, aliases), each appservice's queue
-- and delivery state, and its stream consumers' positions.

-- instance holds one random token, made once: transaction IDs are
-- <token>.<sequence>, so a fresh database never reuses an ID an
-- appservice may remember.
CREATE TABLE instance (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    token     TEXT NOT NULL
);
INSERT INTO instance (token) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 12));

CREATE SEQUENCE txn_seq;

-- consumer_positions: the last stream sequence each durable consumer
-- applied, written in the same transaction as what it applied.
CREATE TABLE consumer_positions (
    consumer   TEXT PRIMARY KEY,
    stream_seq BIGINT NOT NULL
);

-- The room copy: rooms seen, their joined members, and the aliases their
-- m.room.canonical_alias names (alias and alt_aliases).
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY
);
CREATE TABLE joined_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX joined_members_user ON joined_members (user_id);
CREATE TABLE room_aliases (
    room_id TEXT NOT NULL,
    alias   TEXT NOT NULL,
    PRIMARY KEY (room_id, alias)
);

-- queue: what waits for each appservice, in order (id). kind is 'event'
-- (a client-format room event) or 'ephemeral' (m.typing, m.receipt,
-- m.presence). txn_id is set once the item is in a transaction: that
-- transaction's content never changes, and its items go only when the
-- appservice answers 200.
CREATE TABLE queue (
    id            BIGSERIAL PRIMARY KEY,
    appservice_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    body          BYTEA NOT NULL,
    enqueued_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    txn_id        TEXT
);
CREATE INDEX queue_appservice ON queue (appservice_id, id);

-- delivery: each appservice's transaction in flight and retry state.
CREATE TABLE delivery (
    appservice_id  TEXT PRIMARY KEY,
    txn_id         TEXT,
    failures       INT NOT NULL DEFAULT 0,
    failures_total BIGINT NOT NULL DEFAULT 0,
    last_error     TEXT NOT NULL DEFAULT '',
    next_attempt   TIMESTAMPTZ,
    last_acked_txn TEXT NOT NULL DEFAULT '',
    acked_total    BIGINT NOT NULL DEFAULT 0
);
