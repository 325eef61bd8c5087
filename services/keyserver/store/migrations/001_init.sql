-- The server's ed25519 signing keys. Exactly one row has expired_at NULL:
-- the current key. The private seed never leaves this service.
CREATE TABLE signing_keys (
    key_id     TEXT PRIMARY KEY,
    seed       BYTEA NOT NULL CHECK (length(seed) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expired_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys ((expired_at IS NULL)) WHERE expired_at IS NULL;
