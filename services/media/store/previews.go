package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// URLPreview is a cached URL preview.
type URLPreview struct {
	URL       string
	BucketTS  int64
	FetchedTS int64
	ExpiresTS int64
	// Preview is the response body (JSON object).
	Preview []byte
	// ImageMediaID is the local media holding the og:image, if any.
	ImageMediaID string
}

func urlHash(url string) []byte {
	h := sha256.Sum256([]byte(url))
	return h[:]
}

// PreviewOf returns the preview of url cached for bucketTS that is still
// valid at nowMS (ErrNotFound if none).
func (s *Store) PreviewOf(ctx context.Context, url string, bucketTS, nowMS int64) (URLPreview, error) {
	p := URLPreview{URL: url, BucketTS: bucketTS}
	var image *string
	err := s.db.QueryRow(ctx, `SELECT fetched_ts, expires_ts, preview, image_media_id FROM url_previews
		WHERE url_hash = $1 AND bucket_ts = $2 AND url = $3 AND expires_ts > $4`, urlHash(url), bucketTS, url, nowMS).
		Scan(&p.FetchedTS, &p.ExpiresTS, &p.Preview, &image)
	if errors.Is(err, pgx.ErrNoRows) {
		return URLPreview{}, ErrNotFound
	}
	if err != nil {
		return URLPreview{}, err
	}
	p.ImageMediaID = deref(image)
	return p, nil
}

// PutPreview stores a preview for its URL and bucket, replacing an expired
// one; stored is false when a valid one is there already (a concurrent
// fetch won: the caller serves that one and deletes its own image).
func (s *Store) PutPreview(ctx context.Context, p URLPreview) (stored bool, err error) {
	tag, err := s.db.Exec(ctx, `INSERT INTO url_previews AS u (url_hash, bucket_ts, url, fetched_ts, expires_ts, preview, image_media_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (url_hash, bucket_ts) DO UPDATE SET url = EXCLUDED.url, fetched_ts = EXCLUDED.fetched_ts,
			expires_ts = EXCLUDED.expires_ts, preview = EXCLUDED.preview, image_media_id = EXCLUDED.image_media_id
		WHERE u.expires_ts <= EXCLUDED.fetched_ts`,
		urlHash(p.URL), p.BucketTS, p.URL, p.FetchedTS, p.ExpiresTS, p.Preview, nullable(p.ImageMediaID))
	if err != nil {
		return false, fmt.Errorf("store preview: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeleteStalePreviews deletes up to limit previews that expired before
// beforeMS and returns how many went and the media IDs of their images
// (which the caller deletes with DeleteMedia).
func (s *Store) DeleteStalePreviews(ctx context.Context, beforeMS int64, limit int) (int, []string, error) {
	rows, err := s.db.Query(ctx, `DELETE FROM url_previews WHERE (url_hash, bucket_ts) IN
		(SELECT url_hash, bucket_ts FROM url_previews WHERE expires_ts < $1 ORDER BY expires_ts LIMIT $2)
		RETURNING image_media_id`, beforeMS, limit)
	if err != nil {
		return 0, nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[*string])
	if err != nil {
		return 0, nil, err
	}
	var out []string
	for _, id := range ids {
		if id != nil {
			out = append(out, *id)
		}
	}
	return len(ids), out, nil
}

// DeleteMedia deletes a media row and its thumbnails, unless a preview
// still names it, and hands their storage keys to the janitor's list of
// content to delete (pending_objects, as if abandoned long ago); deleted
// reports whether the row went.
func (s *Store) DeleteMedia(ctx context.Context, mediaID string) (deleted bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var inUse bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM url_previews WHERE image_media_id = $1)`, mediaID).Scan(&inUse); err != nil {
			return err
		}
		if inUse {
			return nil
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pending_objects (storage_key, started_ts)
			SELECT storage_key, 0 FROM thumbnails WHERE media_id = $1
			UNION SELECT storage_key, 0 FROM media WHERE media_id = $1 AND storage_key IS NOT NULL
			ON CONFLICT DO NOTHING`, mediaID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM media WHERE media_id = $1`, mediaID)
		deleted = tag.RowsAffected() == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete media: %w", err)
	}
	return deleted, nil
}
