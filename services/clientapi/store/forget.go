package store

import (
	"errors"

	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// notForgotten is the condition that hides forgotten memberships rows
// (aliased m) from the user's reads.
const notForgotten = `NOT EXISTS (SELECT 1 FROM forgotten_rooms f
	WHERE f.user_id = m.user_id AND f.room_id = m.room_id AND f.event_id = m.event_id)`

// Forget records that the user forgot the room as of membership event eventID.
func (s *Store) Forget(ctx context.Context, userID, roomID, eventID string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO forgotten_rooms (user_id, room_id, event_id) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, room_id) DO UPDATE SET event_id = EXCLUDED.event_id`, userID, roomID, eventID)
	if err != nil {
		return fmt.Errorf("forget room: %w", err)
	}
	return nil
}

// LatestEventAtOrBefore returns the ID of the room's last event with
// pos <= upto, or ErrNotFound.
func (r Reader) LatestEventAtOrBefore(ctx context.Context, roomID string, upto int64) (string, error) {
	var eventID string
	err := r.q.QueryRow(ctx, `SELECT event_id FROM sync_events WHERE room_id = $1 AND pos <= $2
		ORDER BY pos DESC LIMIT 1`, roomID, upto).Scan(&eventID)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrNotFound
	}
	return eventID, err
}
