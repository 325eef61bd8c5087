-- URL previews (GET /media/preview_url), cached per URL and time bucket:
-- a request's ts (or the time of the request) rounded down to the cache
-- TTL picks the bucket, so clients asking for the same moment get the same
-- version. url_hash is the SHA-256 of the URL (URLs may be longer than an
-- index entry can hold). A preview is served until expires_ts and deleted
-- by the janitor later, with its image.
CREATE TABLE url_previews (
    url_hash       BYTEA NOT NULL,
    bucket_ts      BIGINT NOT NULL,
    url            TEXT NOT NULL,
    fetched_ts     BIGINT NOT NULL,
    expires_ts     BIGINT NOT NULL,
    preview        JSONB NOT NULL,
    -- The og:image stored as local media (uploader ''), if any.
    image_media_id TEXT REFERENCES media ON DELETE SET NULL,
    PRIMARY KEY (url_hash, bucket_ts)
);
CREATE INDEX url_previews_expires ON url_previews (expires_ts);
