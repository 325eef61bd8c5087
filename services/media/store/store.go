// Package store holds the media service's PostgreSQL schema and queries:
// media metadata, thumbnails and the content being written to the
// storage. The content itself is in the storage backend (package
// storage).
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myelin-chat/myelin/pkg/pgstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the media service owns.
const Schema = "media"

var (
	// ErrNotFound: no such row.
	ErrNotFound = errors.New("not found")
	// ErrMediaExists: the media ID has content already.
	ErrMediaExists = errors.New("media already uploaded")
	// ErrQuota: the upload would take its uploader past the quota.
	ErrQuota = errors.New("media quota exceeded")
	// ErrExpired: a created media ID's time for its upload is over.
	ErrExpired = errors.New("media ID expired")
)

// Store is the media service's storage of metadata.
type Store struct {
	db *pgxpool.Pool
}

// Open connects and migrates.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	db, err := pgstore.Open(ctx, url, Schema, maxConns, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// Media is a media item's metadata.
type Media struct {
	MediaID     string
	Uploader    string
	CreatedTS   int64
	ExpiresTS   int64 // unused_expires_ts of a created one
	UploadedTS  int64 // 0: created, no content yet
	ContentType string
	UploadName  string
	Size        int64
	StorageKey  string
}

// Uploaded reports whether the media was uploaded (it may still be on
// its way from another service: see Stored).
func (m Media) Uploaded() bool { return m.UploadedTS != 0 }

// Stored reports whether the media's content is in the storage.
func (m Media) Stored() bool { return m.StorageKey != "" }

// lockUploader takes the uploader's media lock (to commit): one user's
// quota checks and creates are serialised.
func lockUploader(ctx context.Context, tx pgx.Tx, userID string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.media.uploader'), hashtext($1))`, userID)
	return err
}

// withinQuota checks, under the uploader's lock, that n more bytes stay
// within quota (0: none).
func withinQuota(ctx context.Context, tx pgx.Tx, userID string, n, quota int64) error {
	if err := lockUploader(ctx, tx, userID); err != nil {
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

// UsedBytes is the content a user has uploaded in all (a cheap early
// quota check; the binding one is in PutMedia and UploadCreated).
func (s *Store) UsedBytes(ctx context.Context, userID string) (int64, error) {
	var total int64
	err := s.db.QueryRow(ctx, `SELECT COALESCE(SUM(size), 0) FROM media WHERE uploader = $1 AND uploaded_ts IS NOT NULL`, userID).Scan(&total)
	return total, err
}

// AddPendingObject records that content is about to be written under key.
func (s *Store) AddPendingObject(ctx context.Context, key string, nowMS int64) error {
	_, err := s.db.Exec(ctx, `INSERT INTO pending_objects (storage_key, started_ts) VALUES ($1, $2)`, key, nowMS)
	return err
}

// RemovePendingObject forgets a pending key (its content was deleted).
func (s *Store) RemovePendingObject(ctx context.Context, key string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, key)
	return err
}

// AbandonedObjects lists pending keys older than beforeMS (uploads a
// process that died never finished).
func (s *Store) AbandonedObjects(ctx context.Context, beforeMS int64, limit int) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT storage_key FROM pending_objects WHERE started_ts < $1 ORDER BY started_ts LIMIT $2`, beforeMS, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// PutMedia stores an upload's row under a new media ID, its content
// already under m.StorageKey, unless it would take the uploader past
// quota bytes in all (ErrQuota; 0: no quota).
func (s *Store) PutMedia(ctx context.Context, m Media, quota int64) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := withinQuota(ctx, tx, m.Uploader, m.Size, quota); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO media (media_id, uploader, created_ts, uploaded_ts, content_type, upload_name, size, storage_key)
			VALUES ($1, $2, $3, $3, $4, $5, $6, $7)`,
			m.MediaID, m.Uploader, m.UploadedTS, nullable(m.ContentType), nullable(m.UploadName), m.Size, m.StorageKey)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, m.StorageKey)
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
		if err := lockUploader(ctx, tx, userID); err != nil {
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

// UploadCreated gives a media ID made by CreateMedia its content, stored
// under m.StorageKey. ErrNotFound: no such ID of this uploader;
// ErrExpired: its time is over; ErrMediaExists: it has content already;
// ErrQuota.
func (s *Store) UploadCreated(ctx context.Context, m Media, quota int64) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if err := withinQuota(ctx, tx, m.Uploader, m.Size, quota); err != nil {
			return err
		}
		var uploaded bool
		var expires *int64
		err := tx.QueryRow(ctx, `SELECT uploaded_ts IS NOT NULL, unused_expires_ts FROM media WHERE media_id = $1 AND uploader = $2 FOR UPDATE`,
			m.MediaID, m.Uploader).Scan(&uploaded, &expires)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case uploaded:
			return ErrMediaExists
		case expires != nil && *expires <= m.UploadedTS:
			return ErrExpired
		}
		_, err = tx.Exec(ctx, `UPDATE media SET uploaded_ts = $2, content_type = $3, upload_name = $4, size = $5, storage_key = $6, unused_expires_ts = NULL
			WHERE media_id = $1`,
			m.MediaID, m.UploadedTS, nullable(m.ContentType), nullable(m.UploadName), m.Size, m.StorageKey)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, m.StorageKey)
		return err
	})
	if err != nil && !errors.Is(err, ErrQuota) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) && !errors.Is(err, ErrMediaExists) {
		return fmt.Errorf("upload media: %w", err)
	}
	return err
}

