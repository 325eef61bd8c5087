package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// ChangeRow is one device_list_changes row for the publisher.
type ChangeRow struct {
	Pos      int64
	UserID   string
	Kind     string // KindDevice, KindDeviceName, KindSigningKeys, or an imported change (not published)
	DeviceID string
	// DisplayName, DeviceKeys (nil when Deleted) for device changes.
	DisplayName string
	Deleted     bool
	DeviceKeys  []byte
	// MasterKey and SelfSigningKey for signing key changes.
	MasterKey, SelfSigningKey []byte
	// PrevPos is the user's previous device change (0: none).
	PrevPos int64
}

// Publishable reports whether the row is sent on JetStream (imported
// changes carry nothing to send).
func (c ChangeRow) Publishable() bool {
	return c.Kind == KindDevice || c.Kind == KindDeviceName || c.Kind == KindSigningKeys
}

// PublishedUpTo is the position up to which every change is on JetStream.
func (s *Store) PublishedUpTo(ctx context.Context) (int64, error) {
	var p int64
	err := s.db.QueryRow(ctx, `SELECT published_up_to FROM key_changes_published`).Scan(&p)
	return p, err
}

// ChangesAfter returns up to limit changes after a position, in position
// order. Positions commit in order, so nothing can commit later below the
// last one returned.
func (s *Store) ChangesAfter(ctx context.Context, after int64, limit int) ([]ChangeRow, error) {
	rows, err := s.db.Query(ctx, `SELECT pos, user_id, kind, COALESCE(device_id, ''), COALESCE(display_name, ''), deleted,
			device_keys, master_key, self_signing_key, COALESCE(prev_pos, 0)
		FROM device_list_changes WHERE pos > $1 ORDER BY pos LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ChangeRow, error) {
		var c ChangeRow
		err := row.Scan(&c.Pos, &c.UserID, &c.Kind, &c.DeviceID, &c.DisplayName, &c.Deleted,
			&c.DeviceKeys, &c.MasterKey, &c.SelfSigningKey, &c.PrevPos)
		return c, err
	})
}

// SetPublished records that every change up to pos is on JetStream (it
// never moves back: several key-server replicas may publish).
func (s *Store) SetPublished(ctx context.Context, pos int64) error {
	_, err := s.db.Exec(ctx, `UPDATE key_changes_published SET published_up_to = GREATEST(published_up_to, $1)`, pos)
	return err
}
