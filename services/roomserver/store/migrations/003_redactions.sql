-- Accepted m.room.redaction events and what they redact. A redaction may
-- arrive before the event it redacts (federation): it waits here, and the
-- target is redacted when it is stored. applied is set once the target's
-- event_json has been replaced by its redacted form.
CREATE TABLE redactions (
    redaction_nid   BIGINT PRIMARY KEY REFERENCES events (event_nid),
    room_nid        BIGINT NOT NULL REFERENCES rooms (room_nid),
    target_event_id TEXT NOT NULL,
    applied         BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX redactions_target_idx ON redactions (target_event_id);
