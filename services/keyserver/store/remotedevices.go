package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Device lists of other servers' users (migration 011). They have no
// device list positions and are never published: this server only
// mirrors what their servers announce.

// recentStreamIDs is how many applied update stream IDs a list remembers
// for the prev_id check.
const recentStreamIDs = 20

// ListedDevice is one device of a device list.
type ListedDevice struct {
	DeviceID    string
	DisplayName string
	// Keys is the identity keys object; nil when the device has none.
	Keys []byte
}

// RemoteDeviceUpdate is one m.device_list_update.
type RemoteDeviceUpdate struct {
	UserID, DeviceID, DisplayName string
	StreamID                      int64
	PrevIDs                       []int64
	Deleted                       bool
	Keys                          []byte
}

// DeviceList is a user's whole device list.
type DeviceList struct {
	UserID         string
	StreamID       int64
	Stale          bool
	Devices        []ListedDevice
	MasterKey      []byte
	SelfSigningKey []byte
}

// lockRemoteList locks the user's list row, creating it (stale, as
// nothing is known yet) when absent; held says whether it existed.
func lockRemoteList(ctx context.Context, tx pgx.Tx, userID string) (streamID int64, recent []int64, stale, held bool, err error) {
	tag, err := tx.Exec(ctx, `INSERT INTO remote_device_lists (user_id, stale) VALUES ($1, true) ON CONFLICT (user_id) DO NOTHING`, userID)
	if err != nil {
		return 0, nil, false, false, err
	}
	held = tag.RowsAffected() == 0
	err = tx.QueryRow(ctx, `SELECT stream_id, recent_stream_ids, stale FROM remote_device_lists WHERE user_id = $1 FOR UPDATE`, userID).
		Scan(&streamID, &recent, &stale)
	return streamID, recent, stale, held, err
}

// ApplyRemoteDeviceUpdate records an update. An update seen before (its
// stream ID among the recent ones) or older than a list that is not stale
// changes nothing (duplicate). The list becomes stale when it was not
// held before (only this device is known) or a prev_id was not seen.
func (s *Store) ApplyRemoteDeviceUpdate(ctx context.Context, up RemoteDeviceUpdate) (duplicate, stale bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		streamID, recent, wasStale, held, err := lockRemoteList(ctx, tx, up.UserID)
		if err != nil {
			return err
		}
		if held && (slices.Contains(recent, up.StreamID) || (!wasStale && up.StreamID <= streamID)) {
			// Seen, or older than the list held (which a later update
			// or a resync made).
			duplicate, stale = true, wasStale
			return nil
		}
		gap := !held
		for _, p := range up.PrevIDs {
			if !slices.Contains(recent, p) && p != streamID {
				gap = true
			}
		}
		if up.Deleted {
			_, err = tx.Exec(ctx, `DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2`, up.UserID, up.DeviceID)
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO remote_devices (user_id, device_id, display_name, keys) VALUES ($1, $2, $3, $4)
				ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = EXCLUDED.display_name,
					keys = COALESCE(EXCLUDED.keys, remote_devices.keys)`,
				up.UserID, up.DeviceID, up.DisplayName, nilIfEmpty(up.Keys))
		}
		if err != nil {
			return err
		}
		recent = append(recent, up.StreamID)
		if len(recent) > recentStreamIDs {
			recent = recent[len(recent)-recentStreamIDs:]
		}
		stale = wasStale || gap
		_, err = tx.Exec(ctx, `UPDATE remote_device_lists SET stream_id = GREATEST(stream_id, $2), recent_stream_ids = $3,
			stale = $4, updated_at = now() WHERE user_id = $1`, up.UserID, up.StreamID, recent, stale)
		if err != nil {
			return err
		}
		// The change log (device_list_changes) gets the remote user's
		// change too, so /sync's device_lists.changed and /keys/changes
		// name them to the local users sharing a room with them (the
		// federation sender sends only local users' changes on).
		return logDeviceChanges(ctx, tx, up.UserID, deviceChange{deviceID: up.DeviceID, name: up.DisplayName,
			keys: nilIfEmpty(up.Keys), deleted: up.Deleted})
	})
	if err != nil {
		return false, false, fmt.Errorf("apply remote device update: %w", err)
	}
	return duplicate, stale, nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// PutRemoteSigningKeys stores a remote user's master and self-signing keys
// (each when given). A user whose list is not held gets a stale one, so
// the rest is fetched.
func (s *Store) PutRemoteSigningKeys(ctx context.Context, userID string, master, selfSigning []byte) error {
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, _, _, _, err := lockRemoteList(ctx, tx, userID); err != nil {
			return err
		}
		for typ, k := range map[string][]byte{KeyMaster: master, KeySelfSigning: selfSigning} {
			if len(k) == 0 {
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO remote_cross_signing_keys (user_id, key_type, keys) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET keys = EXCLUDED.keys`, userID, typ, k); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE remote_device_lists SET updated_at = now() WHERE user_id = $1`, userID); err != nil {
			return err
		}
		return logRemoteSigningKeysChange(ctx, tx, userID)
	})
	if err != nil {
		return fmt.Errorf("put remote signing keys: %w", err)
	}
	return nil
}

// MarkRemoteListsStale marks the users' lists for a resync (creating them).
func (s *Store) MarkRemoteListsStale(ctx context.Context, users []string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO remote_device_lists (user_id, stale) SELECT u, true FROM unnest($1::text[]) u
		ON CONFLICT (user_id) DO UPDATE SET stale = true, updated_at = now()`, users)
	if err != nil {
		return fmt.Errorf("mark remote device lists stale: %w", err)
	}
	return nil
}

