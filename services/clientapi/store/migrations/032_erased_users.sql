-- Erasure (POST /account/deactivate with "erase": true; erasure.go). Users
-- who join a room after the erasure are served redacted copies of the
-- erased user's events; users who could see an event before it still see
-- it whole. pos is the client-API's room stream position when the erasure
-- was recorded (after the deactivation's leave events): visibility "before
-- the erasure" is judged with the requester's membership changes up to it.
CREATE TABLE erased_users (
    user_id   TEXT PRIMARY KEY,
    pos       BIGINT NOT NULL,
    erased_ts BIGINT NOT NULL
);
