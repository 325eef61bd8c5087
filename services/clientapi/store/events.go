package store

import (
	"context"
	"encoding/json"
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
	// Backfill: history from another server, stored before the room's
	// earliest event (outofroom.go).
	Backfill bool
	// OutOfRoom: a local user's membership of a room of another server;
	// StrippedState is the room's stripped state it carried.
	OutOfRoom     bool
	StrippedState []json.RawMessage
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
	return s.ApplyMarked(ctx, inputs, eval, StreamMark{})
}

// StreamMark is a consumer's position in a JetStream stream: the sequence
// of the last message whose effects are stored (stream_marks).
type StreamMark struct {
	Name string
	Seq  uint64
}

// StreamMark returns the position stored under name, or 0 and false.
func (s *Store) StreamMark(ctx context.Context, name string) (uint64, bool, error) {
	var seq int64
	err := s.db.QueryRow(ctx, `SELECT seq FROM stream_marks WHERE name = $1`, name).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return uint64(seq), err == nil, err
}

// ApplyMarked is ApplyWith that also moves mark (when its Name is set)
// forward to mark.Seq in the same transaction, so the stored events and the
// consumer's position commit together.
func (s *Store) ApplyMarked(ctx context.Context, inputs []Input, eval Evaluator, mark StreamMark) ([]Applied, error) {
	var out []Applied
	err := s.inPipeTx(ctx, func(tx *pipeTx) (*pgx.Batch, error) {
		out = out[:0]
		reads := ownReads{} // unread.go
		var notes []Notification
		var roomNotes []RoomNotification
		var changedRooms []string // rooms whose state changed: their summaries
		for i := 0; i < len(inputs); {
			if inputs[i].Backfill {
				if err := applyBackfill(ctx, tx, inputs[i]); err != nil {
					return nil, err
				}
				i++
				continue
			}
			// A run of events that change no state is stored in two round
			// trips; any other event in a few of its own.
			n := 1
			var steps []step
			var err error
			if changesNoState(inputs[i]) {
				for i+n < len(inputs) && changesNoState(inputs[i+n]) && !inputs[i+n].Backfill {
					n++
				}
				steps, err = applyRun(ctx, tx, inputs[i:i+n], eval != nil, changedRooms)
			} else {
				var st step
				st, err = applyOne(ctx, tx, inputs[i], eval != nil)
				steps = []step{st}
				if err != nil {
					err = fmt.Errorf("event %s: %w", inputs[i].Event.EventID, err)
				}
			}
			if err != nil {
				return nil, err
			}
			for k, st := range steps {
				if !st.stored {
					continue
				}
				if inputs[i+k].OutOfRoom && len(inputs[i+k].StrippedState) > 0 {
					if err := saveOutOfRoomState(ctx, tx, inputs[i+k]); err != nil {
						return nil, err
					}
				}
				out = append(out, st.applied)
				if room := st.applied.Event.RoomID; !changesNoState(inputs[i+k]) && !slices.Contains(changedRooms, room) {
					changedRooms = append(changedRooms, room)
				}
				if eval == nil {
					continue
				}
				res, err := eval(ctx, Reader{q: tx}, st.applied, st.push)
				if err != nil {
					return nil, fmt.Errorf("push rules for %s: %w", inputs[i+k].Event.EventID, err)
				}
				notes = append(notes, res.Notifications...)
				if res.Room != nil {
					roomNotes = append(roomNotes, *res.Room)
				}
				reads.add(res, st.applied.Pos)
			}
			i += n
		}
		// The changed rooms' summaries, notifications and own reads in one
		// round trip.
		b := &pgx.Batch{}
		if len(changedRooms) > 0 {
			queueSummaryRefresh(b, changedRooms) // syncstate.go
		}
		if mark.Name != "" {
			b.Queue(`INSERT INTO stream_marks (name, seq) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET seq = GREATEST(stream_marks.seq, EXCLUDED.seq)`, mark.Name, int64(mark.Seq))
		}
		if eval == nil {
			return b, nil
		}
		queueRoomNotifications(b, roomNotes)
		queueNotifications(b, notes)
		reads.queue(b)
		return b, nil
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

// step is what storing one event produced.
type step struct {
	stored  bool // false: already stored, skipped
	applied Applied
	// push is the event's PushContext (when asked for and stored).
	push PushContext
}

// insertEventSQL stores an event unless it is stored already, with its
// relation ($15, $16: none when empty), returning its position. The NOT
// EXISTS keeps a redelivered event from consuming a position (a
// conflicting insert would still draw from the sequence); the relation
// comes from the insert, so a redelivered event does not bring back the
// relation its redaction removed.
const insertEventSQL = `WITH ins AS (INSERT INTO sync_events
		(event_id, room_id, type, state_key, sender, membership, event, txn_device_id, txn_id, stream_position,
		 visibility_before, visibility_after, search_key, search_vec)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
			CASE WHEN $13::text IS NULL THEN NULL ELSE to_tsvector('` + SearchConfig + `', $14::text) END
		WHERE NOT EXISTS (SELECT 1 FROM sync_events WHERE event_id = $1)
		ON CONFLICT (event_id) DO NOTHING RETURNING pos),
	rel AS (INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, pos)
		SELECT $1, $2, $15, $16, pos FROM ins WHERE $15::text <> '' AND $16::text <> ''
		ON CONFLICT DO NOTHING)
	SELECT pos FROM ins`

// changesNoState reports whether storing the event leaves current state
// (and so visibility, members and power levels) as it was.
func changesNoState(in Input) bool {
	return len(in.Added) == 0 && len(in.RemovedIDs) == 0 && in.Redacted == nil
}

// queueInsert queues the event's insert (insertEventSQL) into st.
func queueInsert(b *pgx.Batch, ev Event, visBefore string, st *step) {
	queueInsertSQL(b, insertEventSQL, ev, visBefore, st)
}

// queueInsertSQL is queueInsert with another insert statement of the same
// parameters (outofroom.go's backfill insert).
func queueInsertSQL(b *pgx.Batch, sql string, ev Event, visBefore string, st *step) {
	visAfter := visBefore
	if ev.Type == typeHistoryVisibility && ev.StateKey != nil && *ev.StateKey == "" {
		visAfter = VisibilityOf(ev.JSON)
	}
	relatesTo, relType := ev.RelatesTo, ev.RelType
	if relatesTo == "" || relType == "" {
		relatesTo, relType = "", ""
	}
	b.Queue(sql,
		ev.EventID, ev.RoomID, ev.Type, ev.StateKey, ev.Sender, nullable(ev.Membership), ev.JSON,
		nullable(ev.TxnDeviceID), nullable(ev.TxnID), ev.StreamPosition, visBefore, visAfter,
		nullable(ev.SearchKey), ev.SearchText, relatesTo, relType).QueryRow(func(row pgx.Row) error {
		err := row.Scan(&st.applied.Pos)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		st.stored = err == nil
		return err
	})
	st.applied.Event = ev
}

// applyRun stores events that change no state. Their rooms' visibilities
// (each event's visibility_before) are read first, in one round trip;
// then the events are stored and what their evaluation reads (withPush)
// read, in order, in another. Nothing those reads depend on changes
// within the run, except the thread (a parent may come later in the run),
// so that is read after each event's insert, as one by one.
func applyRun(ctx context.Context, tx querier, run []Input, withPush bool, stale []string) ([]step, error) {
	rooms := make([]string, 0, len(run))
	for _, in := range run {
		if !slices.Contains(rooms, in.Event.RoomID) {
			rooms = append(rooms, in.Event.RoomID)
		}
	}
	vis, err := visibilities(ctx, tx, rooms)
	if err != nil {
		return nil, err
	}
	steps := make([]step, len(run))
	// Events of one room share its reads (nothing they depend on changes
	// within the run), and all the rooms are read at once, after the
	// inserts. An invite, whose target is read too, changes state, so it
	// is never in a run; should one be, it is read on its own.
	shared := map[string]*PushContext{}
	pcs := make([]*PushContext, len(run))
	// own holds what an event's evaluation reads for it alone: the
	// members it mentions and an invite's target.
	own := make([]*PushContext, len(run))
	b := &pgx.Batch{}
	for i, in := range run {
		queueInsert(b, in.Event, vis[in.Event.RoomID], &steps[i])
		if !withPush {
			continue
		}
		queueThread(b, in.Event, &steps[i].push.Thread)
		if pcs[i] = shared[in.Event.RoomID]; pcs[i] == nil {
			pcs[i] = &PushContext{}
			shared[in.Event.RoomID] = pcs[i]
		}
		if extra, mentions := pushExtraUser(in.Event), mentionedUsers(in.Event.JSON); extra != "" || len(mentions) > 0 {
			own[i] = &PushContext{RulesPos: map[string]int64{}}
			if extra != "" {
				queueRulesPos(b, extra, own[i])
			}
			queueMentioned(b, in.Event, own[i])
		}
	}
	if len(shared) > 0 {
		queueRoomsPushContext(b, shared, stale)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("events %s to %s: %w", run[0].Event.EventID, run[len(run)-1].Event.EventID, err)
	}
	for i, pc := range pcs {
		if pc != nil {
			thread := steps[i].push.Thread
			steps[i].push = pc.with(own[i])
			steps[i].push.Thread = thread
		}
	}
	return steps, nil
}

// applyOne stores an event that changes state, and then reads what its
// evaluation reads (withPush).
func applyOne(ctx context.Context, tx querier, in Input, withPush bool) (step, error) {
	var st step
	ev := in.Event
	visBefore, err := currentVisibility(ctx, tx, ev.RoomID)
	if err != nil {
		return step{}, err
	}
	b := &pgx.Batch{}
	queueInsert(b, ev, visBefore, &st)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return step{}, err
	}
	if !st.stored {
		return st, nil
	}
	if st.applied, err = applyState(ctx, tx, in, st.applied.Pos); err != nil {
		return step{}, err
	}
	if withPush {
		b = &pgx.Batch{}
		queuePushContext(b, ev, &st.push)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return step{}, err
		}
	}
	return st, nil
}

// applyState applies an event's state changes and redaction, after the
// event is stored at pos.
func applyState(ctx context.Context, tx querier, in Input, pos int64) (Applied, error) {
	ev := in.Event
	a := Applied{Pos: pos, Event: ev}
	removedMembers := map[string]bool{}
	if len(in.RemovedIDs) > 0 {
		rows, err := tx.Query(ctx, `DELETE FROM current_state WHERE room_id = $1 AND event_id = ANY($2)
			RETURNING type, state_key`, ev.RoomID, in.RemovedIDs)
		if err != nil {
			return Applied{}, err
		}
		for rows.Next() {
			var typ, key string
			if err := rows.Scan(&typ, &key); err != nil {
				rows.Close()
				return Applied{}, err
			}
			if typ == typeMember {
				removedMembers[key] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return Applied{}, err
		}
	}
	// Everything the event adds goes out in one pipelined batch of a few
	// statements, each over arrays of the rows: a join to a remote room
	// adds its whole state (10,000 members were 30,000 statements).
	b := &pgx.Batch{}
	var members []memberChange
	added := lastPerKey(in.Added)
	if len(added) > 0 {
		types, keys, ids, senders, jsons := make([]string, len(added)), make([]string, len(added)), make([]string, len(added)),
			make([]string, len(added)), make([][]byte, len(added))
		ms := make([]*string, len(added))
		for i, st := range added {
			types[i], keys[i], ids[i], senders[i], ms[i], jsons[i] = st.Type, st.StateKey, st.EventID, st.Sender, nullable(st.Membership), st.JSON
		}
		b.Queue(`INSERT INTO current_state (room_id, type, state_key, event_id, sender, membership, event, pos)
			SELECT $1, t, k, e, s, m, j, $8 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[]) AS x(t, k, e, s, m, j)
			ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id, sender = EXCLUDED.sender,
				membership = EXCLUDED.membership, event = EXCLUDED.event, pos = EXCLUDED.pos`,
			ev.RoomID, types, keys, ids, senders, ms, jsons, pos)
	}
	for _, st := range added {
		if st.Type == typeMember {
			delete(removedMembers, st.StateKey)
			members = append(members, memberChange{userID: st.StateKey, membership: st.Membership, eventID: st.EventID})
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
		members = append(members, memberChange{userID: u, membership: MembershipLeave, eventID: ev.EventID})
	}
	if err := queueMemberships(ctx, tx, b, ev.RoomID, members, pos); err != nil {
		return Applied{}, err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return Applied{}, err
	}
	for _, m := range members {
		a.Changes = append(a.Changes, MembershipChange{UserID: m.userID, RoomID: ev.RoomID, Membership: m.membership})
	}
	if in.Redacted != nil {
		if err := applyRedaction(ctx, tx, ev.RoomID, *in.Redacted); err != nil {
			return Applied{}, err
		}
	}
	return a, nil
}

// memberChange is one user's new membership in a room.
type memberChange struct{ userID, membership, eventID string }

// queueMemberships queues the membership rows of changes (one per user)
// into b, after reading and locking the users' current rows in one
// statement: the previous membership and the join position (set at a
// join, kept otherwise) come from them.
func queueMemberships(ctx context.Context, tx querier, b *pgx.Batch, roomID string, changes []memberChange, pos int64) error {
	if len(changes) == 0 {
		return nil
	}
	type row struct {
		membership string
		joinPos    *int64
	}
	users := make([]string, len(changes))
	for i, c := range changes {
		users[i] = c.userID
	}
	prev := make(map[string]row, len(changes))
	rows, err := tx.Query(ctx, `SELECT user_id, membership, join_pos FROM memberships
		WHERE room_id = $1 AND user_id = ANY($2) ORDER BY user_id FOR UPDATE`, roomID, users)
	if err != nil {
		return err
	}
	for rows.Next() {
		var u string
		var r row
		if err := rows.Scan(&u, &r.membership, &r.joinPos); err != nil {
			rows.Close()
			return err
		}
		prev[u] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	// One row per user (the last change of a user wins, as one by one),
	// written by one statement per table.
	last := make(map[string]int, len(changes))
	for i, c := range changes {
		last[c.userID] = i
	}
	var us, ms, prevMs, ids []string
	var joinPoss []*int64
	for i, c := range changes {
		if last[c.userID] != i {
			continue
		}
		p := prev[c.userID]
		joinPos := p.joinPos
		if c.membership == MembershipJoin && p.membership != MembershipJoin {
			joinPos = &pos
		}
		us, ms, prevMs, ids, joinPoss = append(us, c.userID), append(ms, c.membership), append(prevMs, p.membership),
			append(ids, c.eventID), append(joinPoss, joinPos)
	}
	b.Queue(`INSERT INTO membership_log (room_id, user_id, pos, membership)
		SELECT $1, u, $2, m FROM unnest($3::text[], $4::text[]) AS x(u, m)
		ON CONFLICT (user_id, room_id, pos) DO UPDATE SET membership = EXCLUDED.membership`,
		roomID, pos, us, ms)
	b.Queue(`INSERT INTO memberships (user_id, room_id, membership, prev_membership, event_id, pos, join_pos)
		SELECT u, $1, m, pm, e, $2, jp FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[]) AS x(u, m, pm, e, jp)
		ON CONFLICT (user_id, room_id) DO UPDATE SET membership = EXCLUDED.membership,
			prev_membership = EXCLUDED.prev_membership, event_id = EXCLUDED.event_id, pos = EXCLUDED.pos,
			join_pos = EXCLUDED.join_pos`,
		roomID, pos, us, ms, prevMs, ids, joinPoss)
	return nil
}

// lastPerKey returns the state events of added, one per (type, state
// key): the last, in the order of their last appearance (a statement may
// write a row once).
func lastPerKey(added []StateEvent) []StateEvent {
	type key struct{ typ, stateKey string }
	last := make(map[key]int, len(added))
	for i, st := range added {
		last[key{st.Type, st.StateKey}] = i
	}
	if len(last) == len(added) {
		return added
	}
	out := make([]StateEvent, 0, len(last))
	for i, st := range added {
		if last[key{st.Type, st.StateKey}] == i {
			out = append(out, st)
		}
	}
	return out
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
