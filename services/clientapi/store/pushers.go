package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Pusher is one stored pusher (POST /pushers/set).
type Pusher struct {
	UserID            string
	AppID             string
	PushKey           string
	Kind              string
	AppDisplayName    string
	DeviceDisplayName string
	ProfileTag        string
	Lang              string
	Data              []byte // JSON object
	PushKeyTS         int64  // seconds
	LastPos           int64
	// DeviceID is the device that set the pusher; the pusher is deleted
	// with it. Empty for pushers set before devices owned them.
	DeviceID string
}

const pusherCols = `user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, pushkey_ts, last_pos, COALESCE(device_id, '')`

func scanPushers(rows pgx.Rows) ([]Pusher, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Pusher, error) {
		var p Pusher
		err := row.Scan(&p.UserID, &p.AppID, &p.PushKey, &p.Kind, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag,
			&p.Lang, &p.Data, &p.PushKeyTS, &p.LastPos, &p.DeviceID)
		return p, err
	})
}

// SetPusher creates or updates the user's pusher for (app ID, pushkey).
// A new pusher starts after the newest notification; an updated one keeps
// its position. Unless appendOthers, the same (app ID, pushkey) of other
// users is removed, as the spec requires.
func (s *Store) SetPusher(ctx context.Context, p Pusher, appendOthers bool) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if !appendOthers {
			if _, err := tx.Exec(ctx, `DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				p.AppID, p.PushKey, p.UserID); err != nil {
				return err
			}
		}
		// The device that sets a pusher last owns it.
		_, err := tx.Exec(ctx, `INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,
				profile_tag, lang, data, pushkey_ts, last_pos, device_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, (SELECT COALESCE(MAX(pos), 0) FROM sync_events), $11)
			ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = EXCLUDED.kind,
				app_display_name = EXCLUDED.app_display_name, device_display_name = EXCLUDED.device_display_name,
				profile_tag = EXCLUDED.profile_tag, lang = EXCLUDED.lang, data = EXCLUDED.data, pushkey_ts = EXCLUDED.pushkey_ts,
				device_id = EXCLUDED.device_id`,
			p.UserID, p.AppID, p.PushKey, p.Kind, p.AppDisplayName, p.DeviceDisplayName, p.ProfileTag, p.Lang, p.Data, p.PushKeyTS,
			p.DeviceID)
		return err
	})
}

// DeletePusher removes the user's pusher for (app ID, pushkey), if any.
func (s *Store) DeletePusher(ctx context.Context, userID, appID, pushKey string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, userID, appID, pushKey)
	return err
}

// Pushers returns the user's pushers.
func (s *Store) Pushers(ctx context.Context, userID string) ([]Pusher, error) {
	rows, err := s.db.Query(ctx, `SELECT `+pusherCols+` FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey`, userID)
	if err != nil {
		return nil, err
	}
	return scanPushers(rows)
}

// PusherUsers returns every user with a pusher (to resume delivery).
func (s *Store) PusherUsers(ctx context.Context) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT user_id FROM pushers`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// UsersWithPushers returns those of the users that have a pusher.
func (s *Store) UsersWithPushers(ctx context.Context, users []string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT user_id FROM pushers WHERE user_id = ANY($1)`, users)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// AdvancePusher records that the pusher handled notifications up to pos.
func (s *Store) AdvancePusher(ctx context.Context, userID, appID, pushKey string, pos int64) error {
	_, err := s.db.Exec(ctx, `UPDATE pushers SET last_pos = GREATEST(last_pos, $4)
		WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`, userID, appID, pushKey, pos)
	return err
}
