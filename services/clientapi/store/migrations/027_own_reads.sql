-- A local user's own event reads its thread up to it (unread.go). Those
-- reads were push_receipts rows of type 'own', rewritten with every event a
-- user sends. Changing a row's event_id, which push_receipts indexes for
-- receipts that arrive before their event, made each rewrite a new row
-- version in all three of its indexes (#5). own_reads keeps the position
-- only, under its key alone, so a rewrite is an in-place (HOT) update.
CREATE TABLE own_reads (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    pos       BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);
INSERT INTO own_reads (user_id, room_id, thread_id, pos)
SELECT r.user_id, r.room_id, r.thread_id, se.pos
FROM push_receipts r JOIN sync_events se ON se.event_id = r.event_id
WHERE r.receipt_type = 'own';
DELETE FROM push_receipts WHERE receipt_type = 'own';
