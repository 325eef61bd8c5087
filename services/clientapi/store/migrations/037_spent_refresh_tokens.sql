-- Refresh tokens spent by use (store.Refresh, LookupToken): one that comes
-- back means the session is compromised, and the spec asks the server to
-- revoke it. The last spentRefreshKept of each device are kept (deleted
-- with the device). A token bought by a refresh that was repeated (its
-- answer lost) was never used, so it is not spent: bought_with tells it
-- apart.
CREATE TABLE spent_refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    spent_ts   BIGINT NOT NULL
);
CREATE INDEX spent_refresh_tokens_device ON spent_refresh_tokens (user_id, device_id, spent_ts);

ALTER TABLE refresh_tokens ADD COLUMN bought_with BYTEA;
