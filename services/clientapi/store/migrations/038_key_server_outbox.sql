-- The end-to-end keys moved to the key-server (its migrations 002 and 003;
-- the old tables of migrations 034 and 035 are handed over to it through
-- ImportKeys at start and then dropped, keyhandover.go). Device deletions
-- and renames still happen here: each is written to this outbox in the
-- transaction that deletes or renames the device (after its devices row
-- is locked, so one device's operations get ids in commit order) and sent
-- to the key-server after the commit, and again until it took them
-- (keyoutbox.go), in id order per user.
CREATE TABLE key_server_outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      TEXT NOT NULL,
    op           TEXT NOT NULL CHECK (op IN ('delete', 'rename')),
    device_ids   TEXT[] NOT NULL,
    display_name TEXT
);
CREATE INDEX key_server_outbox_user ON key_server_outbox (user_id, id);
