-- End-to-end encryption keys of local devices (e2ekeys.go, store/e2ekeys.go):
-- device identity keys, one-time and fallback keys, cross-signing keys, and
-- the device list changes /sync and /keys/changes report (positions from
-- device_list_pos: the sync token's "_k" component).
CREATE SEQUENCE device_list_pos;

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

CREATE TABLE device_list_changes (
    pos     BIGINT PRIMARY KEY DEFAULT nextval('device_list_pos'),
    user_id TEXT NOT NULL
);
