package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Media is a local upload (the content repository).
type Media struct {
	MediaID     string
	Uploader    string
	ContentType string
	UploadName  string
	Size        int64
	Content     []byte
	// Uploaded is false for a media ID made by create whose content has
	// not been uploaded yet.
	Uploaded bool
}

// ErrMediaExists is returned by UploadCreated when the media ID already has
// content.
var ErrMediaExists = errors.New("media already uploaded")

// ErrQuota is returned when an upload would take its uploader past the
// quota.
var ErrQuota = errors.New("media quota exceeded")

// withinQuota takes the uploader's media lock (held to commit) and checks
// that n more bytes stay within quota (0: none).
func withinQuota(ctx context.Context, tx pgx.Tx, userID string, n, quota int64) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.media_create'), hashtext($1))`, userID); err != nil {
		return err
	}
	if quota <= 0 {
		return nil
	}
	var total int64
	if err := tx.QueryRow(ctx, `SELECT COALESCE(SUM(size), 0) FROM media WHERE uploader = $1 AND uploaded_ts IS NOT NULL`, userID).Scan(&total); err != nil {
		return err
	}
	if total+n > quota {
		return ErrQuota
	}
	return nil
}

// PutMedia stores an upload under a new media ID, unless it would take
// the uploader past quota bytes in all (ErrQuota; 0: no quota).
func (s *Store) PutMedia(ctx context.Context, m Media, nowMS, quota int64) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := withinQuota(ctx, tx, m.Uploader, int64(len(m.Content)), quota); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO media (media_id, uploader, created_ts, uploaded_ts, content_type, upload_name, size, content)
			VALUES ($1, $2, $3, $3, $4, $5, $6, $7)`,
			m.MediaID, m.Uploader, nowMS, nullable(m.ContentType), nullable(m.UploadName), int64(len(m.Content)), m.Content)
		return err
	})
	if err != nil && !errors.Is(err, ErrQuota) {
		return fmt.Errorf("store media: %w", err)
	}
	return err
}

// CreateMedia reserves a media ID for a later UploadCreated by the same
// user, unless the user already holds maxPending unused ones (ok false).
// Expired reservations of the user are deleted first.
func (s *Store) CreateMedia(ctx context.Context, mediaID, userID string, nowMS, expiresMS int64, maxPending int) (ok bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// One user's creates are serialised, so the count holds.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.media_create'), hashtext($1))`, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM media WHERE uploader = $1 AND uploaded_ts IS NULL AND unused_expires_ts <= $2`, userID, nowMS); err != nil {
			return err
		}
		var pending int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM media WHERE uploader = $1 AND uploaded_ts IS NULL`, userID).Scan(&pending); err != nil {
			return err
		}
		if pending >= maxPending {
			return nil
		}
		ok = true
		_, err := tx.Exec(ctx, `INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES ($1, $2, $3, $4)`,
			mediaID, userID, nowMS, expiresMS)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("create media: %w", err)
	}
	return ok, nil
}

// UploadCreated stores the content of a media ID made by CreateMedia.
// ErrNotFound: no such ID, or not the uploader's, or expired; the caller
// tells which (MediaInfo). ErrMediaExists: it has content already.
func (s *Store) UploadCreated(ctx context.Context, m Media, nowMS, quota int64) error {
	var affected int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := withinQuota(ctx, tx, m.Uploader, int64(len(m.Content)), quota); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE media SET uploaded_ts = $3, content_type = $4, upload_name = $5, size = $6, content = $7, unused_expires_ts = NULL
			WHERE media_id = $1 AND uploader = $2 AND uploaded_ts IS NULL AND unused_expires_ts > $3`,
			m.MediaID, m.Uploader, nowMS, nullable(m.ContentType), nullable(m.UploadName), int64(len(m.Content)), m.Content)
		affected = tag.RowsAffected()
		return err
	})
	if errors.Is(err, ErrQuota) {
		return err
	}
	if err != nil {
		return fmt.Errorf("upload media: %w", err)
	}
	if affected == 1 {
		return nil
	}
	var uploaded bool
	err = s.db.QueryRow(ctx, `SELECT uploaded_ts IS NOT NULL FROM media WHERE media_id = $1 AND uploader = $2`, m.MediaID, m.Uploader).Scan(&uploaded)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if uploaded {
		return ErrMediaExists
	}
	return ErrNotFound // expired
}

// MediaOwner returns who created a media ID (ErrNotFound if no one).
func (r Reader) MediaOwner(ctx context.Context, mediaID string) (string, error) {
	var u string
	err := r.q.QueryRow(ctx, `SELECT uploader FROM media WHERE media_id = $1`, mediaID).Scan(&u)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrNotFound
	}
	return u, err
}

// MediaByID returns a media row; with content false, without its content.
// An expired unused reservation is ErrNotFound.
func (r Reader) MediaByID(ctx context.Context, mediaID string, content bool, nowMS int64) (Media, error) {
	m := Media{MediaID: mediaID}
	var ctype, name *string
	var size *int64
	cols := `NULL::bytea`
	if content {
		cols = `content`
	}
	err := r.q.QueryRow(ctx, `SELECT uploader, uploaded_ts IS NOT NULL, content_type, upload_name, size, `+cols+`
		FROM media WHERE media_id = $1 AND (uploaded_ts IS NOT NULL OR unused_expires_ts > $2)`, mediaID, nowMS).
		Scan(&m.Uploader, &m.Uploaded, &ctype, &name, &size, &m.Content)
	if errors.Is(err, pgx.ErrNoRows) {
		return Media{}, ErrNotFound
	}
	if err != nil {
		return Media{}, err
	}
	if ctype != nil {
		m.ContentType = *ctype
	}
	if name != nil {
		m.UploadName = *name
	}
	if size != nil {
		m.Size = *size
	}
	return m, nil
}

// Thumbnail is a stored thumbnail.
type Thumbnail struct {
	ContentType string
	Content     []byte
}

// MediaThumbnail returns a stored thumbnail (ErrNotFound if none).
func (r Reader) MediaThumbnail(ctx context.Context, mediaID string, width, height int, method string) (Thumbnail, error) {
	var t Thumbnail
	err := r.q.QueryRow(ctx, `SELECT content_type, content FROM media_thumbnails WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4`,
		mediaID, width, height, method).Scan(&t.ContentType, &t.Content)
	if errors.Is(err, pgx.ErrNoRows) {
		return Thumbnail{}, ErrNotFound
	}
	return t, err
}

// PutMediaThumbnail stores a thumbnail (a concurrent one made the same is
// kept).
func (s *Store) PutMediaThumbnail(ctx context.Context, mediaID string, width, height int, method string, t Thumbnail) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media_thumbnails (media_id, width, height, method, content_type, content)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, mediaID, width, height, method, t.ContentType, t.Content)
	return err
}
