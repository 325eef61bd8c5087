package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Users' end-to-end encryption keys (migration 002). Every change to a
// user's device identity keys, a device's name (when it has keys), the
// user's cross-signing keys or their signatures, and every deletion of a
// device that had keys appends a device_list_changes row; its position is
// the sync token's "_k" component, and the row is what the publisher
// (../publish.go) sends on MYELIN_KEY_CHANGES.

// ErrKeyConflict is returned by UploadKeys when a one-time key ID is
// uploaded again with other content.
var ErrKeyConflict = errors.New("one-time key already uploaded with other content")

// Change kinds (device_list_changes.kind).
const (
	// KindDevice: a device's identity keys changed, or it was deleted.
	KindDevice = "device"
	// KindDeviceName: only a device's display name changed. Published
	// like a device change (federation's m.device_list_update carries the
	// name), but not reported to clients, whose device_lists name users
	// whose keys changed.
	KindDeviceName = "device_name"
	// KindSigningKeys: cross-signing keys or their signatures changed.
	KindSigningKeys = "signing_keys"
)

// clientVisible is the SQL condition on a device_list_changes row (alias
// c) for changes clients are told of.
const clientVisible = `c.kind <> 'device_name'`

// Cross-signing key types.
const (
	KeyMaster      = "master"
	KeySelfSigning = "self_signing"
	KeyUserSigning = "user_signing"
)

// deviceListLock serialises device list positions: a change takes it just
// before its nextval and holds it until COMMIT, so positions commit in
// order (a reader that saw position p has seen every change up to p).
// Callers take it after their other writes, so no transaction waits for a
// row while holding it.
const deviceListLock = `SELECT pg_advisory_xact_lock(hashtext('myelin.keyserver.device_list_pos'))`

// deviceChange is a device's state for its change row: keys nil (and
// deleted) when the device is gone; nameOnly when only its name changed.
type deviceChange struct {
	deviceID, name string
	keys           []byte
	deleted        bool
	nameOnly       bool
}

// logDeviceChanges appends one device change per entry, each naming the
// user's previous device change. Caller holds a transaction and calls it
// last.
func logDeviceChanges(ctx context.Context, tx pgx.Tx, userID string, changes ...deviceChange) error {
	if len(changes) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, deviceListLock); err != nil {
		return err
	}
	for _, c := range changes {
		kind := KindDevice
		if c.nameOnly {
			kind = KindDeviceName
		}
		if _, err := tx.Exec(ctx, `INSERT INTO device_list_changes (user_id, kind, device_id, display_name, deleted, device_keys, prev_pos)
			SELECT $1, $6, $2, $3, $4, $5, (SELECT max(pos) FROM device_list_changes WHERE user_id = $1 AND kind IN ('device', 'device_name'))`,
			userID, c.deviceID, c.name, c.deleted, c.keys, kind); err != nil {
			return err
		}
	}
	return nil
}

