-- Users' end-to-end encryption keys (e2ekeys.go, store/e2ekeys.go), moved
-- here from the client-API (whose tables, migration 034 there, are
-- imported once by ImportKeys): device identity keys, one-time and
-- fallback keys, cross-signing keys, device display names, and the device
-- list change log whose positions (sequence device_list_pos) are the sync
-- token's "_k" component. The log is also the outbox of the
-- MYELIN_KEY_CHANGES publisher (publish.go).
CREATE SEQUENCE device_list_pos;

-- The display name of each device the key-server was told of (key upload,
-- DeviceRenamed), for /keys/query and device list changes.
CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys      BYTEA NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Claimed in upload order (seq), each at most once (deleted when claimed).
CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key       BYTEA NOT NULL,
    seq       BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm, seq);

-- One per device and algorithm, handed out when no one-time key is left.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key       BYTEA NOT NULL,
    used      BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- key_type: master, self_signing, user_signing.
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    keys     BYTEA NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- kind: 'device' (a device's identity keys changed, or it was deleted),
-- 'device_name' (only its display name changed: published, but not
-- reported to clients), 'signing_keys' (cross-signing keys or their
-- signatures), or 'imported' (a change taken over from the client-API:
-- user only, never published). The other columns are what the change's
-- KeyChange message carries: the device, its name and keys (NULL and
-- deleted when it was deleted), the user's master and self-signing keys,
-- and prev_pos, the user's previous device change ('device' or
-- 'device_name'). Positions commit in order (an advisory lock is held
-- from nextval to COMMIT), so the publisher needs only a position
-- watermark.
CREATE TABLE device_list_changes (
    pos              BIGINT PRIMARY KEY DEFAULT nextval('device_list_pos'),
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    device_id        TEXT,
    display_name     TEXT,
    deleted          BOOLEAN NOT NULL DEFAULT false,
    device_keys      BYTEA,
    master_key       BYTEA,
    self_signing_key BYTEA,
    prev_pos         BIGINT
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, pos);

-- Every change up to published_up_to is on JetStream.
CREATE TABLE key_changes_published (
    id              BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    published_up_to BIGINT NOT NULL
);
INSERT INTO key_changes_published (published_up_to) VALUES (0);

-- Imports (ImportKeys) committed, by source: done once.
CREATE TABLE key_imports (
    source      TEXT PRIMARY KEY,
    rows        BIGINT NOT NULL,
    imported_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