// MediaByID returns a media row. An expired unused reservation is
// ErrNotFound.
func (s *Store) MediaByID(ctx context.Context, mediaID string, nowMS int64) (Media, error) {
	m := Media{MediaID: mediaID}
	var uploaded, expires, size *int64
	var ctype, name, key *string
	err := s.db.QueryRow(ctx, `SELECT uploader, created_ts, unused_expires_ts, uploaded_ts, content_type, upload_name, size, storage_key
		FROM media WHERE media_id = $1 AND (uploaded_ts IS NOT NULL OR unused_expires_ts > $2)`, mediaID, nowMS).
		Scan(&m.Uploader, &m.CreatedTS, &expires, &uploaded, &ctype, &name, &size, &key)
	if errors.Is(err, pgx.ErrNoRows) {
		return Media{}, ErrNotFound
	}
	if err != nil {
		return Media{}, err
	}
	m.ExpiresTS, m.UploadedTS, m.Size = derefInt(expires), derefInt(uploaded), derefInt(size)
	m.ContentType, m.UploadName, m.StorageKey = deref(ctype), deref(name), deref(key)
	return m, nil
}

// DeleteExpiredCreates deletes media IDs created before and expired
// unused (they hold no content).
func (s *Store) DeleteExpiredCreates(ctx context.Context, nowMS int64) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM media WHERE uploaded_ts IS NULL AND unused_expires_ts <= $1`, nowMS)
	return tag.RowsAffected(), err
}

// Thumbnail is a stored thumbnail.
type Thumbnail struct {
	MediaID     string
	Width       int
	Height      int
	Method      string
	ContentType string
	Size        int64
	StorageKey  string
}

// ThumbnailOf returns a stored thumbnail (ErrNotFound if none).
func (s *Store) ThumbnailOf(ctx context.Context, mediaID string, width, height int, method string) (Thumbnail, error) {
	t := Thumbnail{MediaID: mediaID, Width: width, Height: height, Method: method}
	err := s.db.QueryRow(ctx, `SELECT content_type, size, storage_key FROM thumbnails WHERE media_id = $1 AND width = $2 AND height = $3 AND method = $4`,
		mediaID, width, height, method).Scan(&t.ContentType, &t.Size, &t.StorageKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return Thumbnail{}, ErrNotFound
	}
	return t, err
}

// PutThumbnail stores a thumbnail's row, its content already under
// t.StorageKey. stored is false when a concurrent request stored the same
// thumbnail first (the caller deletes its own content).
func (s *Store) PutThumbnail(ctx context.Context, t Thumbnail) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO thumbnails (media_id, width, height, method, content_type, size, storage_key)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
			t.MediaID, t.Width, t.Height, t.Method, t.ContentType, t.Size, t.StorageKey)
		if err != nil {
			return err
		}
		stored = tag.RowsAffected() == 1
		if !stored {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, t.StorageKey)
		return err
	})
	return stored, err
}

// ImportMedia stores a media row handed over by another service, its
// content (if any) already under m.StorageKey. With an uploaded m and no
// key, the row is announced: its content comes in a later ImportMedia,
// which completes it. stored is false when there was nothing to do: the
// media ID exists with its content, or exists at all when m brings none.
// Quotas do not apply: this is media the server already held.
func (s *Store) ImportMedia(ctx context.Context, m Media) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var key, uploaded, expires any
		if m.Uploaded() {
			uploaded = m.UploadedTS
			if m.Stored() {
				key = m.StorageKey
			}
		} else {
			expires = m.ExpiresTS
		}
		tag, err := tx.Exec(ctx, `INSERT INTO media AS m (media_id, uploader, created_ts, unused_expires_ts, uploaded_ts, content_type, upload_name, size, storage_key)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (media_id) DO UPDATE SET storage_key = EXCLUDED.storage_key
			WHERE EXCLUDED.storage_key IS NOT NULL AND m.storage_key IS NULL AND m.uploaded_ts IS NOT NULL
				AND m.uploader = EXCLUDED.uploader AND m.size = EXCLUDED.size`,
			m.MediaID, m.Uploader, m.CreatedTS, expires, uploaded, nullable(m.ContentType), nullable(m.UploadName), sizeOrNull(m), key)
		if err != nil {
			return err
		}
		stored = tag.RowsAffected() == 1
		if !stored || !m.Stored() {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, m.StorageKey)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("import media: %w", err)
	}
	return stored, nil
}

// ImportState says how far a media ID is stored: not at all (exists
// false), announced without content (awaiting true), or complete.
func (s *Store) ImportState(ctx context.Context, mediaID string) (exists, awaiting bool, err error) {
	err = s.db.QueryRow(ctx, `SELECT true, uploaded_ts IS NOT NULL AND storage_key IS NULL FROM media WHERE media_id = $1`, mediaID).Scan(&exists, &awaiting)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	return exists, awaiting, err
}

func sizeOrNull(m Media) any {
	if !m.Uploaded() {
		return nil
	}
	return m.Size
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}
