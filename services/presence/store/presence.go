package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Presence is a user's stored presence. State is what was last set or
// derived by the idle sweep; readers derive the current state from
// LastActiveTS and the clock.
type Presence struct {
	UserID       string
	State        string
	StatusMsg    *string
	LastActiveTS *int64
	Origin       string
	Pos          int64
}

const presenceCols = `user_id, state, status_msg, last_active_ts, origin, pos`

func scanPresence(row pgx.CollectableRow) (Presence, error) {
	var p Presence
	err := row.Scan(&p.UserID, &p.State, &p.StatusMsg, &p.LastActiveTS, &p.Origin, &p.Pos)
	return p, err
}

// GetPresence returns a user's row, or ErrNotFound.
func (s *Store) GetPresence(ctx context.Context, userID string) (Presence, error) {
	rows, err := s.db.Query(ctx, `SELECT `+presenceCols+` FROM presence WHERE user_id = $1`, userID)
	if err != nil {
		return Presence{}, err
	}
	p, err := pgx.CollectExactlyOneRow(rows, scanPresence)
	if errors.Is(err, pgx.ErrNoRows) {
		return Presence{}, ErrNotFound
	}
	return p, err
}

// PutPresence writes a user's presence under a new position.
func (s *Store) PutPresence(ctx context.Context, p Presence) (int64, error) {
	return s.withPosition(ctx, func(tx pgx.Tx, pos int64) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO presence (user_id, state, status_msg, last_active_ts, origin, pos)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (user_id) DO UPDATE
			SET state = EXCLUDED.state, status_msg = EXCLUDED.status_msg,
			    last_active_ts = EXCLUDED.last_active_ts, origin = EXCLUDED.origin, pos = EXCLUDED.pos`,
			p.UserID, p.State, p.StatusMsg, p.LastActiveTS, p.Origin, pos)
		return err
	})
}

// TouchActive records activity without a new position: last_active_ago
// alone changing is not worth waking anyone. It reports whether the user
// was already in state.
func (s *Store) TouchActive(ctx context.Context, userID, state string, ts int64) (bool, error) {
	tag, err := s.db.Exec(ctx, `UPDATE presence SET last_active_ts = $3 WHERE user_id = $1 AND state = $2`, userID, state, ts)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// PresenceOf returns the rows of the given users with after < pos <= upto.
func (s *Store) PresenceOf(ctx context.Context, users []string, after, upto int64) ([]Presence, error) {
	if len(users) == 0 {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `SELECT `+presenceCols+` FROM presence
		WHERE user_id = ANY($1) AND pos > $2 AND pos <= $3 ORDER BY pos`, users, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanPresence)
}

// VisiblePresenceChanges returns the presence rows with after < pos <= upto
// of userID and of the users sharing a joined room with userID, in
// position order. It starts from the changed rows (presence_pos) and asks
// of each whether its user shares a room: for an incremental /sync that is
// a few rows, where listing every member of the requester's rooms first
// (VisibleUsers) costs as much as the rooms are big.
func (s *Store) VisiblePresenceChanges(ctx context.Context, userID string, after, upto int64) ([]Presence, error) {
	rows, err := s.db.Query(ctx, `SELECT `+presenceCols+` FROM presence p
		WHERE p.pos > $2 AND p.pos <= $3 AND (p.user_id = $1 OR EXISTS (
			SELECT 1 FROM memberships m2
			JOIN memberships m1 ON m1.room_id = m2.room_id AND m1.user_id = $1 AND m1.membership = 'join'
			WHERE m2.user_id = p.user_id AND m2.membership = 'join'))
		ORDER BY p.pos`, userID, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanPresence)
}

// NextIdleDeadline is the earliest time (ms) at which some online or
// unavailable user goes idle or offline, or nil when none will.
func (s *Store) NextIdleDeadline(ctx context.Context, idleMS, offlineMS int64) (*int64, error) {
	var t *int64
	err := s.db.QueryRow(ctx, `
		SELECT min(CASE WHEN state = 'online' THEN last_active_ts + $1 ELSE last_active_ts + $2 END)
		FROM presence WHERE state IN ('online', 'unavailable') AND last_active_ts IS NOT NULL`,
		idleMS, offlineMS).Scan(&t)
	return t, err
}

// IdleCandidates returns online users inactive since before idleBefore and
// online or unavailable users inactive since before offlineBefore.
func (s *Store) IdleCandidates(ctx context.Context, idleBefore, offlineBefore int64) ([]Presence, error) {
	rows, err := s.db.Query(ctx, `SELECT `+presenceCols+` FROM presence
		WHERE last_active_ts IS NOT NULL AND (
		  (state = 'online' AND last_active_ts <= $1) OR
		  (state IN ('online', 'unavailable') AND last_active_ts <= $2))`, idleBefore, offlineBefore)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanPresence)
}
