-- A message no longer costs a row per member (#20). room_notifications
-- holds one row per event that notifies a member with the server-default
-- push rules who is not named by it (not mentioned, not its invite's
-- target): the "default outcome" of the event, with its actions. Every
-- joined local member receives it, from their join on, except the sender
-- and the members with a row of their own for the event in notifications.
-- notifications keeps per-user rows only for the exceptions: members whose
-- own rules (stored m.push_rules, mentions, invites) give another outcome.
-- notify = false is a member the default outcome would notify but whose
-- rules do not. Unread counts are counted when read (unread.go), so
-- unread_counts goes; the per-user rows stored before this migration stay,
-- as explicit notifications.
CREATE TABLE room_notifications (
    room_id   TEXT NOT NULL,
    pos       BIGINT NOT NULL,
    event_id  TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    sender    TEXT NOT NULL,
    actions   JSONB NOT NULL,
    highlight BOOLEAN NOT NULL,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (room_id, pos)
);
CREATE INDEX room_notifications_ts ON room_notifications USING brin (ts) WITH (autosummarize = on);

ALTER TABLE notifications ADD COLUMN notify BOOLEAN NOT NULL DEFAULT true;
DROP TABLE unread_counts;

-- Storing an event reads, instead of every member, the members whose
-- rules are not the defaults or who have a pusher (pushctx.go): from the
-- users with stored push rules (this index) and the pushers.
CREATE INDEX account_data_push_rules ON account_data (user_id) WHERE room_id = '' AND type = 'm.push_rules';
