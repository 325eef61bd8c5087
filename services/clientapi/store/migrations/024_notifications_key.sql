-- An event has one position, so (user, pos) identifies a notification as
-- well as (user, event) did: it becomes the primary key and replaces the
-- separate (user, pos) index. Each notification row then maintains two
-- indexes instead of three; the insert was the consumer's largest cost
-- (#5).
ALTER TABLE notifications DROP CONSTRAINT notifications_pkey;
DROP INDEX notifications_user_pos;
ALTER TABLE notifications ADD PRIMARY KEY (user_id, pos);
