-- Room summaries are kept, not aggregated per /sync (syncstate.go): every
-- /sync counted each returned room's members from current_state and sorted
-- them for heroes, 0.7 ms a /sync at N=32 and a scan of all members of all
-- rooms in a big account's initial /sync (#5). The room event consumer
-- recomputes a room's row in the transaction that changes its state.
-- heroes holds the first 6 joined or invited members (by state position),
-- so that 5 remain once the reader is left out.
CREATE TABLE room_summaries (
    room_id TEXT PRIMARY KEY,
    joined  INT NOT NULL,
    invited INT NOT NULL,
    named   BOOLEAN NOT NULL,
    heroes  TEXT[] NOT NULL
);
INSERT INTO room_summaries (room_id, joined, invited, named, heroes)
SELECT room_id,
    count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'join'),
    count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'invite'),
    bool_or(type <> 'm.room.member'),
    COALESCE((array_agg(state_key ORDER BY pos, state_key) FILTER (
        WHERE type = 'm.room.member' AND membership IN ('join', 'invite')))[1:6], '{}')
FROM current_state
WHERE type IN ('m.room.member', 'm.room.name', 'm.room.canonical_alias')
GROUP BY room_id;
