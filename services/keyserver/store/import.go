package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Importing keys another store kept (the client-API's tables before the
// keys moved here). An import is one transaction and is done once per
// source (key_imports); rows that exist here already are left as they are
// (ON CONFLICT DO NOTHING), so nothing newer is overwritten.

// ImportedDevice is a device's identity keys and name.
type ImportedDevice struct {
	UserID, DeviceID, DisplayName string
	Keys                          []byte
}

// ImportedOneTimeKey is an unclaimed one-time key.
type ImportedOneTimeKey struct {
	UserID, DeviceID, Algorithm, KeyID string
	Key                                []byte
}

// ImportedFallbackKey is a device's fallback key for one algorithm.
type ImportedFallbackKey struct {
	UserID, DeviceID, Algorithm, KeyID string
	Key                                []byte
	Used                               bool
}

// ImportedCrossSigningKey is one of a user's cross-signing keys.
type ImportedCrossSigningKey struct {
	UserID, KeyType string
	Keys            []byte
}

// ImportedChange is a device list change: only its position and user are
// known.
type ImportedChange struct {
	Pos    int64
	UserID string
}

// ImportedBackupVersion is a backup version.
type ImportedBackupVersion struct {
	UserID    string
	Version   int64
	Algorithm string
	AuthData  []byte
	Etag      int64
	Deleted   bool
}

// ImportedBackupKey is one session's key in a backup version.
type ImportedBackupKey struct {
	UserID          string
	Version         int64
	RoomID, Session string
	Key             BackupKey
}

// Importer writes the rows of one import inside its transaction.
type Importer struct {
	tx     pgx.Tx
	rows   int64
	minPos int64
}

// Import runs fill inside one transaction that imports from source, then
// moves the device list position sequence above every imported position
// and min position (MinPosition), and records the import. If source was
// imported before, fill is not called and already is true.
func (s *Store) Import(ctx context.Context, source string, fill func(*Importer) error) (already bool, rows int64, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.keyserver.import'))`); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT true FROM key_imports WHERE source = $1`, source).Scan(&already)
		if err == nil || !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		im := &Importer{tx: tx}
		if err := fill(im); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, deviceListLock); err != nil {
			return err
		}
		// Positions handed out before the import stay below every new one,
		// so sync tokens that carry them stay valid.
		if _, err := tx.Exec(ctx, `SELECT setval('device_list_pos', GREATEST(
				(SELECT last_value FROM device_list_pos), $1::bigint, (SELECT COALESCE(MAX(pos), 0) FROM device_list_changes), 1))`,
			im.minPos); err != nil {
			return err
		}
		// Imported changes are never published; when nothing else waits,
		// the publisher's watermark skips them at once.
		if _, err := tx.Exec(ctx, `UPDATE key_changes_published SET published_up_to = (SELECT COALESCE(MAX(pos), 0) FROM device_list_changes)
			WHERE NOT EXISTS (SELECT 1 FROM device_list_changes c WHERE c.kind <> 'imported' AND c.pos > published_up_to)`); err != nil {
			return err
		}
		rows = im.rows
		_, err = tx.Exec(ctx, `INSERT INTO key_imports (source, rows) VALUES ($1, $2)`, source, im.rows)
		return err
	})
	return already, rows, err
}

// MinPosition raises the lowest position the sequence may continue from.
func (im *Importer) MinPosition(p int64) { im.minPos = max(im.minPos, p) }

func (im *Importer) exec(ctx context.Context, sql string, args ...any) error {
	tag, err := im.tx.Exec(ctx, sql, args...)
	im.rows += tag.RowsAffected()
	return err
}

