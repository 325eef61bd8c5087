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
// Joins of users who were not joined before are stamped with the
// ephemeral position nextPos allocates (called at most once) and
// returned.
func (s *Store) ApplyMemberships(ctx context.Context, streamPos int64, changes []MembershipChange, nextPos func() (int64, error)) (joined []MembershipChange, joinedPos int64, err error) {
	if len(changes) == 0 {
		return nil, 0, nil
	}
	// Read every row the changes touch in one statement and write them in
	// another: a join of a remote room brings thousands of members.
	rooms := make([]string, len(changes))
	users := make([]string, len(changes))
	for i, c := range changes {
		rooms[i], users[i] = c.RoomID, c.UserID
	}
	type prevRow struct {
		membership string
		pos        int64
	}
	type key struct{ room, user string }
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		joined, joinedPos = nil, 0
		prev := make(map[key]prevRow, len(changes))
		rows, err := tx.Query(ctx, `SELECT m.room_id, m.user_id, m.membership, m.stream_pos FROM memberships m
			JOIN unnest($1::text[], $2::text[]) AS x(r, u) ON m.room_id = x.r AND m.user_id = x.u
			ORDER BY m.room_id, m.user_id FOR UPDATE OF m`, rooms, users)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k key
			var r prevRow
			if err := rows.Scan(&k.room, &k.user, &r.membership, &r.pos); err != nil {
				rows.Close()
				return err
			}
			prev[k] = r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var wRooms, wUsers, wMs []string
		var wJoined []bool
		for _, c := range changes {
			p, found := prev[key{c.RoomID, c.UserID}]
			if found && p.pos >= streamPos {
				continue // already applied, or older than what is stored
			}
			isJoin := c.Membership == "join" && p.membership != "join"
			if isJoin {
				if joinedPos == 0 {
					if joinedPos, err = nextPos(); err != nil {
						return err
					}
				}
				joined = append(joined, c)
			}
			// A user twice in changes: the later change wins, as one by
			// one.
			prev[key{c.RoomID, c.UserID}] = prevRow{membership: c.Membership, pos: p.pos}
			wRooms, wUsers, wMs, wJoined = append(wRooms, c.RoomID), append(wUsers, c.UserID), append(wMs, c.Membership), append(wJoined, isJoin)
		}
		if len(wRooms) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO memberships (room_id, user_id, membership, stream_pos, joined_pos)
			SELECT DISTINCT ON (r, u) r, u, m, $5, CASE WHEN j THEN $6::bigint ELSE 0 END
			FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[]) WITH ORDINALITY AS x(r, u, m, j, n)
			ORDER BY r, u, n DESC
			ON CONFLICT (room_id, user_id) DO UPDATE
			SET membership = EXCLUDED.membership, stream_pos = EXCLUDED.stream_pos,
			    joined_pos = CASE WHEN EXCLUDED.joined_pos <> 0 THEN EXCLUDED.joined_pos ELSE memberships.joined_pos END`,
			wRooms, wUsers, wMs, wJoined, streamPos, joinedPos)
		return err
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
