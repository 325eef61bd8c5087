package store

import (
	"context"
	"errors"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Reader reads events, state and memberships, either straight from the
// pool or inside a consistent snapshot (see Snapshot).
type Reader struct {
	q querier
}

// Reader reads from the pool; each call sees the latest commits.
func (s *Store) Reader() Reader { return Reader{q: s.db} }

// HasEvent reports whether the event is stored.
func (r Reader) HasEvent(ctx context.Context, eventID string) (bool, error) {
	var ok bool
	err := r.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sync_events WHERE event_id = $1)`, eventID).Scan(&ok)
	return ok, err
}

// MaxPos is the position of the latest stored event (0 when none).
func (r Reader) MaxPos(ctx context.Context) (int64, error) {
	var pos int64
	err := r.q.QueryRow(ctx, `SELECT COALESCE(MAX(pos), 0) FROM sync_events`).Scan(&pos)
	return pos, err
}

// Membership is a user's current membership of a room.
type Membership struct {
	RoomID     string
	Membership string
	Prev       string
	EventID    string
	// Pos is the position of the latest change.
	Pos int64
	// JoinPos is where the user last became joined; 0 if never.
	JoinPos int64
}

const membershipCols = `room_id, membership, prev_membership, event_id, pos, COALESCE(join_pos, 0)`

func scanMemberships(rows pgx.Rows) ([]Membership, error) {
	defer rows.Close()
	var out []Membership
	for rows.Next() {
		var m Membership
		if err := rows.Scan(&m.RoomID, &m.Membership, &m.Prev, &m.EventID, &m.Pos, &m.JoinPos); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Memberships returns every room the user has a membership of and has
// not forgotten.
func (r Reader) Memberships(ctx context.Context, userID string) ([]Membership, error) {
	rows, err := r.q.Query(ctx, `SELECT `+membershipCols+` FROM memberships m WHERE user_id = $1 AND `+notForgotten+` ORDER BY pos`, userID)
	if err != nil {
		return nil, err
	}
	return scanMemberships(rows)
}

// Membership returns the user's membership of one room, or ErrNotFound
// (also when the user forgot the room).
func (r Reader) Membership(ctx context.Context, userID, roomID string) (Membership, error) {
	rows, err := r.q.Query(ctx, `SELECT `+membershipCols+` FROM memberships m WHERE user_id = $1 AND room_id = $2 AND `+notForgotten, userID, roomID)
	if err != nil {
		return Membership{}, err
	}
	ms, err := scanMemberships(rows)
	if err != nil {
		return Membership{}, err
	}
	if len(ms) == 0 {
		return Membership{}, ErrNotFound
	}
	return ms[0], nil
}

// JoinedRooms lists the rooms the user is joined to.
func (r Reader) JoinedRooms(ctx context.Context, userID string) ([]string, error) {
	rows, err := r.q.Query(ctx, `SELECT room_id FROM memberships WHERE user_id = $1 AND membership = 'join' ORDER BY room_id`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// StoredEvent is an event read back from sync_events.
type StoredEvent struct {
	Pos         int64
	EventID     string
	RoomID      string
	Type        string
	StateKey    *string
	Sender      string
	JSON        []byte
	TxnDeviceID string
	TxnID       string
	// History visibility in the state before and after the event.
	VisBefore, VisAfter string
	// Membership is not stored: serving sets it to the requesting user's
	// membership at the event (unsigned.membership), "" to leave it out.
	Membership string
}

const eventCols = `pos, event_id, room_id, type, state_key, sender, event, COALESCE(txn_device_id, ''), COALESCE(txn_id, ''),
	COALESCE(visibility_before, 'shared'), COALESCE(visibility_after, 'shared')`

func scanEvents(rows pgx.Rows) ([]StoredEvent, error) {
	defer rows.Close()
	var out []StoredEvent
	for rows.Next() {
		var e StoredEvent
		if err := rows.Scan(&e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.JSON, &e.TxnDeviceID, &e.TxnID,
			&e.VisBefore, &e.VisAfter); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// RoomRange selects a room's events with After < pos <= Upto.
type RoomRange struct {
	RoomID string
	After  int64
	Upto   int64
}

// Timeline is the newest events of a range, oldest first.
type Timeline struct {
	Events []StoredEvent
	// Limited is true when the range holds more events than were returned.
	Limited bool
}

// Timelines returns, for each range, its newest limit events in stream
// order, in one query.
func (r Reader) Timelines(ctx context.Context, ranges []RoomRange, limit int) (map[string]Timeline, error) {
	out := make(map[string]Timeline, len(ranges))
	b := &Batch{}
	b.Timelines(ranges, limit, out)
	return out, r.Send(ctx, b)
}

// Timelines queues Reader.Timelines: out gets an entry for every range.
// Empty ranges (Upto <= After, such as a quiet room's in a /sync whose
// since is the latest position) are not asked about.
func (b *Batch) Timelines(ranges []RoomRange, limit int, out map[string]Timeline) {
	var rooms []string
	var after, upto []int64
	for _, rr := range ranges {
		out[rr.RoomID] = Timeline{}
		if rr.Upto > rr.After {
			rooms, after, upto = append(rooms, rr.RoomID), append(after, rr.After), append(upto, rr.Upto)
		}
	}
	if len(rooms) == 0 {
		return
	}
	b.b.Queue(`SELECT e.pos, e.event_id, e.room_id, e.type, e.state_key, e.sender, e.event,
			COALESCE(e.txn_device_id, ''), COALESCE(e.txn_id, ''),
			COALESCE(e.visibility_before, 'shared'), COALESCE(e.visibility_after, 'shared')
		FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(room_id, after_pos, upto_pos)
		CROSS JOIN LATERAL (
			SELECT * FROM sync_events s
			WHERE s.room_id = r.room_id AND s.pos > r.after_pos AND s.pos <= r.upto_pos
			ORDER BY s.pos DESC LIMIT $4
		) e`, rooms, after, upto, limit+1).Query(func(rows pgx.Rows) error {
		events, err := scanEvents(rows)
		if err != nil {
			return err
		}
		// Rows arrive newest first per room.
		for _, e := range events {
			t := out[e.RoomID]
			if len(t.Events) == limit {
				t.Limited = true
			} else {
				t.Events = append(t.Events, e)
			}
			out[e.RoomID] = t
		}
		for _, room := range rooms {
			slices.Reverse(out[room].Events)
		}
		return nil
	})
}

// EarliestEvent returns the room's earliest stored event (backfilled
// history included); found is false when the copy has none of the room.
func (r Reader) EarliestEvent(ctx context.Context, roomID string) (e StoredEvent, found bool, err error) {
	rows, err := r.q.Query(ctx, `SELECT `+eventCols+` FROM sync_events WHERE room_id = $1 ORDER BY pos ASC LIMIT 1`, roomID)
	if err != nil {
		return StoredEvent{}, false, err
	}
	events, err := scanEvents(rows)
	if err != nil || len(events) == 0 {
		return StoredEvent{}, false, err
	}
	return events[0], true, nil
}

// HasEventsBefore reports whether the room has events before pos.
func (r Reader) HasEventsBefore(ctx context.Context, roomID string, pos int64) (bool, error) {
	var ok bool
	err := r.q.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM sync_events WHERE room_id = $1 AND pos < $2)`, roomID, pos).Scan(&ok)
	return ok, err
}

