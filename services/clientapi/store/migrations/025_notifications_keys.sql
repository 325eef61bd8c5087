-- Notifications are indexed by 64- and 32-bit keys of the user and room
-- IDs (notifKeys in push.go: the first bytes of their MD5) instead of the
-- IDs themselves. Each notification row maintains two btree entries, and
-- with text keys (some 60 bytes per entry) they were most of the cost of
-- the room event consumer's largest statement (#5): numeric keys make the
-- indexes about a third of the size and the insert about half the work.
-- The IDs stay in the row and every query compares them too, so two IDs
-- that share a key only cost a row read. The indexes are not unique: a
-- notification is written once, with its event (a redelivered event is
-- skipped), so the insert needs no conflict check.
ALTER TABLE notifications ADD COLUMN user_key BIGINT, ADD COLUMN room_key INT;
UPDATE notifications SET user_key = ('x' || left(md5(user_id), 16))::bit(64)::bigint,
    room_key = ('x' || left(md5(room_id), 8))::bit(32)::int;
ALTER TABLE notifications ALTER COLUMN user_key SET NOT NULL, ALTER COLUMN room_key SET NOT NULL;
ALTER TABLE notifications DROP CONSTRAINT notifications_pkey;
DROP INDEX notifications_user_room_pos;
CREATE INDEX notifications_user ON notifications (user_key, pos);
CREATE INDEX notifications_user_room ON notifications (user_key, room_key, pos);
-- A key and its ID say the same thing; without these the planner takes
-- "user_key = k AND user_id = u" for two independent filters, expects a
-- row or none, and reads and sorts all of a user's notifications for a
-- page of GET /notifications instead of walking the index backwards.
CREATE STATISTICS notifications_user_key (dependencies) ON user_key, user_id FROM notifications;
CREATE STATISTICS notifications_room_key (dependencies) ON room_key, room_id FROM notifications;
ANALYZE notifications;
