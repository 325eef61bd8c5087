-- A /sync's unread counts no longer grow with the unread events (#20).
-- Counting room_notifications rows one by one from a reader's receipt made
-- the count of a reader who never reads cost a row per event since their
-- join. Each row now carries the running count of its room thread's rows
-- up to and including it (cum_count, and cum_highlight of those that
-- highlight), so the rows of a thread in a range of positions are the
-- difference of the running counts at its ends: two index probes per
-- thread (unread.go). The consumer stores a room's events in order, one
-- transaction at a time, so a new row's running count is its thread's
-- total so far (room_threads) plus the batch's rows before it (push.go).
--
-- room_threads: each room thread that has had a row, with its newest
-- row's position and its running totals; a count visits only the threads
-- with a row after the reader's start. Rows pruned by retention leave the
-- running counts of the later rows as they were: see unread.go.
ALTER TABLE room_notifications ADD COLUMN cum_count BIGINT, ADD COLUMN cum_highlight BIGINT;
UPDATE room_notifications r SET cum_count = c.n, cum_highlight = c.h
FROM (SELECT room_id, pos,
        COUNT(*) OVER w AS n, COUNT(*) FILTER (WHERE highlight) OVER w AS h
    FROM room_notifications
    WINDOW w AS (PARTITION BY room_id, thread_id ORDER BY pos)) c
WHERE r.room_id = c.room_id AND r.pos = c.pos;
ALTER TABLE room_notifications ALTER COLUMN cum_count SET NOT NULL, ALTER COLUMN cum_highlight SET NOT NULL;
CREATE INDEX room_notifications_thread ON room_notifications (room_id, thread_id, pos)
    INCLUDE (cum_count, cum_highlight, highlight);

CREATE TABLE room_threads (
    room_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    last_pos      BIGINT NOT NULL,
    cum_count     BIGINT NOT NULL,
    cum_highlight BIGINT NOT NULL,
    PRIMARY KEY (room_id, thread_id)
);
INSERT INTO room_threads (room_id, thread_id, last_pos, cum_count, cum_highlight)
SELECT DISTINCT ON (room_id, thread_id) room_id, thread_id, pos, cum_count, cum_highlight
FROM room_notifications ORDER BY room_id, thread_id, pos DESC;