// ReplaceRemoteDeviceList replaces a user's whole list with a resync's
// answer, unless a newer list is held (not stale, higher stream ID).
func (s *Store) ReplaceRemoteDeviceList(ctx context.Context, l DeviceList) (bool, error) {
	replaced := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		streamID, _, stale, held, err := lockRemoteList(ctx, tx, l.UserID)
		if err != nil {
			return err
		}
		if held && !stale && streamID > l.StreamID {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM remote_devices WHERE user_id = $1`, l.UserID); err != nil {
			return err
		}
		for _, d := range l.Devices {
			if _, err := tx.Exec(ctx, `INSERT INTO remote_devices (user_id, device_id, display_name, keys) VALUES ($1, $2, $3, $4)
				ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = EXCLUDED.display_name, keys = EXCLUDED.keys`,
				l.UserID, d.DeviceID, d.DisplayName, nilIfEmpty(d.Keys)); err != nil {
				return err
			}
		}
		for typ, k := range map[string][]byte{KeyMaster: l.MasterKey, KeySelfSigning: l.SelfSigningKey} {
			if _, err := tx.Exec(ctx, `DELETE FROM remote_cross_signing_keys WHERE user_id = $1 AND key_type = $2`, l.UserID, typ); err != nil {
				return err
			}
			if len(k) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO remote_cross_signing_keys (user_id, key_type, keys) VALUES ($1, $2, $3)`, l.UserID, typ, k); err != nil {
					return err
				}
			}
		}
		replaced = true
		if _, err = tx.Exec(ctx, `UPDATE remote_device_lists SET stream_id = $2, recent_stream_ids = ARRAY[$2::bigint], stale = false,
			updated_at = now() WHERE user_id = $1`, l.UserID, l.StreamID); err != nil {
			return err
		}
		// One change per device of the new list, then the signing keys:
		// local users sharing a room with the user see them changed.
		var changes []deviceChange
		for _, d := range l.Devices {
			changes = append(changes, deviceChange{deviceID: d.DeviceID, name: d.DisplayName, keys: nilIfEmpty(d.Keys)})
		}
		if err := logDeviceChanges(ctx, tx, l.UserID, changes...); err != nil {
			return err
		}
		return logRemoteSigningKeysChange(ctx, tx, l.UserID)
	})
	if err != nil {
		return false, fmt.Errorf("replace remote device list: %w", err)
	}
	return replaced, nil
}

