-- Notifications are deleted once their event is older than the retention
-- (push.notification_retention, default 30 days). A BRIN index on ts finds
-- them: rows arrive in about ts order, so its ranges are tight, and it
-- costs next to nothing per insert, where a btree entry was about 45 % of
-- a notification row's cost (#5).
CREATE INDEX notifications_ts ON notifications USING brin (ts) WITH (autosummarize = on);
