package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Membership values.
const (
	MembershipJoin   = "join"
	MembershipInvite = "invite"
	MembershipLeave  = "leave"
	MembershipBan    = "ban"
	MembershipKnock  = "knock"
)

const typeMember = "m.room.member"

// Event is one committed room event as the consumer stores it.
type Event struct {
	EventID    string
	RoomID     string
	Type       string
	StateKey   *string
	Sender     string
	Membership string
	// JSON is the event in client format, without room_id.
	JSON           []byte
	TxnDeviceID    string
	TxnID          string
	StreamPosition int64
	// RelatesTo and RelType are content."m.relates_to" (empty when none).
	RelatesTo string
	RelType   string
	// SearchKey and SearchText are what POST /search finds the event by
	// (empty when it is not searchable).
	SearchKey  string
	SearchText string
}

// StateEvent is an event that entered a room's current state.
type StateEvent struct {
	EventID    string
	Type       string
	StateKey   string
	Sender     string
	Membership string
	JSON       []byte
}

// Input is one OutputRoomEvent, decoded.
type Input struct {
	Event      Event
	Added      []StateEvent
	RemovedIDs []string
	// Redacted is set when Event is a redaction the room-server applied:
	// the target's new client-format JSON replaces every stored copy.
	Redacted *RedactedEvent
}

// RedactedEvent is the redacted form of a stored event.
type RedactedEvent struct {
	EventID string
	JSON    []byte
}

// MembershipChange is a user's membership of a room changing.
type MembershipChange struct {
	UserID     string
	RoomID     string
	Membership string
}

// Applied is an Input that was new and is now stored at Pos.
type Applied struct {
	Pos     int64
	Event   Event
	Changes []MembershipChange
}

// Apply stores a batch of events, in order, in one transaction. Events
// already stored (same event ID) are skipped with their state changes, so
// applying a batch twice is harmless.
func (s *Store) Apply(ctx context.Context, inputs []Input) ([]Applied, error) {
	return s.ApplyWith(ctx, inputs, nil)
}

