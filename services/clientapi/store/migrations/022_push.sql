-- Push notifications (push.go, push_eval.go, notifications.go, pushers.go).

-- One row per (user, event) that the user's push rules made notify. Written
-- by the room event consumer in the transaction that stores the event, so
-- a /sync that sees the event sees its notification. thread_id is the
-- thread root's event ID, or 'main' for the main timeline.
CREATE TABLE notifications (
    user_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    pos       BIGINT NOT NULL,
    actions   JSONB NOT NULL,
    highlight BOOLEAN NOT NULL,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX notifications_user_pos ON notifications (user_id, pos);
CREATE INDEX notifications_user_room ON notifications (user_id, room_id, thread_id, pos);

-- The client-API's copy of local users' read receipts (the presence service
-- owns receipts; its JetStream changes feed this copy), plus 'own' rows: a
-- user's own event reads its thread up to it. thread_id '' is an
-- unthreaded receipt. pos comes from account_data_pos under the user's
-- account data lock, so /sync sees count changes in the "_a" stream.
CREATE TABLE push_receipts (
    user_id      TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    epos         BIGINT NOT NULL,
    pos          BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id, receipt_type)
);
CREATE INDEX push_receipts_user_pos ON push_receipts (user_id, pos);

-- Pushers (POST /pushers/set). last_pos is the notification position the
-- HTTP pusher has handled up to; a new pusher starts at the current end.
CREATE TABLE pushers (
    user_id             TEXT NOT NULL,
    app_id              TEXT NOT NULL,
    pushkey             TEXT NOT NULL,
    kind                TEXT NOT NULL,
    app_display_name    TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag         TEXT NOT NULL DEFAULT '',
    lang                TEXT NOT NULL,
    data                JSONB NOT NULL,
    pushkey_ts          BIGINT NOT NULL,
    last_pos            BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);
