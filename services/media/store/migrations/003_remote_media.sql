-- Other servers' media, fetched over federation on a client's request and
-- kept: the content is in the content storage under storage_key. A row
-- exists only once its content is stored whole.
CREATE TABLE remote_media (
    server_name  TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    content_type TEXT,
    upload_name  TEXT,
    size         BIGINT NOT NULL,
    storage_key  TEXT NOT NULL,
    fetched_ts   BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id)
);

-- Thumbnails of remote media, fetched from their server in the spec's
-- recommended sizes (the size a request is rounded up to).
CREATE TABLE remote_thumbnails (
    server_name  TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    width        INT NOT NULL,
    height       INT NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT,
    size         BIGINT NOT NULL,
    storage_key  TEXT NOT NULL,
    fetched_ts   BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method)
);
