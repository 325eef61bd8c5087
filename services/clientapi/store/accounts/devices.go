package accounts

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Device is a row of devices.
type Device struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	LastSeenIP  *string `json:"last_seen_ip,omitempty"`
	LastSeenTS  *int64  `json:"last_seen_ts,omitempty"`
}

// Devices lists a user's devices.
func (s *Store) Devices(ctx context.Context, userID string) ([]Device, error) {
	rows, err := s.db.Query(ctx, `SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
		WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		var d Device
		if err := rows.Scan(&d.DeviceID, &d.DisplayName, &d.LastSeenIP, &d.LastSeenTS); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// CreateDevice adds a device without an access token (an application
// service's, PUT /devices/{deviceId}); created is false when the user
// already has it.
func (s *Store) CreateDevice(ctx context.Context, userID, deviceID string, displayName *string) (created bool, err error) {
	tag, err := s.db.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO NOTHING`, userID, deviceID, displayName)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// Device returns one of a user's devices, or ErrNotFound.
func (s *Store) Device(ctx context.Context, userID, deviceID string) (Device, error) {
	var d Device
	err := s.db.QueryRow(ctx, `SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
		WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&d.DeviceID, &d.DisplayName, &d.LastSeenIP, &d.LastSeenTS)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, ErrNotFound
	}
	return d, err
}

// SetDeviceDisplayName renames a device and queues the rename for the
// key-server (which shows the name with the device's keys); ErrNotFound
// when it does not exist.
func (s *Store) SetDeviceDisplayName(ctx context.Context, userID, deviceID string, name *string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2`, userID, deviceID, name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		_, err = tx.Exec(ctx, `INSERT INTO key_server_outbox (user_id, op, device_ids, display_name) VALUES ($1, 'rename', $2, $3)`,
			userID, []string{deviceID}, name)
		return err
	})
}

// DeleteDevices deletes devices of a user with their tokens. Unknown IDs
// are ignored.
func (s *Store) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		return deleteDevices(ctx, tx, userID, deviceIDs)
	})
}

// SetPassword replaces an account's password hash. When logoutExcept is
// not nil, every device but *logoutExcept (all when it is "") is deleted
// with its tokens, in the same transaction.
func (s *Store) SetPassword(ctx context.Context, localpart, userID, hash string, logoutExcept *string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET password_hash = $2 WHERE localpart = $1 AND NOT deactivated`, localpart, hash)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		if logoutExcept == nil {
			return nil
		}
		return deleteAllDevices(ctx, tx, userID, *logoutExcept)
	})
}

// Deactivate marks an account deactivated, removes its password and
// profile, and deletes its devices, tokens, UIA sessions and pushers. The
// user ID stays taken.
func (s *Store) Deactivate(ctx context.Context, localpart, userID string) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE accounts SET deactivated = true, password_hash = NULL,
			displayname = NULL, avatar_url = NULL WHERE localpart = $1`, localpart); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM login_tokens WHERE user_id = $1`, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM openid_tokens WHERE user_id = $1`, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM uia_sessions WHERE user_id = $1`, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1`, userID); err != nil {
			return err
		}
		return deleteAllDevices(ctx, tx, userID, "")
	})
}

// queueDeviceDeletion queues the deletion of devices. Caller holds a
// transaction in which the devices rows are deleted already.
func queueDeviceDeletion(ctx context.Context, tx pgx.Tx, userID string, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO key_server_outbox (user_id, op, device_ids) VALUES ($1, 'delete', $2)`, userID, deviceIDs)
	return err
}
