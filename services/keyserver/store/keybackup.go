package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Server-side key backups (migration 003). The server keeps the backups'
// data opaque: it only compares the metadata of two keys for one session
// to keep the better one.

// ErrNoBackup is returned when a backup version does not exist (or was
// deleted).
var ErrNoBackup = errors.New("no such backup version")

// BackupVersion is a server-side key backup version.
type BackupVersion struct {
	Version   int64
	Algorithm string
	AuthData  json.RawMessage
	Etag      int64
	Count     int64
}

// BackupKey is one session's key in a backup.
type BackupKey struct {
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// Better reports whether k should replace old (the spec's order: verified
// first, then the lower first message index, then the lower forwarded
// count).
func (k BackupKey) Better(old BackupKey) bool {
	if k.IsVerified != old.IsVerified {
		return k.IsVerified
	}
	if k.FirstMessageIndex != old.FirstMessageIndex {
		return k.FirstMessageIndex < old.FirstMessageIndex
	}
	return k.ForwardedCount < old.ForwardedCount
}

// backupLock serialises one user's backup writes.
const backupLock = `SELECT pg_advisory_xact_lock(hashtext('myelin.keyserver.key_backup'), hashtext($1))`

// CreateBackupVersion creates a user's next backup version.
func (s *Store) CreateBackupVersion(ctx context.Context, userID, algorithm string, authData []byte) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, backupLock, userID); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data)
			SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3 FROM key_backup_versions WHERE user_id = $1 RETURNING version`,
			userID, algorithm, authData).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("create backup version: %w", err)
	}
	return v, nil
}

// BackupVersionInfo returns a backup version (0: the latest one) with its
// key count; ErrNoBackup when there is none or it was deleted.
func (s *Store) BackupVersionInfo(ctx context.Context, userID string, version int64) (BackupVersion, error) {
	var b BackupVersion
	var auth []byte
	err := s.db.QueryRow(ctx, `SELECT v.version, v.algorithm, v.auth_data, v.etag,
			(SELECT count(*) FROM key_backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version)
		FROM key_backup_versions v WHERE v.user_id = $1 AND NOT v.deleted AND ($2::bigint = 0 OR v.version = $2::bigint)
		ORDER BY v.version DESC LIMIT 1`, userID, version).Scan(&b.Version, &b.Algorithm, &auth, &b.Etag, &b.Count)
	if errors.Is(err, pgx.ErrNoRows) {
		return BackupVersion{}, ErrNoBackup
	}
	b.AuthData = auth
	return b, err
}

// ErrBackupAlgorithm is returned when an update names another algorithm
// than the version's.
var ErrBackupAlgorithm = errors.New("algorithm differs from the backup's")

// UpdateBackupAuthData replaces a version's auth_data; the algorithm must
// be the version's (ErrBackupAlgorithm). ErrNoBackup when the version does
// not exist (or was deleted).
func (s *Store) UpdateBackupAuthData(ctx context.Context, userID string, version int64, algorithm string, authData []byte) error {
	var stored string
	err := s.db.QueryRow(ctx, `UPDATE key_backup_versions SET auth_data = CASE WHEN algorithm = $3 THEN $4 ELSE auth_data END
		WHERE user_id = $1 AND version = $2 AND NOT deleted RETURNING algorithm`, userID, version, algorithm, authData).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNoBackup
	}
	if err != nil {
		return err
	}
	if stored != algorithm {
		return ErrBackupAlgorithm
	}
	return nil
}

// DeleteBackupVersion deletes a version and its keys; ErrNoBackup when it
// never existed (deleting a deleted version succeeds).
func (s *Store) DeleteBackupVersion(ctx context.Context, userID string, version int64) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, backupLock, userID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE key_backup_versions SET deleted = true WHERE user_id = $1 AND version = $2`, userID, version)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNoBackup
		}
		_, err = tx.Exec(ctx, `DELETE FROM key_backup_keys WHERE user_id = $1 AND version = $2`, userID, version)
		return err
	})
}

// ErrWrongBackupVersion is returned when keys are written to a version
// other than the latest one; Current is that one (0 when there is none).
type ErrWrongBackupVersion struct{ Current int64 }