// GapState returns the latest state event per (type, state_key) among the
// room's events with after < pos < before: the state delta a limited
// incremental sync reports for its gap.
func (r Reader) GapState(ctx context.Context, roomID string, after, before int64) ([]StoredEvent, error) {
	rows, err := r.q.Query(ctx, `SELECT `+eventCols+` FROM (
			SELECT DISTINCT ON (type, state_key) * FROM sync_events
			WHERE room_id = $1 AND pos > $2 AND pos < $3 AND state_key IS NOT NULL
			ORDER BY type, state_key, pos DESC
		) g ORDER BY pos`, roomID, after, before)
	if err != nil {
		return nil, err
	}
	return scanEvents(rows)
}

// CurrentStateEvent is one row of a room's current state.
type CurrentStateEvent struct {
	EventID    string
	Type       string
	StateKey   string
	Sender     string
	Membership string
	JSON       []byte
	Pos        int64
}

// CurrentState returns the room's current state, restricted to types when
// not empty, in the order the events entered the state.
func (r Reader) CurrentState(ctx context.Context, roomID string, types []string) ([]CurrentStateEvent, error) {
	m, err := r.CurrentStateRooms(ctx, []string{roomID}, types)
	return m[roomID], err
}

// CurrentStateRooms is CurrentState for several rooms in one query.
func (r Reader) CurrentStateRooms(ctx context.Context, rooms []string, types []string) (map[string][]CurrentStateEvent, error) {
	out := map[string][]CurrentStateEvent{}
	if len(rooms) == 0 {
		return out, nil
	}
	if types == nil {
		types = []string{}
	}
	rows, err := r.q.Query(ctx, `SELECT room_id, event_id, type, state_key, sender, COALESCE(membership, ''), event, pos
		FROM current_state WHERE room_id = ANY($1) AND (cardinality($2::text[]) = 0 OR type = ANY($2))
		ORDER BY pos, type, state_key`, rooms, types)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var room string
		var e CurrentStateEvent
		if err := rows.Scan(&room, &e.EventID, &e.Type, &e.StateKey, &e.Sender, &e.Membership, &e.JSON, &e.Pos); err != nil {
			return nil, err
		}
		out[room] = append(out[room], e)
	}
	return out, rows.Err()
}