// Devices imports device keys and names.
func (im *Importer) Devices(ctx context.Context, list []ImportedDevice) error {
	if len(list) == 0 {
		return nil
	}
	users, devices, names, keys := make([]string, len(list)), make([]string, len(list)), make([]string, len(list)), make([][]byte, len(list))
	for i, d := range list {
		users[i], devices[i], names[i], keys[i] = d.UserID, d.DeviceID, d.DisplayName, d.Keys
	}
	if _, err := im.tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING`, users, devices, names); err != nil {
		return err
	}
	return im.exec(ctx, `INSERT INTO device_keys (user_id, device_id, keys)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING`, users, devices, keys)
}

// OneTimeKeys imports one-time keys; they are claimed in the order given.
func (im *Importer) OneTimeKeys(ctx context.Context, list []ImportedOneTimeKey) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	users, devices, algs, ids, keys := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([][]byte, n)
	for i, k := range list {
		users[i], devices[i], algs[i], ids[i], keys[i] = k.UserID, k.DeviceID, k.Algorithm, k.KeyID, k.Key
	}
	return im.exec(ctx, `INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key)
		SELECT u, d, a, k, key FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY AS t(u, d, a, k, key, n)
		ORDER BY n ON CONFLICT DO NOTHING`, users, devices, algs, ids, keys)
}

// FallbackKeys imports fallback keys.
func (im *Importer) FallbackKeys(ctx context.Context, list []ImportedFallbackKey) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	users, devices, algs, ids, keys, used := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([][]byte, n), make([]bool, n)
	for i, k := range list {
		users[i], devices[i], algs[i], ids[i], keys[i], used[i] = k.UserID, k.DeviceID, k.Algorithm, k.KeyID, k.Key, k.Used
	}
	return im.exec(ctx, `INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key, used)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bool[]) ON CONFLICT DO NOTHING`,
		users, devices, algs, ids, keys, used)
}

// CrossSigningKeys imports cross-signing keys.
func (im *Importer) CrossSigningKeys(ctx context.Context, list []ImportedCrossSigningKey) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	users, types, keys := make([]string, n), make([]string, n), make([][]byte, n)
	for i, k := range list {
		users[i], types[i], keys[i] = k.UserID, k.KeyType, k.Keys
	}
	return im.exec(ctx, `INSERT INTO cross_signing_keys (user_id, key_type, keys)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING`, users, types, keys)
}

// Changes imports device list changes at their positions.
func (im *Importer) Changes(ctx context.Context, list []ImportedChange) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	pos, users := make([]int64, n), make([]string, n)
	for i, c := range list {
		pos[i], users[i] = c.Pos, c.UserID
		im.MinPosition(c.Pos)
	}
	return im.exec(ctx, `INSERT INTO device_list_changes (pos, user_id, kind)
		SELECT p, u, 'imported' FROM unnest($1::bigint[], $2::text[]) AS t(p, u) ON CONFLICT DO NOTHING`, pos, users)
}

// BackupVersions imports backup versions.
func (im *Importer) BackupVersions(ctx context.Context, list []ImportedBackupVersion) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	users, versions, algs, auth, etags, deleted := make([]string, n), make([]int64, n), make([]string, n), make([][]byte, n), make([]int64, n), make([]bool, n)
	for i, v := range list {
		users[i], versions[i], algs[i], auth[i], etags[i], deleted[i] = v.UserID, v.Version, v.Algorithm, v.AuthData, v.Etag, v.Deleted
	}
	return im.exec(ctx, `INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data, etag, deleted)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[], $6::bool[]) ON CONFLICT DO NOTHING`,
		users, versions, algs, auth, etags, deleted)
}

// BackupKeys imports backed-up session keys.
func (im *Importer) BackupKeys(ctx context.Context, list []ImportedBackupKey) error {
	if len(list) == 0 {
		return nil
	}
	n := len(list)
	users, versions, rooms, sessions := make([]string, n), make([]int64, n), make([]string, n), make([]string, n)
	fmi, fwd, verified, data := make([]int64, n), make([]int64, n), make([]bool, n), make([][]byte, n)
	for i, k := range list {
		users[i], versions[i], rooms[i], sessions[i] = k.UserID, k.Version, k.RoomID, k.Session
		fmi[i], fwd[i], verified[i], data[i] = k.Key.FirstMessageIndex, k.Key.ForwardedCount, k.Key.IsVerified, k.Key.SessionData
	}
	return im.exec(ctx, `INSERT INTO key_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[], $8::bytea[]) ON CONFLICT DO NOTHING`,
		users, versions, rooms, sessions, fmi, fwd, verified, data)
}