// RemoteDeviceLists returns the held lists of the named users, or with
// staleOnly and no users the stale lists (least recently updated first,
// at most limit).
func (s *Store) RemoteDeviceLists(ctx context.Context, users []string, staleOnly bool, limit int) ([]DeviceList, error) {
	var rows pgx.Rows
	var err error
	if len(users) > 0 {
		rows, err = s.db.Query(ctx, `SELECT user_id, stream_id, stale FROM remote_device_lists
			WHERE user_id = ANY($1) AND (stale OR NOT $2) ORDER BY user_id`, users, staleOnly)
	} else if staleOnly {
		rows, err = s.db.Query(ctx, `SELECT user_id, stream_id, stale FROM remote_device_lists WHERE stale
			ORDER BY updated_at LIMIT $1`, limit)
	} else {
		return nil, errors.New("remote device lists: name users or ask for stale ones")
	}
	if err != nil {
		return nil, err
	}
	lists, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeviceList, error) {
		var l DeviceList
		return l, row.Scan(&l.UserID, &l.StreamID, &l.Stale)
	})
	if err != nil || len(lists) == 0 {
		return lists, err
	}
	byUser := map[string]*DeviceList{}
	ids := make([]string, len(lists))
	for i := range lists {
		byUser[lists[i].UserID] = &lists[i]
		ids[i] = lists[i].UserID
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT user_id, device_id, display_name, keys FROM remote_devices WHERE user_id = ANY($1) ORDER BY user_id, device_id`, ids).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var u string
				var d ListedDevice
				if err := rows.Scan(&u, &d.DeviceID, &d.DisplayName, &d.Keys); err != nil {
					return err
				}
				byUser[u].Devices = append(byUser[u].Devices, d)
			}
			return rows.Err()
		})
	b.Queue(`SELECT user_id, key_type, keys FROM remote_cross_signing_keys WHERE user_id = ANY($1)`, ids).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var u, typ string
				var k []byte
				if err := rows.Scan(&u, &typ, &k); err != nil {
					return err
				}
				switch typ {
				case KeyMaster:
					byUser[u].MasterKey = k
				case KeySelfSigning:
					byUser[u].SelfSigningKey = k
				}
			}
			return rows.Err()
		})
	if err := s.db.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return lists, nil
}

// LocalDeviceList is a local user's device list for /user/devices: every
// device the key-server knows (named or with keys), the position of the
// user's latest device change, and the master and self-signing keys.
func (s *Store) LocalDeviceList(ctx context.Context, userID string) (DeviceList, error) {
	l := DeviceList{UserID: userID}
	b := &pgx.Batch{}
	b.Queue(`SELECT COALESCE(max(pos), 0) FROM device_list_changes WHERE user_id = $1 AND kind IN ('device', 'device_name')`, userID).
		QueryRow(func(row pgx.Row) error { return row.Scan(&l.StreamID) })
	b.Queue(`SELECT COALESCE(d.device_id, k.device_id), COALESCE(d.display_name, ''), k.keys
		FROM devices d FULL JOIN device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id
		WHERE COALESCE(d.user_id, k.user_id) = $1 ORDER BY 1`, userID).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var d ListedDevice
				if err := rows.Scan(&d.DeviceID, &d.DisplayName, &d.Keys); err != nil {
					return err
				}
				l.Devices = append(l.Devices, d)
			}
			return rows.Err()
		})
	b.Queue(`SELECT key_type, keys FROM cross_signing_keys WHERE user_id = $1 AND key_type IN ('master', 'self_signing')`, userID).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var typ string
				var k []byte
				if err := rows.Scan(&typ, &k); err != nil {
					return err
				}
				if typ == KeyMaster {
					l.MasterKey = k
				} else {
					l.SelfSigningKey = k
				}
			}
			return rows.Err()
		})
	if err := s.db.SendBatch(ctx, b).Close(); err != nil {
		return DeviceList{}, fmt.Errorf("local device list: %w", err)
	}
	return l, nil
}

// logRemoteSigningKeysChange appends a 'signing_keys' change with a
// remote user's master and self-signing keys as held. Caller holds a
// transaction and calls it last.
func logRemoteSigningKeysChange(ctx context.Context, tx pgx.Tx, userID string) error {
	if _, err := tx.Exec(ctx, deviceListLock); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO device_list_changes (user_id, kind, master_key, self_signing_key)
		SELECT $1, 'signing_keys',
			(SELECT keys FROM remote_cross_signing_keys WHERE user_id = $1 AND key_type = 'master'),
			(SELECT keys FROM remote_cross_signing_keys WHERE user_id = $1 AND key_type = 'self_signing')`, userID)
	return err
}
