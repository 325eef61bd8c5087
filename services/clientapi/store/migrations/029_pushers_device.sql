-- A pusher belongs to the device that set it (POST /pushers/set), and goes
-- with it: logging out, deleting the device, a password change that logs
-- out other devices, and deactivation delete its pushers, so a phone that
-- logged out stops getting pushes (Synapse removes a pusher with the
-- access token that created it; a device outlives token refreshes, so it
-- is the owner here). Pushers set before this migration have no device;
-- they go only when every device of their user does (LogoutAll,
-- deactivation, or a password change that keeps one device, which may not
-- be theirs).
ALTER TABLE pushers ADD COLUMN device_id TEXT;
CREATE INDEX pushers_device ON pushers (user_id, device_id);
