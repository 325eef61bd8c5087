package store

import (
	"context"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Member is one m.room.member of a room's current state.
type Member struct {
	UserID     string
	ServerName string
	Membership string
	EventID    string
}

// RoomKnown reports whether the copy has the room (its members were
// loaded or it was seen from its create event on).
func (t *Tx) RoomKnown(ctx context.Context, roomID string) (bool, error) {
	var one int
	err := t.tx.QueryRow(ctx, `SELECT 1 FROM rooms WHERE room_id = $1`, roomID).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// AddRoom records a room with its members at that point (none for a room
// seen from its create event).
func (t *Tx) AddRoom(ctx context.Context, roomID string, members []Member) error {
	if _, err := t.tx.Exec(ctx, `INSERT INTO rooms (room_id) VALUES ($1) ON CONFLICT DO NOTHING`, roomID); err != nil {
		return err
	}
	return t.SetMembers(ctx, roomID, members)
}

// SetMembers writes members of a room (each replaces the user's row).
func (t *Tx) SetMembers(ctx context.Context, roomID string, members []Member) error {
	if len(members) == 0 {
		return nil
	}
	users := make([]string, len(members))
	servers := make([]string, len(members))
	ms := make([]string, len(members))
	ids := make([]string, len(members))
	for i, m := range members {
		users[i], servers[i], ms[i], ids[i] = m.UserID, m.ServerName, m.Membership, m.EventID
	}
	_, err := t.tx.Exec(ctx, `INSERT INTO memberships (room_id, user_id, server_name, membership, event_id)
		SELECT $1, u, s, m, e FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS x(u, s, m, e)
		ON CONFLICT (room_id, user_id) DO UPDATE SET server_name = EXCLUDED.server_name,
			membership = EXCLUDED.membership, event_id = EXCLUDED.event_id`,
		roomID, users, servers, ms, ids)
	return err
}

// RemoveMemberEvents drops the rows set by events that left the room's
// current state without a replacement for their user.
func (t *Tx) RemoveMemberEvents(ctx context.Context, roomID string, eventIDs []string) error {
	if len(eventIDs) == 0 {
		return nil
	}
	_, err := t.tx.Exec(ctx, `DELETE FROM memberships WHERE room_id = $1 AND event_id = ANY($2)`, roomID, eventIDs)
	return err
}

// Membership is a user's membership in the copy ("" when none).
func (t *Tx) Membership(ctx context.Context, roomID, userID string) (string, error) {
	var m string
	err := t.tx.QueryRow(ctx, `SELECT membership FROM memberships WHERE room_id = $1 AND user_id = $2`, roomID, userID).Scan(&m)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return m, err
}

// joinedServersSQL lists the servers with a joined member in room $1,
// sorted, by walking memberships_room_joined from one server to the next
// (a loose index scan: one index probe per server). SELECT DISTINCT read
// every joined member's row: 16 ms per call in a room of 10,000, which
// the sender paid twice per event (#20).
const joinedServersSQL = `WITH RECURSIVE s(server_name) AS (
		(SELECT server_name FROM memberships WHERE room_id = $1 AND membership = 'join' ORDER BY server_name LIMIT 1)
		UNION ALL
		SELECT (SELECT m.server_name FROM memberships m
			WHERE m.room_id = $1 AND m.membership = 'join' AND m.server_name > s.server_name ORDER BY m.server_name LIMIT 1)
		FROM s WHERE s.server_name IS NOT NULL
	) SELECT server_name FROM s WHERE server_name IS NOT NULL ORDER BY server_name`

// JoinedServers are the servers with a joined member in the room, sorted.
func (t *Tx) JoinedServers(ctx context.Context, roomID string) ([]string, error) {
	return collectStrings(ctx, t.tx, joinedServersSQL, roomID)
}

// ServersSharingRoom are the servers with a joined member in any room the
// user is joined to, sorted.
func (t *Tx) ServersSharingRoom(ctx context.Context, userID string) ([]string, error) {
	return collectStrings(ctx, t.tx, `SELECT DISTINCT o.server_name FROM memberships m
		JOIN memberships o ON o.room_id = m.room_id AND o.membership = 'join'
		WHERE m.user_id = $1 AND m.membership = 'join' ORDER BY o.server_name`, userID)
}

// JoinedServers (outside a consumer's transaction) are the servers with a
// joined member in the room, sorted.
func (s *Store) JoinedServers(ctx context.Context, roomID string) ([]string, error) {
	return collectStrings(ctx, s.db, joinedServersSQL, roomID)
}

// TypingChange updates the local typers announced for a room to users and
// returns who started and who stopped.
func (t *Tx) TypingChange(ctx context.Context, roomID string, users []string) (started, stopped []string, err error) {
	before, err := collectStrings(ctx, t.tx, `SELECT user_id FROM typing_sent WHERE room_id = $1`, roomID)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range users {
		if !slices.Contains(before, u) && !slices.Contains(started, u) {
			started = append(started, u)
		}
	}
	for _, u := range before {
		if !slices.Contains(users, u) {
			stopped = append(stopped, u)
		}
	}
	if len(stopped) > 0 {
		if _, err := t.tx.Exec(ctx, `DELETE FROM typing_sent WHERE room_id = $1 AND user_id = ANY($2)`, roomID, stopped); err != nil {
			return nil, nil, err
		}
	}
	if len(started) > 0 {
		if _, err := t.tx.Exec(ctx, `INSERT INTO typing_sent (room_id, user_id) SELECT $1, unnest($2::text[])
			ON CONFLICT DO NOTHING`, roomID, started); err != nil {
			return nil, nil, err
		}
	}
	return started, stopped, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func collectStrings(ctx context.Context, q querier, sql string, args ...any) ([]string, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// RoomKnown (outside a consumer's transaction) reports whether the copy
// has the room.
func (s *Store) RoomKnown(ctx context.Context, roomID string) (bool, error) {
	var known bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rooms WHERE room_id = $1)`, roomID).Scan(&known)
	return known, err
}
