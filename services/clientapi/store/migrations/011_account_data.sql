-- Account data, global (room_id = '') and per room, with the position of
-- its latest change. Positions come from one sequence but are compared per
-- user only: writes of one user are serialized (advisory lock), so a
-- user's positions commit in order and /sync never skips one.
CREATE SEQUENCE account_data_pos;

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL DEFAULT '',
    type    TEXT NOT NULL,
    content BYTEA NOT NULL,
    pos     BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_pos ON account_data (user_id, pos);
