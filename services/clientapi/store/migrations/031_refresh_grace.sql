-- POST /refresh (store.Refresh): "the old refresh token remains valid until
-- the new access token or refresh token is used", so that a client that
-- lost the answer can refresh again. A refresh keeps the refresh token it
-- was given and deletes the device's others; the access token it issues
-- remembers that token's hash here. The first request with that access
-- token deletes the old refresh token and clears this column (later
-- requests then cost nothing extra); a refresh with the new refresh token
-- deletes it as one of the device's others.
ALTER TABLE access_tokens ADD COLUMN prev_refresh_hash BYTEA;