// Direction of pagination.
type Direction int

// Backward pages from newer to older events; Forward the other way.
const (
	Backward Direction = iota
	Forward
)

// Page is one page of /messages.
type Page struct {
	Events []StoredEvent
	// More is true when events remain beyond this page.
	More bool
}

// Messages pages through a room's events. Backward returns events with
// to < pos <= from, newest first; Forward returns from < pos <= to,
// oldest first. to == -1 means unbounded (backward, that reaches
// backfilled history, whose positions are negative). Events after bound
// are never returned (bound < 0: unbounded).
func (r Reader) Messages(ctx context.Context, roomID string, dir Direction, from, to, bound int64, limit int) (Page, error) {
	if bound < 0 {
		bound = math.MaxInt64
	}
	var rows pgx.Rows
	var err error
	if dir == Backward {
		if to == -1 {
			to = math.MinInt64
		}
		rows, err = r.q.Query(ctx, `SELECT `+eventCols+` FROM sync_events
			WHERE room_id = $1 AND pos <= $2 AND pos <= $3 AND pos > $4 ORDER BY pos DESC LIMIT $5`,
			roomID, from, bound, to, limit+1)
	} else {
		if to < 0 {
			to = math.MaxInt64
		}
		rows, err = r.q.Query(ctx, `SELECT `+eventCols+` FROM sync_events
			WHERE room_id = $1 AND pos > $2 AND pos <= $3 AND pos <= $4 ORDER BY pos ASC LIMIT $5`,
			roomID, from, to, bound, limit+1)
	}
	if err != nil {
		return Page{}, err
	}
	events, err := scanEvents(rows)
	if err != nil {
		return Page{}, err
	}
	p := Page{Events: events}
	if len(events) > limit {
		p.Events, p.More = events[:limit], true
	}
	return p, nil
}

// CurrentStateEvent returns one entry of a room's current state, or ErrNotFound.
func (r Reader) CurrentStateEvent(ctx context.Context, roomID, typ, stateKey string) (CurrentStateEvent, error) {
	e := CurrentStateEvent{Type: typ, StateKey: stateKey}
	err := r.q.QueryRow(ctx, `SELECT event_id, sender, COALESCE(membership, ''), event, pos FROM current_state
		WHERE room_id = $1 AND type = $2 AND state_key = $3`, roomID, typ, stateKey).
		Scan(&e.EventID, &e.Sender, &e.Membership, &e.JSON, &e.Pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return CurrentStateEvent{}, ErrNotFound
	}
	return e, err
}

// SyncStart is what every /sync reads first: the stream position, the
// user's memberships and one global account data entry (the ignore list).
type SyncStart struct {
	Pos         int64
	Memberships []Membership
	// Entry is the account data entry's content; nil when the user has none.
	Entry []byte
}

// SyncStart queues the reads of a SyncStart into out.
func (b *Batch) SyncStart(userID, entryType string, out *SyncStart) {
	b.b.Queue(`SELECT COALESCE(MAX(pos), 0) FROM sync_events`).QueryRow(func(row pgx.Row) error { return row.Scan(&out.Pos) })
	b.b.Queue(`SELECT `+membershipCols+` FROM memberships m WHERE user_id = $1 AND `+notForgotten+` ORDER BY pos`, userID).
		Query(func(rows pgx.Rows) error {
			var err error
			out.Memberships, err = scanMemberships(rows)
			return err
		})
	b.b.Queue(`SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2`, userID, entryType).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				if err := rows.Scan(&out.Entry); err != nil {
					return err
				}
			}
			return rows.Err()
		})
}

// LeftSharedRooms returns the users who left (or were banned from) one of
// userID's rooms after `after` up to `upto`, and the members of the rooms
// userID left in that range: candidates for /keys/changes' "left" (the
// caller keeps those who share no room with userID now).
func (r Reader) LeftSharedRooms(ctx context.Context, userID string, after, upto int64) ([]string, error) {
	rows, err := r.q.Query(ctx, `SELECT DISTINCT m.user_id FROM memberships mine
		JOIN memberships m ON m.room_id = mine.room_id
		WHERE mine.user_id = $1 AND (
			(m.membership IN ('leave', 'ban') AND m.pos > $2 AND m.pos <= $3) OR
			(mine.membership IN ('leave', 'ban') AND mine.pos > $2 AND mine.pos <= $3 AND m.membership = 'join'))`,
		userID, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
