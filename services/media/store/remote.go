package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RemoteMedia is another server's media kept here.
type RemoteMedia struct {
	ServerName  string
	MediaID     string
	ContentType string
	UploadName  string
	Size        int64
	StorageKey  string
	FetchedTS   int64
}

// RemoteMediaOf returns kept remote media (ErrNotFound if none).
func (s *Store) RemoteMediaOf(ctx context.Context, serverName, mediaID string) (RemoteMedia, error) {
	m := RemoteMedia{ServerName: serverName, MediaID: mediaID}
	var ctype, name *string
	err := s.db.QueryRow(ctx, `SELECT content_type, upload_name, size, storage_key, fetched_ts FROM remote_media
		WHERE server_name = $1 AND media_id = $2`, serverName, mediaID).Scan(&ctype, &name, &m.Size, &m.StorageKey, &m.FetchedTS)
	if errors.Is(err, pgx.ErrNoRows) {
		return RemoteMedia{}, ErrNotFound
	}
	if err != nil {
		return RemoteMedia{}, err
	}
	m.ContentType, m.UploadName = deref(ctype), deref(name)
	return m, nil
}

// PutRemoteMedia stores the row of fetched remote media, its content
// already under m.StorageKey. stored is false when a concurrent fetch
// stored it first (the caller deletes its own content).
func (s *Store) PutRemoteMedia(ctx context.Context, m RemoteMedia) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO remote_media (server_name, media_id, content_type, upload_name, size, storage_key, fetched_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
			m.ServerName, m.MediaID, nullable(m.ContentType), nullable(m.UploadName), m.Size, m.StorageKey, m.FetchedTS)
		if err != nil {
			return err
		}
		if stored = tag.RowsAffected() == 1; !stored {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, m.StorageKey)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store remote media: %w", err)
	}
	return stored, nil
}

// RemoteThumbnail is a kept thumbnail of remote media.
type RemoteThumbnail struct {
	ServerName  string
	MediaID     string
	Width       int
	Height      int
	Method      string
	ContentType string
	Size        int64
	StorageKey  string
	FetchedTS   int64
}

// RemoteThumbnailOf returns a kept remote thumbnail (ErrNotFound if none).
func (s *Store) RemoteThumbnailOf(ctx context.Context, serverName, mediaID string, width, height int, method string) (RemoteThumbnail, error) {
	t := RemoteThumbnail{ServerName: serverName, MediaID: mediaID, Width: width, Height: height, Method: method}
	var ctype *string
	err := s.db.QueryRow(ctx, `SELECT content_type, size, storage_key, fetched_ts FROM remote_thumbnails
		WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5`,
		serverName, mediaID, width, height, method).Scan(&ctype, &t.Size, &t.StorageKey, &t.FetchedTS)
	if errors.Is(err, pgx.ErrNoRows) {
		return RemoteThumbnail{}, ErrNotFound
	}
	if err != nil {
		return RemoteThumbnail{}, err
	}
	t.ContentType = deref(ctype)
	return t, nil
}

// PutRemoteThumbnail stores the row of a fetched remote thumbnail, its
// content already under t.StorageKey; stored is false when a concurrent
// fetch stored it first.
func (s *Store) PutRemoteThumbnail(ctx context.Context, t RemoteThumbnail) (stored bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO remote_thumbnails (server_name, media_id, width, height, method, content_type, size, storage_key, fetched_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
			t.ServerName, t.MediaID, t.Width, t.Height, t.Method, nullable(t.ContentType), t.Size, t.StorageKey, t.FetchedTS)
		if err != nil {
			return err
		}
		if stored = tag.RowsAffected() == 1; !stored {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM pending_objects WHERE storage_key = $1`, t.StorageKey)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store remote thumbnail: %w", err)
	}
	return stored, nil
}
