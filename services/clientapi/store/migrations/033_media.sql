-- The content repository (media.go): local media only (no federation).
-- Content lives in PostgreSQL, so every client-API replica serves every
-- upload without a shared volume; uploads are capped by
-- client_api.media.max_upload_size. A row made by POST /media/v1/create has
-- no content until its PUT (uploaded_ts NULL), and is deleted unused after
-- its unused_expires_at.
CREATE TABLE media (
    media_id          TEXT PRIMARY KEY,
    uploader          TEXT NOT NULL,
    created_ts        BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    uploaded_ts       BIGINT,
    content_type      TEXT,
    upload_name       TEXT,
    size              BIGINT,
    content           BYTEA
);
CREATE INDEX media_pending ON media (uploader) WHERE uploaded_ts IS NULL;

-- Thumbnails made on request, one per (media, size, method) asked for.
CREATE TABLE media_thumbnails (
    media_id     TEXT NOT NULL,
    width        INT NOT NULL,
    height       INT NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content      BYTEA NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
