package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The client-API's content repository before the media service (migration
// 033): table media, the content as bytea. Migration 039 dropped its
// thumbnails, and the table itself when it was empty; what it still holds
// is handed over to the media service one row at a time and deleted
// (HandOverLegacyMedia), then the table is dropped (DropLegacyMedia).

// LegacyMedia is one row of the old media table, without its content.
type LegacyMedia struct {
	MediaID     string
	Uploader    string
	CreatedTS   int64
	UploadedTS  int64 // 0: created, not uploaded yet
	ExpiresTS   int64 // unused_expires_ts of a created one
	ContentType string
	UploadName  string
	Size        int64
}

// ReadChunk reads up to n bytes of the row's content from offset off.
type ReadChunk func(ctx context.Context, off, n int64) ([]byte, error)

// HasLegacyMedia reports whether the old media table still exists.
func (s *Store) HasLegacyMedia(ctx context.Context) (bool, error) {
	var exists bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass('media') IS NOT NULL`).Scan(&exists)
	return exists, err
}

// LegacyMediaCount counts the old table's rows and content bytes.
func (s *Store) LegacyMediaCount(ctx context.Context) (rows, bytes int64, err error) {
	err = s.db.QueryRow(ctx, `SELECT count(*), COALESCE(sum(size), 0) FROM media`).Scan(&rows, &bytes)
	if isUndefinedTable(err) {
		return 0, 0, nil
	}
	return rows, bytes, err
}

// LegacyUploads pages through the old table's uploaded rows (no
// content), in media ID order after the given one.
func (s *Store) LegacyUploads(ctx context.Context, after string, limit int) ([]LegacyMedia, error) {
	rows, err := s.db.Query(ctx, `SELECT media_id, uploader, created_ts, uploaded_ts, content_type, upload_name, size
		FROM media WHERE uploaded_ts IS NOT NULL AND media_id > $1 ORDER BY media_id LIMIT $2`, after, limit)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []LegacyMedia
	for rows.Next() {
		var m LegacyMedia
		var ctype, name *string
		if err := rows.Scan(&m.MediaID, &m.Uploader, &m.CreatedTS, &m.UploadedTS, &ctype, &name, &m.Size); err != nil {
			rows.Close()
			return nil, err
		}
		m.ContentType, m.UploadName = deref(ctype), deref(name)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		if isUndefinedTable(err) {
			return nil, nil
		}
		return nil, err
	}
	return out, nil
}

// HandOverLegacyMedia takes one row of the old table that no other
// replica is handing over, calls send with it (send reads the content in
// chunks through read), and deletes the row once send succeeded, all in
// one transaction: a failure leaves the row for a later try. A created
// media ID that expired unused is deleted without send. ok is false when
// no row was left to take (or the table is gone).
func (s *Store) HandOverLegacyMedia(ctx context.Context, now time.Time, send func(context.Context, LegacyMedia, ReadChunk) error) (ok bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var m LegacyMedia
		var uploaded, expires, size *int64
		var ctype, name *string
		err := tx.QueryRow(ctx, `SELECT media_id, uploader, created_ts, uploaded_ts, unused_expires_ts, content_type, upload_name, size
			FROM media ORDER BY media_id LIMIT 1 FOR UPDATE SKIP LOCKED`).
			Scan(&m.MediaID, &m.Uploader, &m.CreatedTS, &uploaded, &expires, &ctype, &name, &size)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		m.UploadedTS, m.ExpiresTS, m.Size = derefInt(uploaded), derefInt(expires), derefInt(size)
		m.ContentType, m.UploadName = deref(ctype), deref(name)
		if m.UploadedTS == 0 && m.ExpiresTS <= now.UnixMilli() {
			_, err := tx.Exec(ctx, `DELETE FROM media WHERE media_id = $1`, m.MediaID)
			return err
		}
		read := func(ctx context.Context, off, n int64) ([]byte, error) {
			var b []byte
			// substring counts from 1; a slice of an uncompressed TOAST
			// value is read without the rest of it.
			err := tx.QueryRow(ctx, `SELECT substring(content FROM $2 FOR $3) FROM media WHERE media_id = $1`, m.MediaID, off+1, n).Scan(&b)
			return b, err
		}
		if err := send(ctx, m, read); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM media WHERE media_id = $1`, m.MediaID)
		return err
	})
	if isUndefinedTable(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("hand over media: %w", err)
	}
	return ok, nil
}

// DropLegacyMedia drops the old media table if it is empty (dropped
// false while rows remain, e.g. held by another replica's hand-over).
func (s *Store) DropLegacyMedia(ctx context.Context) (dropped bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// Waits for other replicas' hand-overs in progress.
		if _, err := tx.Exec(ctx, `LOCK TABLE media IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		var rows bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM media)`).Scan(&rows); err != nil || rows {
			return err
		}
		dropped = true
		_, err := tx.Exec(ctx, `DROP TABLE media`)
		return err
	})
	if isUndefinedTable(err) {
		return true, nil
	}
	return dropped, err
}

func derefInt(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// isUndefinedTable: the old table is gone (another replica dropped it).
func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42P01"
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
