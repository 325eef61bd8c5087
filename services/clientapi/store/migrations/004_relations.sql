-- Event relations (content."m.relates_to"): one row per relating event,
-- kept in step with sync_events. A redacted event loses its relation (its
-- content is gone), so its row is deleted.
CREATE TABLE event_relations (
    event_id   TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type   TEXT NOT NULL,
    pos        BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, pos);
CREATE INDEX event_relations_room_type ON event_relations (room_id, rel_type, pos);

INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, pos)
    SELECT event_id, room_id, rel->>'event_id', rel->>'rel_type', pos FROM (
        SELECT event_id, room_id, pos, convert_from(event, 'UTF8')::jsonb -> 'content' -> 'm.relates_to' AS rel
        FROM sync_events
    ) s
    WHERE jsonb_typeof(rel) = 'object' AND jsonb_typeof(rel->'event_id') = 'string'
        AND jsonb_typeof(rel->'rel_type') = 'string'
    ON CONFLICT DO NOTHING;