// ApplyWith is Apply that also evaluates each newly stored event with eval
// (push rules) and stores the outcomes in the same transaction, so an
// event and its notifications commit together and a redelivered event
// (skipped) is not evaluated twice. The outcomes are written after the
// batch's last event, in one round trip; evaluation reads no
// notifications or receipts, so later events see what they would have.
func (s *Store) ApplyWith(ctx context.Context, inputs []Input, eval Evaluator) ([]Applied, error) {
	var out []Applied
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		out = out[:0]
		var notes []Notification
		var owns []OwnRead
		for _, in := range inputs {
			a, ok, err := apply(ctx, tx, in)
			if err != nil {
				return fmt.Errorf("event %s: %w", in.Event.EventID, err)
			}
			if !ok {
				continue
			}
			out = append(out, a)
			if eval == nil {
				continue
			}
			res, err := eval(ctx, Reader{q: tx}, a)
			if err != nil {
				return fmt.Errorf("push rules for %s: %w", in.Event.EventID, err)
			}
			notes = append(notes, res.Notifications...)
			if res.OwnRead != nil {
				owns = append(owns, *res.OwnRead)
			}
		}
		if err := storePushOutcome(ctx, tx, notes, owns); err != nil {
			return fmt.Errorf("notifications: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func apply(ctx context.Context, tx pgx.Tx, in Input) (Applied, bool, error) {
	ev := in.Event
	// The NOT EXISTS keeps a redelivered event from consuming a position
	// (a conflicting insert would still draw from the sequence).
	visBefore, err := currentVisibility(ctx, tx, ev.RoomID)
	if err != nil {
		return Applied{}, false, err
	}
	visAfter := visBefore
	if ev.Type == typeHistoryVisibility && ev.StateKey != nil && *ev.StateKey == "" {
		visAfter = VisibilityOf(ev.JSON)
	}
	var pos int64
	err = tx.QueryRow(ctx, `INSERT INTO sync_events
		(event_id, room_id, type, state_key, sender, membership, event, txn_device_id, txn_id, stream_position,
		 visibility_before, visibility_after, search_key, search_vec)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
			CASE WHEN $13::text IS NULL THEN NULL ELSE to_tsvector('`+SearchConfig+`', $14::text) END
		WHERE NOT EXISTS (SELECT 1 FROM sync_events WHERE event_id = $1)
		ON CONFLICT (event_id) DO NOTHING RETURNING pos`,
		ev.EventID, ev.RoomID, ev.Type, ev.StateKey, ev.Sender, nullable(ev.Membership), ev.JSON,
		nullable(ev.TxnDeviceID), nullable(ev.TxnID), ev.StreamPosition, visBefore, visAfter,
		nullable(ev.SearchKey), ev.SearchText).Scan(&pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return Applied{}, false, nil
	}
	if err != nil {
		return Applied{}, false, err
	}
	a := Applied{Pos: pos, Event: ev}
	if ev.RelatesTo != "" && ev.RelType != "" {
		if _, err := tx.Exec(ctx, `INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, pos)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, ev.EventID, ev.RoomID, ev.RelatesTo, ev.RelType, pos); err != nil {
			return Applied{}, false, err
		}
	}

	removedMembers := map[string]bool{}
	if len(in.RemovedIDs) > 0 {
		rows, err := tx.Query(ctx, `DELETE FROM current_state WHERE room_id = $1 AND event_id = ANY($2)
			RETURNING type, state_key`, ev.RoomID, in.RemovedIDs)
		if err != nil {
			return Applied{}, false, err
		}
		for rows.Next() {
			var typ, key string
			if err := rows.Scan(&typ, &key); err != nil {
				rows.Close()
				return Applied{}, false, err
			}
			if typ == typeMember {
				removedMembers[key] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return Applied{}, false, err
		}
	}
	for _, st := range in.Added {
		_, err := tx.Exec(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, sender, membership, event, pos)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id, sender = EXCLUDED.sender,
				membership = EXCLUDED.membership, event = EXCLUDED.event, pos = EXCLUDED.pos`,
			ev.RoomID, st.Type, st.StateKey, st.EventID, st.Sender, nullable(st.Membership), st.JSON, pos)
		if err != nil {
			return Applied{}, false, err
		}
		if st.Type == typeMember {
			delete(removedMembers, st.StateKey)
			if err := setMembership(ctx, tx, st.StateKey, ev.RoomID, st.Membership, st.EventID, pos); err != nil {
				return Applied{}, false, err
			}
			a.Changes = append(a.Changes, MembershipChange{UserID: st.StateKey, RoomID: ev.RoomID, Membership: st.Membership})
		}
	}
	// A member event that left the state without a replacement (a state
	// reset) leaves the user with no membership: treat it as a leave.
	users := make([]string, 0, len(removedMembers))
	for u := range removedMembers {
		users = append(users, u)
	}
	slices.Sort(users)
	for _, u := range users {
		if err := setMembership(ctx, tx, u, ev.RoomID, MembershipLeave, ev.EventID, pos); err != nil {
			return Applied{}, false, err
		}
		a.Changes = append(a.Changes, MembershipChange{UserID: u, RoomID: ev.RoomID, Membership: MembershipLeave})
	}
	if in.Redacted != nil {
		if err := applyRedaction(ctx, tx, ev.RoomID, *in.Redacted); err != nil {
			return Applied{}, false, err
		}
	}
	return a, true, nil
}

func setMembership(ctx context.Context, tx pgx.Tx, userID, roomID, membership, eventID string, pos int64) error {
	var prev string
	var joinPos *int64
	err := tx.QueryRow(ctx, `SELECT membership, join_pos FROM memberships WHERE user_id = $1 AND room_id = $2 FOR UPDATE`,
		userID, roomID).Scan(&prev, &joinPos)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if membership == MembershipJoin && prev != MembershipJoin {
		joinPos = &pos
	}
	_, err = tx.Exec(ctx, `INSERT INTO membership_log (room_id, user_id, pos, membership) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, room_id, pos) DO UPDATE SET membership = EXCLUDED.membership`,
		roomID, userID, pos, membership)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO memberships (user_id, room_id, membership, prev_membership, event_id, pos, join_pos)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (user_id, room_id) DO UPDATE SET membership = EXCLUDED.membership,
			prev_membership = EXCLUDED.prev_membership, event_id = EXCLUDED.event_id, pos = EXCLUDED.pos,
			join_pos = EXCLUDED.join_pos`,
		userID, roomID, membership, prev, eventID, pos, joinPos)
	return err
}

// JoinedMembers returns every room's joined users, for the notifier.
func (s *Store) JoinedMembers(ctx context.Context) (map[string][]string, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, user_id FROM memberships WHERE membership = 'join'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var room, user string
		if err := rows.Scan(&room, &user); err != nil {
			return nil, err
		}
		out[room] = append(out[room], user)
	}
	return out, rows.Err()
}
