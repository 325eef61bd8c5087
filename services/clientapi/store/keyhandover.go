package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// The end-to-end key tables of migrations 034 and 035 predate the move of
// the keys to the key-server. At start the client-API hands their rows to
// the key-server (ImportKeys) and drops them (internal/keys/handover.go).

// oldKeyTables are the tables handed over, dropped in this order (then the
// sequence device_list_pos).
var oldKeyTables = []string{"device_keys", "one_time_keys", "fallback_keys", "cross_signing_keys",
	"device_list_changes", "key_backup_keys", "key_backup_versions"}

// KeyExport is one batch of old key rows; any list may be empty.
type KeyExport struct {
	Devices          []ExportedDevice
	OneTimeKeys      []ExportedOneTimeKey
	FallbackKeys     []ExportedFallbackKey
	CrossSigningKeys []ExportedCrossSigningKey
	Changes          []ExportedChange
	BackupVersions   []ExportedBackupVersion
	BackupKeys       []ExportedBackupKey
	// MinPosition is the highest device list position ever handed out.
	MinPosition int64
}

// ExportedDevice is a device's identity keys, with its display name.
type ExportedDevice struct {
	UserID, DeviceID, DisplayName string
	Keys                          []byte
}

// ExportedOneTimeKey is an unclaimed one-time key (exported in upload
// order).
type ExportedOneTimeKey struct {
	UserID, DeviceID, Algorithm, KeyID string
	Key                                []byte
}

// ExportedFallbackKey is a fallback key.
type ExportedFallbackKey struct {
	UserID, DeviceID, Algorithm, KeyID string
	Key                                []byte
	Used                               bool
}

// ExportedCrossSigningKey is a cross-signing key.
type ExportedCrossSigningKey struct {
	UserID, KeyType string
	Keys            []byte
}

// ExportedChange is a device list change.
type ExportedChange struct {
	Pos    int64
	UserID string
}

// ExportedBackupVersion is a key backup version.
type ExportedBackupVersion struct {
	UserID    string
	Version   int64
	Algorithm string
	AuthData  []byte
	Etag      int64
	Deleted   bool
}

// ExportedBackupKey is a backed-up session key.
type ExportedBackupKey struct {
	UserID            string
	Version           int64
	RoomID, SessionID string
	FirstMessageIndex int64
	ForwardedCount    int64
	IsVerified        bool
	SessionData       []byte
}

// exportBatch is how many rows of a table go in one KeyExport.
const exportBatch = 500

