-- OpenID tokens (POST /user/{userId}/openid/request_token): the SHA-256 of
-- each token, its user and its expiry. Other services exchange a token for
-- its user through the UserService's ValidateOpenIDToken (federation's
-- /openid/userinfo); it is good for nothing else. Expired rows are deleted
-- when tokens are issued, a deactivated user's with the account.
CREATE TABLE openid_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_at);
