-- Server-side search (POST /search). Each searchable event carries the key
-- it was indexed under (content.body of m.room.message, content.name of
-- m.room.name, content.topic of m.room.topic) and its full-text vector
-- (PostgreSQL's 'english' configuration, as Synapse). A redaction clears
-- both, so redacted events are never found.
ALTER TABLE sync_events ADD COLUMN search_key TEXT, ADD COLUMN search_vec tsvector;
CREATE INDEX sync_events_search ON sync_events USING GIN (search_vec) WHERE search_vec IS NOT NULL;

-- Events stored before this migration.
UPDATE sync_events s SET search_key = k.key, search_vec = to_tsvector('english', k.text)
FROM (
    SELECT pos, key, text FROM (
        SELECT pos,
            CASE type WHEN 'm.room.message' THEN 'content.body'
                      WHEN 'm.room.name' THEN 'content.name'
                      WHEN 'm.room.topic' THEN 'content.topic' END AS key,
            CASE type WHEN 'm.room.message' THEN c->'body'
                      WHEN 'm.room.name' THEN c->'name'
                      WHEN 'm.room.topic' THEN c->'topic' END #>> '{}' AS text,
            CASE type WHEN 'm.room.message' THEN jsonb_typeof(c->'body')
                      WHEN 'm.room.name' THEN jsonb_typeof(c->'name')
                      WHEN 'm.room.topic' THEN jsonb_typeof(c->'topic') END AS kind
        FROM (SELECT pos, type, convert_from(event, 'UTF8')::jsonb -> 'content' AS c FROM sync_events
              WHERE type IN ('m.room.message', 'm.room.name', 'm.room.topic')
                -- jsonb cannot hold NUL characters; such events stay unindexed.
                AND position('\u0000' in convert_from(event, 'UTF8')) = 0) e
        WHERE jsonb_typeof(c) = 'object'
    ) x WHERE key IS NOT NULL AND kind = 'string' AND text <> ''
) k
WHERE s.pos = k.pos;

-- Content reports (POST /rooms/{roomId}/report[/{eventId}], POST
-- /users/{userId}/report), read by admins through the Synapse-compatible
-- /_synapse/admin/v1/event_reports API (event reports) and kept for the
-- other kinds. kind is 'event', 'room' or 'user'.
CREATE TABLE content_reports (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL,
    received_ts    BIGINT NOT NULL,
    reporter       TEXT NOT NULL,
    room_id        TEXT,
    event_id       TEXT,
    -- The reported event's sender (event reports) or the reported user.
    target_user_id TEXT,
    reason         TEXT,
    score          BIGINT
);
CREATE INDEX content_reports_kind ON content_reports (kind, id);
