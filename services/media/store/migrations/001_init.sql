-- The media service's metadata; the content is in the content storage
-- (a directory or an S3 bucket) under storage_key.

-- Local media. A row made by POST /media/v1/create has no content until
-- its upload (uploaded_ts and storage_key NULL) and is deleted unused
-- after unused_expires_ts. A row handed over by another service may be
-- announced before its content arrives (uploaded_ts set, storage_key NULL
-- until the content's import).
CREATE TABLE media (
    media_id          TEXT PRIMARY KEY,
    uploader          TEXT NOT NULL,
    created_ts        BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    uploaded_ts       BIGINT,
    content_type      TEXT,
    upload_name       TEXT,
    size              BIGINT,
    storage_key       TEXT,
    CHECK (uploaded_ts IS NOT NULL OR storage_key IS NULL)
);
CREATE INDEX media_pending ON media (uploader) WHERE uploaded_ts IS NULL;
-- The per-user quota sums a user's uploads.
CREATE INDEX media_uploaded ON media (uploader) INCLUDE (size) WHERE uploaded_ts IS NOT NULL;

-- Thumbnails made on request, in the spec's recommended sizes.
CREATE TABLE thumbnails (
    media_id     TEXT NOT NULL REFERENCES media ON DELETE CASCADE,
    width        INT NOT NULL,
    height       INT NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    storage_key  TEXT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);

-- Content being written to the storage that no row names yet. A row is
-- added before the first byte is written and deleted in the transaction
-- that stores the media or thumbnail row naming the key (or after the
-- content is deleted again). What a process that died mid-upload left
-- behind stays here, and the janitor deletes it from the storage.
CREATE TABLE pending_objects (
    storage_key TEXT PRIMARY KEY,
    started_ts  BIGINT NOT NULL
);
CREATE INDEX pending_objects_started ON pending_objects (started_ts);
