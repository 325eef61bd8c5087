-- Accounts, devices and access tokens.
CREATE TABLE accounts (
    localpart     TEXT PRIMARY KEY,
    -- bcrypt hash; NULL when the account has no password.
    password_hash TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id)
);

-- Access tokens are stored only as SHA-256 hashes.
CREATE TABLE access_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- User-interactive authentication sessions.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Sync filters (POST /user/{userId}/filter). Identical filters of one user
-- share an ID.
CREATE TABLE filters (
    filter_id BIGSERIAL PRIMARY KEY,
    user_id   TEXT NOT NULL,
    filter    JSONB NOT NULL,
    UNIQUE (user_id, filter)
);

-- Every committed room event, in the order the room-server published them.
-- pos is the client-API's stream position: sync and pagination tokens are
-- positions in this table.
CREATE TABLE sync_events (
    pos             BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    room_id         TEXT NOT NULL,
    type            TEXT NOT NULL,
    state_key       TEXT,
    sender          TEXT NOT NULL,
    membership      TEXT,
    -- The event in client format, without room_id.
    event           BYTEA NOT NULL,
    txn_device_id   TEXT,
    txn_id          TEXT,
    -- The room-server's commit position.
    stream_position BIGINT NOT NULL
);
CREATE INDEX sync_events_room_pos ON sync_events (room_id, pos);

-- Each room's current state, maintained from added_state_events and
-- removed_state_event_ids.
CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    sender     TEXT NOT NULL,
    membership TEXT,
    -- The event in client format, without room_id.
    event      BYTEA NOT NULL,
    -- Position of the commit that brought this event into the state.
    pos        BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_event_id ON current_state (event_id);

-- Each user's current membership of each room.
CREATE TABLE memberships (
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    membership      TEXT NOT NULL,
    -- Membership before the latest change.
    prev_membership TEXT NOT NULL DEFAULT '',
    event_id        TEXT NOT NULL,
    -- Position of the latest change.
    pos             BIGINT NOT NULL,
    -- Position at which the user last became joined (NULL: never joined).
    join_pos        BIGINT,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX memberships_room ON memberships (room_id);
CREATE INDEX memberships_user_pos ON memberships (user_id, pos);