// OldKeyTablesExist reports whether the old key tables are still there.
func (s *Store) OldKeyTablesExist(ctx context.Context) (bool, error) {
	var exists bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass('device_list_changes') IS NOT NULL OR to_regclass('key_backup_versions') IS NOT NULL`).Scan(&exists)
	return exists, err
}

// HandOverKeys hands the old key tables over and drops them, in one
// transaction under a lock (one replica at a time; a later one finds the
// tables gone and does nothing). When the tables hold rows, it passes
// them to send in batches, then calls commit, which must return only once
// the receiver has committed them; the tables are dropped only then. It
// reports whether it found the tables and how many rows it sent.
func (s *Store) HandOverKeys(ctx context.Context, send func(KeyExport) error, commit func() error) (found bool, rows int, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.key_handover'))`); err != nil {
			return err
		}
		var exists, any bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('device_list_changes') IS NOT NULL OR to_regclass('key_backup_versions') IS NOT NULL`).Scan(&exists); err != nil || !exists {
			return err
		}
		found = true
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM device_keys) OR EXISTS (SELECT 1 FROM one_time_keys) OR EXISTS (SELECT 1 FROM fallback_keys)
			OR EXISTS (SELECT 1 FROM cross_signing_keys) OR EXISTS (SELECT 1 FROM device_list_changes)
			OR EXISTS (SELECT 1 FROM key_backup_versions) OR EXISTS (SELECT 1 FROM key_backup_keys)`).Scan(&any); err != nil {
			return err
		}
		if any {
			n, err := exportKeys(ctx, tx, send)
			if err != nil {
				return err
			}
			rows = n
			if err := commit(); err != nil {
				return err
			}
		}
		for _, t := range oldKeyTables {
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+t); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DROP SEQUENCE IF EXISTS device_list_pos`)
		return err
	})
	return found, rows, err
}

// exportKeys sends every row of the old tables in batches.
func exportKeys(ctx context.Context, tx pgx.Tx, send func(KeyExport) error) (int, error) {
	var minPos int64
	if err := tx.QueryRow(ctx, `SELECT GREATEST(COALESCE((SELECT MAX(pos) FROM device_list_changes), 0),
		(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM device_list_pos))`).Scan(&minPos); err != nil {
		return 0, err
	}
	total := 0
	batch := KeyExport{MinPosition: minPos}
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		err := send(batch)
		total += n
		batch, n = KeyExport{MinPosition: minPos}, 0
		return err
	}
	// each reads one table and appends each row to the batch, sending it
	// when full.
	each := func(sql string, scan func(pgx.Rows) error) error {
		rows, err := tx.Query(ctx, sql)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
			if n++; n >= exportBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return rows.Err()
	}
	steps := []struct {
		sql  string
		scan func(pgx.Rows) error
	}{
		{`SELECT k.user_id, k.device_id, k.keys, COALESCE(d.display_name, '') FROM device_keys k
			LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id ORDER BY k.user_id, k.device_id`,
			func(r pgx.Rows) error {
				var d ExportedDevice
				err := r.Scan(&d.UserID, &d.DeviceID, &d.Keys, &d.DisplayName)
				batch.Devices = append(batch.Devices, d)
				return err
			}},
		{`SELECT user_id, device_id, algorithm, key_id, key FROM one_time_keys ORDER BY seq`,
			func(r pgx.Rows) error {
				var k ExportedOneTimeKey
				err := r.Scan(&k.UserID, &k.DeviceID, &k.Algorithm, &k.KeyID, &k.Key)
				batch.OneTimeKeys = append(batch.OneTimeKeys, k)
				return err
			}},
		{`SELECT user_id, device_id, algorithm, key_id, key, used FROM fallback_keys`,
			func(r pgx.Rows) error {
				var k ExportedFallbackKey
				err := r.Scan(&k.UserID, &k.DeviceID, &k.Algorithm, &k.KeyID, &k.Key, &k.Used)
				batch.FallbackKeys = append(batch.FallbackKeys, k)
				return err
			}},
		{`SELECT user_id, key_type, keys FROM cross_signing_keys`,
			func(r pgx.Rows) error {
				var k ExportedCrossSigningKey
				err := r.Scan(&k.UserID, &k.KeyType, &k.Keys)
				batch.CrossSigningKeys = append(batch.CrossSigningKeys, k)
				return err
			}},
		{`SELECT pos, user_id FROM device_list_changes ORDER BY pos`,
			func(r pgx.Rows) error {
				var c ExportedChange
				err := r.Scan(&c.Pos, &c.UserID)
				batch.Changes = append(batch.Changes, c)
				return err
			}},
		{`SELECT user_id, version, algorithm, auth_data, etag, deleted FROM key_backup_versions`,
			func(r pgx.Rows) error {
				var v ExportedBackupVersion
				err := r.Scan(&v.UserID, &v.Version, &v.Algorithm, &v.AuthData, &v.Etag, &v.Deleted)
				batch.BackupVersions = append(batch.BackupVersions, v)
				return err
			}},
		{`SELECT user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM key_backup_keys`,
			func(r pgx.Rows) error {
				var k ExportedBackupKey
				err := r.Scan(&k.UserID, &k.Version, &k.RoomID, &k.SessionID, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified, &k.SessionData)
				batch.BackupKeys = append(batch.BackupKeys, k)
				return err
			}},
	}
	for _, st := range steps {
		if err := each(st.sql, st.scan); err != nil {
			return total, err
		}
	}
	return total, flush()
}
