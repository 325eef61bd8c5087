package store

import (
	"context"
	"slices"

	"github.com/jackc/pgx/v5"
)

// ToDeviceMessage is one send-to-device message for one device.
type ToDeviceMessage struct {
	UserID   string
	DeviceID string // "*": every device the user has when it is stored
	Sender   string
	Type     string
	Content  []byte
	Pos      int64
}

// SendToDevice stores messages for local devices, once per (sender
// device, txnID): a repeated transaction stores nothing and reports
// false. A message to "*" goes to every device of its user; messages to
// devices that do not exist are dropped. It returns the users that got a
// message.
func (s *Store) SendToDevice(ctx context.Context, senderUser, senderDevice, txnID string, msgs []ToDeviceMessage) (users []string, fresh bool, err error) {
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// Transaction IDs are kept for a day: clients retry within
		// seconds, and the table must not grow forever.
		if _, err := tx.Exec(ctx, `DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = $2
			AND created_at < now() - interval '1 day'`, senderUser, senderDevice); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING`, senderUser, senderDevice, txnID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		fresh = true
		// Positions of one target user must commit in order, or a /sync
		// could acknowledge (and delete) a message that commits later
		// with a lower position: lock the targets, in a fixed order.
		targets := make([]string, 0, len(msgs))
		for _, m := range msgs {
			targets = append(targets, m.UserID)
		}
		slices.Sort(targets)
		for _, u := range slices.Compact(targets) {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('myelin.to_device.' || $1))`, u); err != nil {
				return err
			}
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			tag, err := tx.Exec(ctx, `INSERT INTO to_device_messages (user_id, device_id, sender, type, content)
				SELECT user_id, device_id, $3, $4, $5 FROM devices
				WHERE user_id = $1 AND ($2 = '*' OR device_id = $2) ORDER BY device_id`,
				m.UserID, m.DeviceID, m.Sender, m.Type, m.Content)
			if err != nil {
				return err
			}
			if tag.RowsAffected() > 0 && !seen[m.UserID] {
				seen[m.UserID] = true
				users = append(users, m.UserID)
			}
		}
		return nil
	})
	return users, fresh, err
}

// ToDeviceRead is what /sync reads of a device's to-device messages.
type ToDeviceRead struct {
	// Pending are the messages after the position asked about, oldest first.
	Pending []ToDeviceMessage
	// Delivered is true when messages up to that position are still
	// stored: the client has them (it sent the position back), so they
	// are to be deleted (AckToDevice).
	Delivered bool
}

// ToDevice queues the read of a device's messages after since (up to
// limit) into out.
func (b *Batch) ToDevice(userID, deviceID string, since int64, limit int, out *ToDeviceRead) {
	if since > 0 {
		b.b.Queue(`SELECT EXISTS (SELECT 1 FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND pos <= $3)`,
			userID, deviceID, since).QueryRow(func(row pgx.Row) error { return row.Scan(&out.Delivered) })
	}
	b.b.Queue(`SELECT pos, sender, type, content FROM to_device_messages
		WHERE user_id = $1 AND device_id = $2 AND pos > $3 ORDER BY pos LIMIT $4`, userID, deviceID, since, limit).
		Query(func(rows pgx.Rows) error {
			var err error
			out.Pending, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (ToDeviceMessage, error) {
				m := ToDeviceMessage{UserID: userID, DeviceID: deviceID}
				err := row.Scan(&m.Pos, &m.Sender, &m.Type, &m.Content)
				return m, err
			})
			return err
		})
}

// AckToDevice deletes the device's messages up to pos: the client has them.
func (s *Store) AckToDevice(ctx context.Context, userID, deviceID string, pos int64) error {
	_, err := s.db.Exec(ctx, `DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND pos <= $3`,
		userID, deviceID, pos)
	return err
}

// DeviceIDs lists the user's devices, in order: what a to-device message
// to "*" reaches (the appservices' copy, internal/astodevice).
func (s *Store) DeviceIDs(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