// logSigningKeysChange appends a 'signing_keys' change with the user's
// current master and self-signing keys. Caller holds a transaction and
// calls it last.
func logSigningKeysChange(ctx context.Context, tx pgx.Tx, userID string) error {
	if _, err := tx.Exec(ctx, deviceListLock); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO device_list_changes (user_id, kind, master_key, self_signing_key)
		SELECT $1, 'signing_keys',
			(SELECT keys FROM cross_signing_keys WHERE user_id = $1 AND key_type = 'master'),
			(SELECT keys FROM cross_signing_keys WHERE user_id = $1 AND key_type = 'self_signing')`, userID)
	return err
}

// KeyUpload is what one device uploads. Key maps are "algorithm:key_id" →
// the key as the client sent it.
type KeyUpload struct {
	UserID, DeviceID string
	// DisplayName is recorded with the device keys when the key-server
	// has no name for the device yet.
	DisplayName  string
	DeviceKeys   []byte // nil: unchanged
	OneTimeKeys  map[string]json.RawMessage
	FallbackKeys map[string]json.RawMessage
}

// UploadKeys stores a device's keys and returns its unclaimed one-time key
// counts per algorithm, and whether its identity keys changed.
func (s *Store) UploadKeys(ctx context.Context, up KeyUpload) (counts map[string]int64, changed bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var name string
		var keys []byte
		if up.DeviceKeys != nil {
			// The name the key-server knows (DeviceRenamed), else the one
			// the caller read.
			if err := tx.QueryRow(ctx, `INSERT INTO devices (user_id, device_id, display_name) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = devices.display_name RETURNING display_name`,
				up.UserID, up.DeviceID, up.DisplayName).Scan(&name); err != nil {
				return err
			}
			var old []byte
			err := tx.QueryRow(ctx, `SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2 FOR UPDATE`, up.UserID, up.DeviceID).Scan(&old)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			keys = up.DeviceKeys
			if old != nil && SameKeyObject(old, keys) {
				// The same keys again: the signatures others added
				// (cross-signing) stay.
				merged, err := mergeSignatures(keys, signaturesOf(old))
				if err != nil {
					return err
				}
				keys = merged
			}
			if !JSONEqual(old, keys) {
				changed = true
				if _, err := tx.Exec(ctx, `INSERT INTO device_keys (user_id, device_id, keys) VALUES ($1, $2, $3)
					ON CONFLICT (user_id, device_id) DO UPDATE SET keys = EXCLUDED.keys`, up.UserID, up.DeviceID, keys); err != nil {
					return err
				}
			}
		}
		for _, id := range slices.Sorted(maps.Keys(up.OneTimeKeys)) {
			key := up.OneTimeKeys[id]
			algorithm, keyID, _ := strings.Cut(id, ":")
			var existing []byte
			err := tx.QueryRow(ctx, `INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (user_id, device_id, algorithm, key_id) DO UPDATE SET key = one_time_keys.key
				RETURNING key`, up.UserID, up.DeviceID, algorithm, keyID, []byte(key)).Scan(&existing)
			if err != nil {
				return err
			}
			if !JSONEqual(existing, key) {
				return fmt.Errorf("%w: %s", ErrKeyConflict, id)
			}
		}
		for id, key := range up.FallbackKeys {
			algorithm, keyID, _ := strings.Cut(id, ":")
			if _, err := tx.Exec(ctx, `INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = EXCLUDED.key_id, key = EXCLUDED.key, used = false
				WHERE fallback_keys.key_id <> EXCLUDED.key_id OR fallback_keys.key <> EXCLUDED.key`,
				up.UserID, up.DeviceID, algorithm, keyID, []byte(key)); err != nil {
				return err
			}
		}
		var err error
		if counts, err = oneTimeKeyCounts(ctx, tx, up.UserID, up.DeviceID); err != nil {
			return err
		}
		if changed {
			return logDeviceChanges(ctx, tx, up.UserID, deviceChange{deviceID: up.DeviceID, name: name, keys: keys})
		}
		return nil
	})
	return counts, changed, err
}

// SameKeyObject compares two key objects without their signatures and
// unsigned data.
func SameKeyObject(a, b []byte) bool {
	strip := func(raw []byte) []byte {
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return nil
		}
		delete(obj, "signatures")
		delete(obj, "unsigned")
		out, _ := json.Marshal(obj)
		return out
	}
	sa, sb := strip(a), strip(b)
	return sa != nil && sb != nil && JSONEqual(sa, sb)
}

// signaturesOf returns a key object's signatures.
func signaturesOf(raw []byte) map[string]map[string]string {
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	_ = json.Unmarshal(raw, &obj)
	return obj.Signatures
}

// JSONEqual compares two JSON values by meaning (key order and spacing
// aside).
func JSONEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return bytes.Equal(a, b)
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}

// oneTimeKeyCountsSQL counts a device's unclaimed one-time keys per
// algorithm ($1 user, $2 device).
const oneTimeKeyCountsSQL = `SELECT algorithm, count(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`

func oneTimeKeyCounts(ctx context.Context, tx pgx.Tx, userID, deviceID string) (map[string]int64, error) {
	rows, err := tx.Query(ctx, oneTimeKeyCountsSQL, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int64{}
	return counts, scanKeyCounts(rows, counts)
}

// scanKeyCounts reads oneTimeKeyCountsSQL's rows into counts.
func scanKeyCounts(rows pgx.Rows, counts map[string]int64) error {
	for rows.Next() {
		var a string
		var n int64
		if err := rows.Scan(&a, &n); err != nil {
			return err
		}
		counts[a] = n
	}
	return rows.Err()
}

// SyncKeyState is what /sync reports of a device's keys and the device
// list.
type SyncKeyState struct {
	Counts         map[string]int64
	UnusedFallback []string
	// Position is the latest device list position.
	Position int64
	// Changed are the users changed after the caller's position (when
	// asked for).
	Changed []string
}

// latestPositionSQL is the latest committed device list position. Rows are
// never deleted, so it is the highest position a reader may have seen.
const latestPositionSQL = `SELECT COALESCE(MAX(pos), 0) FROM device_list_changes`

// SyncKeys reads, in one round trip, the device's one-time key counts and
// unused fallback algorithms, the latest device list position, and
// (withChanges) the users whose device lists changed after `after` up to
// it (renames left out).
func (s *Store) SyncKeys(ctx context.Context, userID, deviceID string, after int64, withChanges bool) (SyncKeyState, error) {
	st := SyncKeyState{Counts: map[string]int64{}, UnusedFallback: []string{}}
	b := &pgx.Batch{}
	b.Queue(oneTimeKeyCountsSQL, userID, deviceID).Query(func(rows pgx.Rows) error { return scanKeyCounts(rows, st.Counts) })
	b.Queue(`SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`, userID, deviceID).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var a string
				if err := rows.Scan(&a); err != nil {
					return err
				}
				st.UnusedFallback = append(st.UnusedFallback, a)
			}
			return rows.Err()
		})
	if withChanges {
		b.Queue(`WITH m AS (SELECT COALESCE(MAX(pos), 0) AS p FROM device_list_changes)
			SELECT m.p, COALESCE(array_agg(DISTINCT c.user_id) FILTER (WHERE c.user_id IS NOT NULL), '{}')
			FROM m LEFT JOIN device_list_changes c ON c.pos > $1 AND c.pos <= m.p AND `+clientVisible+` GROUP BY m.p`, after).
			QueryRow(func(row pgx.Row) error { return row.Scan(&st.Position, &st.Changed) })
	} else { // an initial sync needs the position only
		b.Queue(latestPositionSQL).QueryRow(func(row pgx.Row) error { return row.Scan(&st.Position) })
	}
	if err := s.db.SendBatch(ctx, b).Close(); err != nil {
		return SyncKeyState{}, err
	}
	return st, nil
}

// KeyChangesBetween returns the users whose device lists changed after
// `after` up to `upto` (renames left out).
func (s *Store) KeyChangesBetween(ctx context.Context, after, upto int64) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT c.user_id FROM device_list_changes c WHERE c.pos > $1 AND c.pos <= $2 AND `+clientVisible+`
		ORDER BY c.user_id`, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// QueriedDevice is one device's stored keys and name.
type QueriedDevice struct {
	Keys        []byte
	DisplayName string
}

// QueryDeviceKeys returns the device keys of the given users' devices
// (all of a user's devices when their list is empty): user → device →
// keys. Every asked user is in the answer.
func (s *Store) QueryDeviceKeys(ctx context.Context, want map[string][]string) (map[string]map[string]QueriedDevice, error) {
	out := map[string]map[string]QueriedDevice{}
	users := slices.Sorted(maps.Keys(want))
	if len(users) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	for _, user := range users {
		devices := want[user]
		m := map[string]QueriedDevice{}
		out[user] = m
		b.Queue(`SELECT k.device_id, k.keys, COALESCE(d.display_name, '') FROM device_keys k
			LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
			WHERE k.user_id = $1 AND (cardinality($2::text[]) = 0 OR k.device_id = ANY($2))`, user, nonNil(devices)).
			Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var id string
					var qd QueriedDevice
					if err := rows.Scan(&id, &qd.Keys, &qd.DisplayName); err != nil {
						return err
					}
					m[id] = qd
				}
				return rows.Err()
			})
	}
	if err := s.db.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return out, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// CrossSigningKeys returns the users' cross-signing keys: user → key type
