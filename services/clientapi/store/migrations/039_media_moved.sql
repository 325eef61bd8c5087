-- The content repository moved to the media service (services/media, its
-- own schema). Thumbnails are made again there on request, so these go
-- now. The media rows are handed over by the running client-API through
-- the media service's ImportMedia RPC (media_handover.go), which deletes
-- each row once the media service has it and drops the table when it is
-- empty; a database without media (a new one) loses the table here.
DROP TABLE media_thumbnails;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM media) THEN
        DROP TABLE media;
    END IF;
END
$$;
