-- Send-to-device messages waiting for their device. pos is the stream
-- position a /sync token carries as "_d<pos>"; a device's messages are
-- deleted once a /sync with a since token past them acknowledges them.
CREATE TABLE to_device_messages (
    pos        BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    BYTEA NOT NULL
);
CREATE INDEX to_device_messages_target ON to_device_messages (user_id, device_id, pos);

-- Transaction IDs of PUT /sendToDevice, per sending device, so a retried
-- request is not delivered twice.
CREATE TABLE to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Lazy-loaded members in /sync read a state key's latest event before a
-- position.
CREATE INDEX sync_events_state_key ON sync_events (room_id, type, state_key, pos) WHERE state_key IS NOT NULL;