// (master, self_signing, user_signing) → keys.
func (s *Store) CrossSigningKeys(ctx context.Context, users []string) (map[string]map[string][]byte, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, key_type, keys FROM cross_signing_keys WHERE user_id = ANY($1)`, users)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]map[string][]byte{}
	for rows.Next() {
		var u, t string
		var k []byte
		if err := rows.Scan(&u, &t, &k); err != nil {
			return nil, err
		}
		if out[u] == nil {
			out[u] = map[string][]byte{}
		}
		out[u][t] = k
	}
	return out, rows.Err()
}

// PutCrossSigningKeys stores a user's cross-signing keys (key type →
// keys) if check, called with the stored ones under the user's lock,
// returns true; a change is logged when any key differs. It returns
// check's verdict.
func (s *Store) PutCrossSigningKeys(ctx context.Context, userID string, keys map[string][]byte, check func(stored map[string][]byte) (bool, error)) (bool, error) {
	store := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.keyserver.cross_signing'), hashtext($1))`, userID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT key_type, keys FROM cross_signing_keys WHERE user_id = $1`, userID)
		if err != nil {
			return err
		}
		stored := map[string][]byte{}
		for rows.Next() {
			var t string
			var k []byte
			if err := rows.Scan(&t, &k); err != nil {
				rows.Close()
				return err
			}
			stored[t] = k
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if store, err = check(stored); err != nil || !store {
			return err
		}
		changed := false
		for _, typ := range slices.Sorted(maps.Keys(keys)) {
			tag, err := tx.Exec(ctx, `INSERT INTO cross_signing_keys (user_id, key_type, keys) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET keys = EXCLUDED.keys WHERE cross_signing_keys.keys <> EXCLUDED.keys`, userID, typ, keys[typ])
			if err != nil {
				return err
			}
			changed = changed || tag.RowsAffected() > 0
		}
		if changed {
			return logSigningKeysChange(ctx, tx, userID)
		}
		return nil
	})
	return store, err
}

// AddSignatures merges signatures (signer → key ID → signature) into a
// stored key: a device's keys (keyID is the device ID) or a cross-signing
// key (keyID is its public key, matched against the stored key's keys).
// It reports whether it found the key.
func (s *Store) AddSignatures(ctx context.Context, userID, keyID string, sigs map[string]map[string]string) (bool, error) {
	found := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var stored []byte
		device := true
		update := `UPDATE device_keys SET keys = $3 WHERE user_id = $1 AND device_id = $2`
		target := keyID
		err := tx.QueryRow(ctx, `SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2 FOR UPDATE`, userID, keyID).Scan(&stored)
		if errors.Is(err, pgx.ErrNoRows) {
			device = false
			update = `UPDATE cross_signing_keys SET keys = $3 WHERE user_id = $1 AND key_type = $2`
			err = tx.QueryRow(ctx, `SELECT key_type, keys FROM cross_signing_keys WHERE user_id = $1
				AND EXISTS (SELECT 1 FROM jsonb_each_text(convert_from(keys, 'UTF8')::jsonb -> 'keys') k WHERE k.value = $2) FOR UPDATE`,
				userID, keyID).Scan(&target, &stored)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		merged, err := mergeSignatures(stored, sigs)
		if err != nil || bytes.Equal(merged, stored) {
			return err
		}
		if _, err := tx.Exec(ctx, update, userID, target, merged); err != nil {
			return err
		}
		if !device {
			return logSigningKeysChange(ctx, tx, userID)
		}
		var name string
		err = tx.QueryRow(ctx, `SELECT display_name FROM devices WHERE user_id = $1 AND device_id = $2`, userID, keyID).Scan(&name)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		return logDeviceChanges(ctx, tx, userID, deviceChange{deviceID: keyID, name: name, keys: merged})
	})
	return found, err
}

// mergeSignatures adds sigs to a key object's "signatures".
func mergeSignatures(stored []byte, sigs map[string]map[string]string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(stored, &obj); err != nil {
		return nil, err
	}
	all := map[string]map[string]string{}
	if raw, ok := obj["signatures"]; ok {
		if err := json.Unmarshal(raw, &all); err != nil {
			return nil, err
		}
	}
	changed := false
	for signer, byKey := range sigs {
		if all[signer] == nil {
			all[signer] = map[string]string{}
		}
		for k, sig := range byKey {
			if all[signer][k] != sig {
				all[signer][k], changed = sig, true
			}
		}
	}
	if !changed {
		return stored, nil
	}
	raw, err := json.Marshal(all)
	if err != nil {
		return nil, err
	}
	obj["signatures"] = raw
	return json.Marshal(obj)
}

// ClaimRequest asks for one key of a device.
type ClaimRequest struct {
	UserID, DeviceID, Algorithm string
}

// ClaimedKey is a key handed out by ClaimKeys.
type ClaimedKey struct {
	UserID, DeviceID string
	// KeyID is "algorithm:key_id".
	KeyID string
	Key   []byte
}

// ClaimKeys claims one key per (user, device, algorithm): the oldest
// unclaimed one-time key, else the fallback key (which stays, marked
// used).
func (s *Store) ClaimKeys(ctx context.Context, want []ClaimRequest) ([]ClaimedKey, error) {
	// In a fixed order, so that concurrent claims lock fallback keys in
	// the same order and cannot deadlock.
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b ClaimRequest) int {
		return cmpStrings(a.UserID, b.UserID, a.DeviceID, b.DeviceID, a.Algorithm, b.Algorithm)
	})
	var out []ClaimedKey
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		out = out[:0]
		for _, w := range want {
			var keyID string
			var key []byte
			err := tx.QueryRow(ctx, `DELETE FROM one_time_keys WHERE (user_id, device_id, algorithm, key_id) = (
					SELECT user_id, device_id, algorithm, key_id FROM one_time_keys
					WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
				RETURNING key_id, key`, w.UserID, w.DeviceID, w.Algorithm).Scan(&keyID, &key)
			if errors.Is(err, pgx.ErrNoRows) {
				err = tx.QueryRow(ctx, `UPDATE fallback_keys SET used = true WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
					RETURNING key_id, key`, w.UserID, w.DeviceID, w.Algorithm).Scan(&keyID, &key)
			}
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, ClaimedKey{UserID: w.UserID, DeviceID: w.DeviceID, KeyID: w.Algorithm + ":" + keyID, Key: key})
		}
		return nil
	})
	return out, err
}

// cmpStrings compares pairs of strings in order: a1 with b1, then a2
// with b2, and so on.
func cmpStrings(pairs ...string) int {
	for i := 0; i+1 < len(pairs); i += 2 {
		if c := strings.Compare(pairs[i], pairs[i+1]); c != 0 {
			return c
		}
	}
	return 0
}

// DeleteDevices drops the keys and names of a user's devices and logs a
// 'device' change (deleted) for each that had identity keys. It reports
// whether any had.
func (s *Store) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) (bool, error) {
	changed := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		names := map[string]string{}
		rows, err := tx.Query(ctx, `DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2) RETURNING device_id, display_name`, userID, deviceIDs)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id, name string
			if err := rows.Scan(&id, &name); err != nil {
				rows.Close()
				return err
			}
			names[id] = name
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `DELETE FROM device_keys WHERE user_id = $1 AND device_id = ANY($2) RETURNING device_id`, userID, deviceIDs)
		if err != nil {
			return err
		}
		withKeys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, t := range []string{"one_time_keys", "fallback_keys"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+t+` WHERE user_id = $1 AND device_id = ANY($2)`, userID, deviceIDs); err != nil {
				return err
			}
		}
		slices.Sort(withKeys)
		var changes []deviceChange
		for _, id := range withKeys {
			changes = append(changes, deviceChange{deviceID: id, name: names[id], deleted: true})
		}
		changed = len(changes) > 0
		return logDeviceChanges(ctx, tx, userID, changes...)
	})
	return changed, err
}

// RenameDevice records a device's display name and, when the name changed
// and the device has identity keys, logs a 'device_name' change.
func (s *Store) RenameDevice(ctx context.Context, userID, deviceID, name string) (bool, error) {
	changed := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = EXCLUDED.display_name
			WHERE devices.display_name <> EXCLUDED.display_name`, userID, deviceID, name)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		var keys []byte
		err = tx.QueryRow(ctx, `SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&keys)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		changed = true
		return logDeviceChanges(ctx, tx, userID, deviceChange{deviceID: deviceID, name: name, keys: keys, nameOnly: true})
	})
	return changed, err
}

// StoredKey returns a user's stored key object named by keyID: a device's
// keys (keyID is the device ID) or a cross-signing key (keyID is its
// public key); nil when there is none.
func (s *Store) StoredKey(ctx context.Context, userID, keyID string) ([]byte, error) {
	var raw []byte
	err := s.db.QueryRow(ctx, `SELECT keys FROM (
			SELECT 0 AS o, keys FROM device_keys WHERE user_id = $1 AND device_id = $2
			UNION ALL
			SELECT 1, keys FROM cross_signing_keys WHERE user_id = $1
				AND EXISTS (SELECT 1 FROM jsonb_each_text(convert_from(keys, 'UTF8')::jsonb -> 'keys') k WHERE k.value = $2)) x
		ORDER BY o
		LIMIT 1`, userID, keyID).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return raw, err
}
