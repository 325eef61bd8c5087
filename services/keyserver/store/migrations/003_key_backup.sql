-- Server-side key backups (keybackup.go, store/keybackup.go), moved here
-- from the client-API (migration 035 there). Versions count up per user
-- and are never reused: a deleted version keeps its row (deleted = true)
-- and loses its keys. etag changes whenever the keys of a version do.
CREATE TABLE key_backup_versions (
    user_id   TEXT NOT NULL,
    version   BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data BYTEA NOT NULL,
    etag      BIGINT NOT NULL DEFAULT 0,
    deleted   BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE key_backup_keys (
    user_id             TEXT NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BOOLEAN NOT NULL,
    session_data        BYTEA NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
