package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// MembershipChange is one m.room.member state change.
type MembershipChange struct {
	RoomID     string
	UserID     string
	Membership string
}

// ApplyMemberships stores the membership changes of one room-server
// stream position in one transaction. A row is only overwritten by a
// change from a later position, so redelivered messages change nothing.
func (s *Store) ApplyMemberships(ctx context.Context, streamPos int64, changes []MembershipChange) error {
	if len(changes) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		for _, c := range changes {
			_, err := tx.Exec(ctx, `
				INSERT INTO memberships (room_id, user_id, membership, stream_pos) VALUES ($1, $2, $3, $4)
				ON CONFLICT (room_id, user_id) DO UPDATE
				SET membership = EXCLUDED.membership, stream_pos = EXCLUDED.stream_pos
				WHERE memberships.stream_pos < EXCLUDED.stream_pos`,
				c.RoomID, c.UserID, c.Membership, streamPos)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// IsJoined reports whether the user is joined to the room.
func (s *Store) IsJoined(ctx context.Context, roomID, userID string) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships
		WHERE room_id = $1 AND user_id = $2 AND membership = 'join')`, roomID, userID).Scan(&ok)
	return ok, err
}

// ShareRoom reports whether a and b are joined to a common room.
func (s *Store) ShareRoom(ctx context.Context, a, b string) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships m1
		JOIN memberships m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership = 'join' AND m2.user_id = $2 AND m2.membership = 'join')`, a, b).Scan(&ok)
	return ok, err
}

// VisibleUsers lists the users sharing a joined room with userID
// (including userID itself when joined anywhere).
func (s *Store) VisibleUsers(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT m2.user_id FROM memberships m1
		JOIN memberships m2 ON m2.room_id = m1.room_id
		WHERE m1.user_id = $1 AND m1.membership = 'join' AND m2.membership = 'join'`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// SharingUsers is VisibleUsers seen from the other side: the same set,
// used to know whom a user's presence change concerns.
func (s *Store) SharingUsers(ctx context.Context, userID string) ([]string, error) {
	return s.VisibleUsers(ctx, userID)
}
