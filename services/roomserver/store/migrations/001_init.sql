-- The room-server's schema. Numeric IDs (room_nid, event_nid,
-- state_key_nid, snapshot_nid) keep the state tables small: state is a map
-- from state_key_nid to event_nid.

-- One row per room the server knows.
CREATE TABLE rooms (
    room_nid            BIGSERIAL PRIMARY KEY,
    room_id             TEXT NOT NULL UNIQUE,
    room_version        TEXT NOT NULL,
    -- The room's current state (a state snapshot; 0 is the empty state).
    state_snapshot_nid  BIGINT NOT NULL DEFAULT 0,
    -- Accepted events that no accepted event names in prev_events.
    forward_extremities BIGINT[] NOT NULL DEFAULT '{}',
    -- Greatest depth of any accepted event.
    depth               BIGINT NOT NULL DEFAULT 0
);

-- Dictionary of (type, state_key) tuples.
CREATE TABLE event_state_keys (
    state_key_nid BIGSERIAL PRIMARY KEY,
    event_type    TEXT NOT NULL,
    state_key     TEXT NOT NULL,
    UNIQUE (event_type, state_key)
);

-- Every stored event: accepted, rejected, soft-failed and outliers.
CREATE TABLE events (
    event_nid        BIGSERIAL PRIMARY KEY,
    room_nid         BIGINT NOT NULL REFERENCES rooms (room_nid),
    event_id         TEXT NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    -- NULL for non-state events.
    state_key_nid    BIGINT REFERENCES event_state_keys (state_key_nid),
    sender           TEXT NOT NULL,
    depth            BIGINT NOT NULL,
    prev_event_ids   TEXT[] NOT NULL,
    auth_event_nids  BIGINT[] NOT NULL,
    event_json       TEXT NOT NULL,
    outlier          BOOLEAN NOT NULL DEFAULT FALSE,
    rejected         BOOLEAN NOT NULL DEFAULT FALSE,
    soft_failed      BOOLEAN NOT NULL DEFAULT FALSE,
    rejection_reason TEXT NOT NULL DEFAULT '',
    -- State snapshots before and after the event; NULL for outliers.
    state_before_nid BIGINT,
    state_after_nid  BIGINT
);
CREATE INDEX events_room_depth_idx ON events (room_nid, depth);

-- State snapshots. A snapshot is its parent plus a small delta of
-- (state_key_nid -> event_nid) entries (event_nid 0 removes the key). Every
-- base_interval deltas a full "base" snapshot (parent_nid NULL) is written,
-- so reading a snapshot never applies more than base_interval deltas.
CREATE TABLE state_snapshots (
    snapshot_nid   BIGSERIAL PRIMARY KEY,
    room_nid       BIGINT NOT NULL REFERENCES rooms (room_nid),
    parent_nid     BIGINT REFERENCES state_snapshots (snapshot_nid),
    -- Deltas between this snapshot and its base (0 for a base).
    chain_len      INT NOT NULL,
    state_key_nids BIGINT[] NOT NULL,
    event_nids     BIGINT[] NOT NULL
);

-- Client transaction IDs, for idempotent SendEvent. Written in the same
-- transaction as the event.
CREATE TABLE transactions (
    room_nid  BIGINT NOT NULL REFERENCES rooms (room_nid),
    sender    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_nid, sender, device_id, txn_id)
);

-- The outbox: one row per accepted, published event, in commit order.
-- stream_pos is assigned under a global lock taken just before COMMIT, so
-- positions are also commit order across rooms.
CREATE TABLE outbox (
    stream_pos         BIGSERIAL PRIMARY KEY,
    room_nid           BIGINT NOT NULL REFERENCES rooms (room_nid),
    event_nid          BIGINT NOT NULL REFERENCES events (event_nid),
    added_state_nids   BIGINT[] NOT NULL,
    removed_state_nids BIGINT[] NOT NULL,
    txn_device_id      TEXT,
    txn_id             TEXT
);

-- Everything in the outbox up to published_up_to is on JetStream.
CREATE TABLE publish_watermark (
    singleton       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    published_up_to BIGINT NOT NULL
);
INSERT INTO publish_watermark (singleton, published_up_to) VALUES (TRUE, 0);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX room_aliases_room_idx ON room_aliases (room_id);
