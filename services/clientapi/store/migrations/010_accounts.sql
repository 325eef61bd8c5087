-- Accounts half of issue #4: admins, guests, deactivation, profiles,
-- refreshable and expiring tokens, UIA stages, registration tokens,
-- shared-secret registration nonces and login tokens. Numbered 010 so that
-- migrations other branches add (002, 003, ...) do not clash.

ALTER TABLE accounts
    ADD COLUMN is_admin    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN is_guest    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN deactivated BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN displayname TEXT,
    ADD COLUMN avatar_url  TEXT;

-- Devices remember when they last logged in or refreshed.
ALTER TABLE devices
    ADD COLUMN last_seen_ts BIGINT,
    ADD COLUMN last_seen_ip TEXT;

-- expires_at NULL: the token never expires (clients that did not ask for
-- a refresh token).
ALTER TABLE access_tokens ADD COLUMN expires_at TIMESTAMPTZ;

-- Refresh tokens, stored only as SHA-256 hashes, one per device at most.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

-- A UIA session is bound to the user it authenticates (NULL during
-- registration) and to the request it was opened for, remembers the
-- stages completed so far and, for m.login.registration_token, the token
-- it reserved (one pending use, released if the session expires unused).
ALTER TABLE uia_sessions
    ADD COLUMN user_id     TEXT,
    ADD COLUMN purpose     TEXT NOT NULL DEFAULT '',
    ADD COLUMN completed   TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN reg_token   TEXT;

-- Registration tokens (m.login.registration_token), managed through the
-- Synapse-compatible admin API. expiry_time is in ms since the epoch.
CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    uses_allowed INT,
    pending      INT NOT NULL DEFAULT 0,
    completed    INT NOT NULL DEFAULT 0,
    expiry_time  BIGINT
);

-- Single-use nonces of shared-secret registration (/_synapse/admin/v1/register).
CREATE TABLE registration_nonces (
    nonce      TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Short-lived, single-use m.login.token tokens (POST /login/get_token),
-- stored as SHA-256 hashes.
CREATE TABLE login_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
