-- Federation input (issue #16).
--
-- A room can be known before this server has its create event: an invite
-- (or a knock) of a local user into a room on another server is stored as
-- an out-of-room event. Such a room row is a stub: it has no create event
-- and no state until the server joins (the create event then arrives as an
-- outlier and clears it).
ALTER TABLE rooms ADD COLUMN stub BOOLEAN NOT NULL DEFAULT FALSE;

-- What an outbox row publishes: 0 a new event, 1 backfilled history, 2 an
-- out-of-room membership (with the stripped state the invite or knock
-- carried, a JSON array of stripped state events).
ALTER TABLE outbox ADD COLUMN kind SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN stripped_state TEXT;
