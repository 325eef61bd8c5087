-- Account locking and suspension (moderation.go): reversible, unlike
-- deactivation. A locked account's requests get 401 M_USER_LOCKED (its
-- tokens stay); a suspended one may read but not join, invite, send or
-- change its profile (403 M_USER_SUSPENDED).
ALTER TABLE accounts
    ADD COLUMN locked    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT false;
