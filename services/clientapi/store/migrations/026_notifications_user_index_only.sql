-- Notifications keep one index, (user_key, pos). The (user_key, room_key,
-- pos) index served only the recount of a user's room when a receipt
-- moves, and each index entry was about 45 % of the cost of storing a
-- notification row, the room event consumer's largest statement (#5).
-- A recount now counts only the thread the receipt covers, from that
-- receipt's position (unread.go), so the user's index, walked from there,
-- is as good: receipts usually name a recent event.
DROP INDEX notifications_user_room;
DROP STATISTICS notifications_room_key;
ALTER TABLE notifications DROP COLUMN room_key;
