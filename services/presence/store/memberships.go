package store

import (
	"context"
	"errors"

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
// Joins of users who were not joined before are stamped with the
// ephemeral position nextPos allocates (called at most once) and
// returned.
func (s *Store) ApplyMemberships(ctx context.Context, streamPos int64, changes []MembershipChange, nextPos func() (int64, error)) (joined []MembershipChange, joinedPos int64, err error) {
	if len(changes) == 0 {
		return nil, 0, nil
	}
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		joined, joinedPos = nil, 0
		for _, c := range changes {
			var prev string
			var prevPos int64
			err := tx.QueryRow(ctx, `SELECT membership, stream_pos FROM memberships WHERE room_id = $1 AND user_id = $2 FOR UPDATE`,
				c.RoomID, c.UserID).Scan(&prev, &prevPos)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				return err
			case prevPos >= streamPos:
				continue // already applied, or older than what is stored
			}
			var jpos *int64
			if c.Membership == "join" && prev != "join" {
				if joinedPos == 0 {
					if joinedPos, err = nextPos(); err != nil {
						return err
					}
				}
				jpos = &joinedPos
				joined = append(joined, c)
			}
			_, err = tx.Exec(ctx, `
				INSERT INTO memberships (room_id, user_id, membership, stream_pos, joined_pos) VALUES ($1, $2, $3, $4, COALESCE($5, 0))
				ON CONFLICT (room_id, user_id) DO UPDATE
				SET membership = EXCLUDED.membership, stream_pos = EXCLUDED.stream_pos,
				    joined_pos = COALESCE($5, memberships.joined_pos)`,
				c.RoomID, c.UserID, c.Membership, streamPos, jpos)
			if err != nil {
				return err
			}
		}
		return nil
	})
	return joined, joinedPos, err
}

// NewlySharing lists the users who share a joined room with userID where
// either joined at an ephemeral position in (after, upto]. It starts from
// the joins in that range (the rooms userID joined; the joins of others,
// by memberships_joined_pos), not from every member of userID's rooms, so
// an incremental /sync pays for what changed, not for the rooms' sizes.
func (s *Store) NewlySharing(ctx context.Context, userID string, after, upto int64) ([]string, error) {
	rows, err := s.db.Query(ctx, `
		SELECT m2.user_id FROM memberships m1
		JOIN memberships m2 ON m2.room_id = m1.room_id AND m2.membership = 'join'
		WHERE m1.user_id = $1 AND m1.membership = 'join' AND m1.joined_pos > $2 AND m1.joined_pos <= $3
		UNION
		SELECT m2.user_id FROM memberships m2
		JOIN memberships m1 ON m1.room_id = m2.room_id AND m1.user_id = $1 AND m1.membership = 'join'
		WHERE m2.membership = 'join' AND m2.joined_pos > $2 AND m2.joined_pos <= $3`,
		userID, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
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
