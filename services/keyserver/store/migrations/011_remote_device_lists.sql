-- Federation (issue #16): device lists of other servers' users, from their
-- m.device_list_update and m.signing_key_update EDUs and from the resync
-- of a stale list (/user/devices). Kept apart from this server's own
-- users' keys: they have no positions and are never published on
-- MYELIN_KEY_CHANGES.

-- One row per remote user whose list is held. stream_id: the highest
-- update (or resync) stream ID seen; recent_stream_ids: the last update
-- stream IDs applied (the prev_id check); stale: a gap was seen (or only
-- part of the list is known), so the list must be fetched whole again.
CREATE TABLE remote_device_lists (
    user_id           TEXT PRIMARY KEY,
    stream_id         BIGINT NOT NULL DEFAULT 0,
    recent_stream_ids BIGINT[] NOT NULL DEFAULT '{}',
    stale             BOOLEAN NOT NULL DEFAULT false,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX remote_device_lists_stale ON remote_device_lists (updated_at) WHERE stale;

CREATE TABLE remote_devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    -- The identity keys object as the user's server gave it; NULL: none.
    keys         BYTEA,
    PRIMARY KEY (user_id, device_id)
);

-- key_type: master, self_signing.
CREATE TABLE remote_cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    keys     BYTEA NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
