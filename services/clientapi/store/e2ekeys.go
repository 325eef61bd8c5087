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

// End-to-end encryption keys of local devices (migration 034). Every change
// to a user's device identity or cross-signing keys, and every deletion of
// a device that had keys, appends a device_list_changes row for the user;
// /sync and /keys/changes report those users to the users sharing a room.

// ErrKeyConflict is returned by UploadKeys when a one-time key ID is
// uploaded again with other content.
var ErrKeyConflict = errors.New("one-time key already uploaded with other content")

// KeyUpload is what POST /keys/upload sends for one device. Key maps are
// "algorithm:key_id" → the key object as the client sent it.
type KeyUpload struct {
	UserID, DeviceID string
	DeviceKeys       []byte // nil: unchanged
	OneTimeKeys      map[string]json.RawMessage
	FallbackKeys     map[string]json.RawMessage
}

// UploadKeys stores a device's keys and returns its unclaimed one-time key
// counts per algorithm, and whether its identity keys changed.
func (s *Store) UploadKeys(ctx context.Context, up KeyUpload) (counts map[string]int, changed bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if up.DeviceKeys != nil {
			var old []byte
			err := tx.QueryRow(ctx, `SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2 FOR UPDATE`, up.UserID, up.DeviceID).Scan(&old)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			keys := up.DeviceKeys
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
		for id, key := range up.OneTimeKeys {
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
			return logDeviceListChange(ctx, tx, up.UserID)
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

// logDeviceListChange appends a device list change for userID. Positions
// must commit in order (a /sync that saw position p must have seen every
// change up to p), so the position is taken under a lock held until the
// caller's transaction commits; callers take it last in the transaction.
func logDeviceListChange(ctx context.Context, tx pgx.Tx, userID string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.device_list_pos'))`); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO device_list_changes (user_id) VALUES ($1)`, userID)
	return err
}

// oneTimeKeyCountsSQL counts a device's unclaimed one-time keys per
// algorithm ($1 user, $2 device).
const oneTimeKeyCountsSQL = `SELECT algorithm, count(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`

func oneTimeKeyCounts(ctx context.Context, q querier, userID, deviceID string) (map[string]int, error) {
	rows, err := q.Query(ctx, oneTimeKeyCountsSQL, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	return counts, scanKeyCounts(rows, counts)
}

// scanKeyCounts reads oneTimeKeyCountsSQL's rows into counts.
func scanKeyCounts(rows pgx.Rows, counts map[string]int) error {
	for rows.Next() {
		var a string
		var n int
		if err := rows.Scan(&a, &n); err != nil {
			return err
		}
		counts[a] = n
	}
	return rows.Err()
}

// OneTimeKeyState is what /sync reports of a device's keys.
type OneTimeKeyState struct {
	Counts         map[string]int
	UnusedFallback []string
}

// SyncKeyState reads, in one round trip, what a /sync reports of keys:
// the device's one-time key counts and unused fallback algorithms, the
// latest device list position, and (withChanges) the users whose device
// lists changed after `after` up to it.
func (r Reader) SyncKeyState(ctx context.Context, userID, deviceID string, after int64, withChanges bool) (OneTimeKeyState, int64, []string, error) {
	st := OneTimeKeyState{Counts: map[string]int{}, UnusedFallback: []string{}}
	var pos int64
	var users []string
	b := &Batch{}
	b.b.Queue(oneTimeKeyCountsSQL, userID, deviceID).Query(func(rows pgx.Rows) error { return scanKeyCounts(rows, st.Counts) })
	b.b.Queue(`SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`, userID, deviceID).
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
		b.b.Queue(deviceListChangesSQL, after).QueryRow(func(row pgx.Row) error { return row.Scan(&pos, &users) })
	} else { // an initial sync needs the position only
		b.b.Queue(`SELECT COALESCE(MAX(pos), 0) FROM device_list_changes`).QueryRow(func(row pgx.Row) error { return row.Scan(&pos) })
	}
	if err := r.Send(ctx, b); err != nil {
		return OneTimeKeyState{}, 0, nil, err
	}
	return st, pos, users, nil
}

// QueriedDevice is one device in a /keys/query answer.
type QueriedDevice struct {
	Keys        []byte
	DisplayName string
}

// QueryDeviceKeys returns the device keys of the given users' devices
// (all of a user's devices when their list is empty): user → device →
// keys.
func (r Reader) QueryDeviceKeys(ctx context.Context, want map[string][]string) (map[string]map[string]QueriedDevice, error) {
	out := map[string]map[string]QueriedDevice{}
	for user, devices := range want {
		rows, err := r.q.Query(ctx, `SELECT k.device_id, k.keys, COALESCE(d.display_name, '') FROM device_keys k
			LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
			WHERE k.user_id = $1 AND ($2::text[] IS NULL OR cardinality($2::text[]) = 0 OR k.device_id = ANY($2))`, user, devices)
		if err != nil {
			return nil, err
		}
		m := map[string]QueriedDevice{}
		for rows.Next() {
			var id string
			var qd QueriedDevice
			if err := rows.Scan(&id, &qd.Keys, &qd.DisplayName); err != nil {
				rows.Close()
				return nil, err
			}
			m[id] = qd
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		out[user] = m
	}
	return out, nil
}

// CrossSigningKeys returns the users' cross-signing keys: user → key type
// (master, self_signing, user_signing) → keys.
func (r Reader) CrossSigningKeys(ctx context.Context, users []string) (map[string]map[string][]byte, error) {
	rows, err := r.q.Query(ctx, `SELECT user_id, key_type, keys FROM cross_signing_keys WHERE user_id = ANY($1)`, users)
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
// keys) and logs a device list change when any differs.
func (s *Store) PutCrossSigningKeys(ctx context.Context, userID string, keys map[string][]byte) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		changed := false
		for typ, k := range keys {
			tag, err := tx.Exec(ctx, `INSERT INTO cross_signing_keys (user_id, key_type, keys) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET keys = EXCLUDED.keys WHERE cross_signing_keys.keys <> EXCLUDED.keys`, userID, typ, k)
			if err != nil {
				return err
			}
			changed = changed || tag.RowsAffected() > 0
		}
		if changed {
			return logDeviceListChange(ctx, tx, userID)
		}
		return nil
	})
}

// AddSignatures merges signatures (signer → key ID → signature) into a
// stored key: a device's keys (keyID is the device ID) or a cross-signing
// key (keyID is its public key, matched against the stored key's keys).
// It reports whether it found the key.
func (s *Store) AddSignatures(ctx context.Context, userID, keyID string, sigs map[string]map[string]string) (bool, error) {
	found := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var stored []byte
		update := `UPDATE device_keys SET keys = $3 WHERE user_id = $1 AND device_id = $2`
		target := keyID
		err := tx.QueryRow(ctx, `SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2 FOR UPDATE`, userID, keyID).Scan(&stored)
		if errors.Is(err, pgx.ErrNoRows) {
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
		return logDeviceListChange(ctx, tx, userID)
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

// ClaimKeys claims one key per (user, device, algorithm): the oldest
// unclaimed one-time key, else the fallback key (which stays, marked
// used). Result: user → device → "algorithm:key_id" → key.
func (s *Store) ClaimKeys(ctx context.Context, want map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error) {
	out := map[string]map[string]map[string]json.RawMessage{}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// In a fixed order, so that concurrent claims lock fallback keys
		// in the same order and cannot deadlock.
		for _, user := range slices.Sorted(maps.Keys(want)) {
			devices := want[user]
			for _, device := range slices.Sorted(maps.Keys(devices)) {
				algorithm := devices[device]
				var keyID string
				var key []byte
				err := tx.QueryRow(ctx, `DELETE FROM one_time_keys WHERE (user_id, device_id, algorithm, key_id) = (
						SELECT user_id, device_id, algorithm, key_id FROM one_time_keys
						WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
					RETURNING key_id, key`, user, device, algorithm).Scan(&keyID, &key)
				if errors.Is(err, pgx.ErrNoRows) {
					err = tx.QueryRow(ctx, `UPDATE fallback_keys SET used = true WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
						RETURNING key_id, key`, user, device, algorithm).Scan(&keyID, &key)
				}
				if errors.Is(err, pgx.ErrNoRows) {
					continue
				}
				if err != nil {
					return err
				}
				if out[user] == nil {
					out[user] = map[string]map[string]json.RawMessage{}
				}
				out[user][device] = map[string]json.RawMessage{algorithm + ":" + keyID: key}
			}
		}
		return nil
	})
	return out, err
}

// deviceListChangesSQL reads the latest device list position and the users
// changed after $1 up to it.
const deviceListChangesSQL = `WITH m AS (SELECT COALESCE(MAX(pos), 0) AS p FROM device_list_changes)
	SELECT m.p, COALESCE(array_agg(DISTINCT c.user_id) FILTER (WHERE c.user_id IS NOT NULL), '{}')
	FROM m LEFT JOIN device_list_changes c ON c.pos > $1 AND c.pos <= m.p GROUP BY m.p`

// DeviceListChangesBetween returns the users whose device lists changed
// after `after` up to `upto`.
func (r Reader) DeviceListChangesBetween(ctx context.Context, after, upto int64) ([]string, error) {
	rows, err := r.q.Query(ctx, `SELECT DISTINCT user_id FROM device_list_changes WHERE pos > $1 AND pos <= $2`, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// deleteDeviceKeys deletes the keys of the given devices of a user, or with
// allBut set of every device but that one (none: ""), and logs a device
// list change when any had identity keys. Caller holds a transaction.
func deleteDeviceKeys(ctx context.Context, tx pgx.Tx, userID string, deviceIDs []string, allBut *string) error {
	cond := `user_id = $1 AND device_id = ANY($2)`
	arg := any(deviceIDs)
	if allBut != nil {
		cond, arg = `user_id = $1 AND device_id <> $2`, *allBut
	}
	tag, err := tx.Exec(ctx, `DELETE FROM device_keys WHERE `+cond, userID, arg)
	if err != nil {
		return err
	}
	for _, t := range []string{"one_time_keys", "fallback_keys"} {
		if _, err := tx.Exec(ctx, `DELETE FROM `+t+` WHERE `+cond, userID, arg); err != nil {
			return err
		}
	}
	if tag.RowsAffected() > 0 {
		return logDeviceListChange(ctx, tx, userID)
	}
	return nil
}

// LeftSharedRooms returns the users who left (or were banned from) one of
// userID's rooms after `after` up to `upto`, and the members of the rooms
// userID left in that range: candidates for /keys/changes' "left" (the
// caller keeps those who share no room with userID now).
func (r Reader) LeftSharedRooms(ctx context.Context, userID string, after, upto int64) ([]string, error) {
	rows, err := r.q.Query(ctx, `SELECT DISTINCT m.user_id FROM memberships mine
		JOIN memberships m ON m.room_id = mine.room_id
		WHERE mine.user_id = $1 AND (
			(m.membership IN ('leave', 'ban') AND m.pos > $2 AND m.pos <= $3) OR
			(mine.membership IN ('leave', 'ban') AND mine.pos > $2 AND mine.pos <= $3 AND m.membership = 'join'))`,
		userID, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