func (e ErrWrongBackupVersion) Error() string { return "not the current backup version" }

// PutBackupKeys stores keys (room → session → key) in the user's latest
// version, which version must be, keeping for each session the better of
// the stored and the new key. It returns the version's etag and count.
func (s *Store) PutBackupKeys(ctx context.Context, userID string, version int64, keys map[string]map[string]BackupKey) (etag, count int64, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, backupLock, userID); err != nil {
			return err
		}
		var current int64
		err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM key_backup_versions WHERE user_id = $1 AND NOT deleted`, userID).Scan(&current)
		if err != nil {
			return err
		}
		if current != version {
			return ErrWrongBackupVersion{Current: current}
		}
		changed := false
		for room, sessions := range keys {
			for session, k := range sessions {
				var old BackupKey
				var data []byte
				err := tx.QueryRow(ctx, `SELECT first_message_index, forwarded_count, is_verified, session_data FROM key_backup_keys
					WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`, userID, version, room, session).
					Scan(&old.FirstMessageIndex, &old.ForwardedCount, &old.IsVerified, &data)
				found := err == nil
				if err != nil && !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
				if found && !k.Better(old) {
					continue
				}
				if _, err := tx.Exec(ctx, `INSERT INTO key_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
					ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET first_message_index = EXCLUDED.first_message_index,
						forwarded_count = EXCLUDED.forwarded_count, is_verified = EXCLUDED.is_verified, session_data = EXCLUDED.session_data`,
					userID, version, room, session, k.FirstMessageIndex, k.ForwardedCount, k.IsVerified, []byte(k.SessionData)); err != nil {
					return err
				}
				changed = true
			}
		}
		if changed {
			if _, err := tx.Exec(ctx, `UPDATE key_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2`, userID, version); err != nil {
				return err
			}
		}
		etag, count, err = versionTag(ctx, tx, userID, version)
		return err
	})
	return etag, count, err
}

// BackupKeys returns a version's keys, all or of one room ("" for all) or
// one session of it: room → session → key. ErrNoBackup when the version
// does not exist (or was deleted).
func (s *Store) BackupKeys(ctx context.Context, userID string, version int64, room, session string) (map[string]map[string]BackupKey, error) {
	var exists bool
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM key_backup_versions WHERE user_id = $1 AND version = $2 AND NOT deleted)`, userID, version).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, ErrNoBackup
	}
	rows, err := s.db.Query(ctx, `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM key_backup_keys
		WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)`, userID, version, room, session)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]map[string]BackupKey{}
	for rows.Next() {
		var rm, sess string
		var k BackupKey
		var data []byte
		if err := rows.Scan(&rm, &sess, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified, &data); err != nil {
			return nil, err
		}
		k.SessionData = data
		if out[rm] == nil {
			out[rm] = map[string]BackupKey{}
		}
		out[rm][sess] = k
	}
	return out, rows.Err()
}

// DeleteBackupKeys deletes a version's keys, all or of one room or one
// session, and returns its etag and count. ErrNoBackup when the version
// does not exist (or was deleted).
func (s *Store) DeleteBackupKeys(ctx context.Context, userID string, version int64, room, session string) (etag, count int64, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, backupLock, userID); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM key_backup_versions WHERE user_id = $1 AND version = $2 AND NOT deleted)`, userID, version).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return ErrNoBackup
		}
		tag, err := tx.Exec(ctx, `DELETE FROM key_backup_keys WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)`,
			userID, version, room, session)
		if err != nil {
			return err
		}
		if tag.RowsAffected() > 0 {
			if _, err := tx.Exec(ctx, `UPDATE key_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2`, userID, version); err != nil {
				return err
			}
		}
		etag, count, err = versionTag(ctx, tx, userID, version)
		return err
	})
	return etag, count, err
}

// versionTag returns a backup version's etag and key count.
func versionTag(ctx context.Context, tx pgx.Tx, userID string, version int64) (etag, count int64, err error) {
	err = tx.QueryRow(ctx, `SELECT v.etag, (SELECT count(*) FROM key_backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version)
		FROM key_backup_versions v WHERE v.user_id = $1 AND v.version = $2`, userID, version).Scan(&etag, &count)
	return etag, count, err
}
