-- Verify keys of other servers, fetched directly or through notaries: the
-- cache behind ServerKeyService.QueryServerKeys (gomatrixserverlib's
-- KeyDatabase). A current key has expired_ts 0 and a valid_until_ts; an
-- old key (from old_verify_keys) has an expired_ts and valid_until_ts 0.
CREATE TABLE server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     BYTEA NOT NULL CHECK (length(public_key) = 32),
    valid_until_ts BIGINT NOT NULL,
    expired_ts     BIGINT NOT NULL,
    fetched_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (server_name, key_id)
);

-- The last key response of each server, exactly as its origin signed it
-- (its self-signature must survive): what the notary endpoints serve, with
-- this server's signature added.
CREATE TABLE server_key_responses (
    server_name    TEXT PRIMARY KEY,
    response       BYTEA NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
