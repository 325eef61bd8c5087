-- Identical filters of one user share an ID. The unique constraint on the
-- JSONB value itself put whole filters into a btree, which refuses entries
-- over about 2.7 kB (a filter of a few hundred room IDs): such a filter
-- failed to store. The uniqueness now holds on a hash of the normalised
-- JSONB text (md5 collisions could only make one user's two filters share
-- an ID, and only if that user crafted them).
ALTER TABLE filters DROP CONSTRAINT filters_user_id_filter_key;
CREATE UNIQUE INDEX filters_user_filter_hash ON filters (user_id, md5(filter::text));
