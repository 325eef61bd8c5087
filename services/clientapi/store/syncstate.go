package store

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Reads for /sync's lazy-loaded members and room summaries, made to stay
// cheap for users in many large rooms: no room's full member list is read.

// StateQuery asks for part of a room's state before the event at
// position Before: every non-member event when NonMember is set, and the
// member events of Members.
type StateQuery struct {
	RoomID    string
	Before    int64
	NonMember bool
	Members   []string
}

// StateBefore answers each query, per room in stream order. The current
// state is rewound: an entry that entered the state at or after Before is
// replaced by the latest event for its key before Before (none: the key
// had no state yet). This follows the room's stream order, which is the
// order the room-server committed its state in.
func (r Reader) StateBefore(ctx context.Context, qs []StateQuery) (map[string][]CurrentStateEvent, error) {
	out := map[string][]CurrentStateEvent{}
	if len(qs) == 0 {
		return out, nil
	}
	var nmRooms []string
	var nmBefore []int64
	var mRooms, mUsers []string
	var mBefore []int64
	before := map[string]int64{}
	for _, q := range qs {
		before[q.RoomID] = q.Before
		if q.NonMember {
			nmRooms = append(nmRooms, q.RoomID)
			nmBefore = append(nmBefore, q.Before)
		}
		for _, u := range q.Members {
			mRooms, mUsers, mBefore = append(mRooms, q.RoomID), append(mUsers, u), append(mBefore, q.Before)
		}
	}
	rows, err := r.q.Query(ctx, `
		SELECT cs.room_id, cs.event_id, cs.type, cs.state_key, cs.sender, COALESCE(cs.membership, ''), cs.event, cs.pos
		FROM unnest($1::text[], $2::bigint[]) AS q(room_id, before_pos)
		JOIN current_state cs ON cs.room_id = q.room_id AND cs.type <> 'm.room.member'
		UNION ALL
		SELECT cs.room_id, cs.event_id, cs.type, cs.state_key, cs.sender, COALESCE(cs.membership, ''), cs.event, cs.pos
		FROM unnest($3::text[], $4::text[]) AS m(room_id, user_id)
		JOIN current_state cs ON cs.room_id = m.room_id AND cs.type = 'm.room.member' AND cs.state_key = m.user_id`,
		nmRooms, nmBefore, mRooms, mUsers)
	if err != nil {
		return nil, err
	}
	type key struct{ room, typ, stateKey string }
	var rewind []key
	err = forEachState(rows, func(room string, e CurrentStateEvent) {
		if e.Pos < before[room] {
			out[room] = append(out[room], e)
		} else {
			rewind = append(rewind, key{room, e.Type, e.StateKey})
		}
	})
	if err != nil {
		return nil, err
	}
	if len(rewind) > 0 {
		rooms, types, keys, bs := make([]string, len(rewind)), make([]string, len(rewind)), make([]string, len(rewind)), make([]int64, len(rewind))
		for i, k := range rewind {
			rooms[i], types[i], keys[i], bs[i] = k.room, k.typ, k.stateKey, before[k.room]
		}
		rows, err := r.q.Query(ctx, `
			SELECT s.room_id, s.event_id, s.type, s.state_key, s.sender, COALESCE(s.membership, ''), s.event, s.pos
			FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(room_id, type, state_key, before_pos)
			CROSS JOIN LATERAL (
				SELECT * FROM sync_events e
				WHERE e.room_id = k.room_id AND e.type = k.type AND e.state_key = k.state_key AND e.pos < k.before_pos
				ORDER BY e.pos DESC LIMIT 1
			) s`, rooms, types, keys, bs)
		if err != nil {
			return nil, err
		}
		if err := forEachState(rows, func(room string, e CurrentStateEvent) { out[room] = append(out[room], e) }); err != nil {
			return nil, err
		}
	}
	for room, events := range out {
		slices.SortFunc(events, func(a, b CurrentStateEvent) int {
			return cmp.Or(cmp.Compare(a.Pos, b.Pos), strings.Compare(a.Type, b.Type), strings.Compare(a.StateKey, b.StateKey))
		})
		out[room] = events
	}
	return out, nil
}

func forEachState(rows pgx.Rows, fn func(room string, e CurrentStateEvent)) error {
	defer rows.Close()
	for rows.Next() {
		var room string
		var e CurrentStateEvent
		if err := rows.Scan(&room, &e.EventID, &e.Type, &e.StateKey, &e.Sender, &e.Membership, &e.JSON, &e.Pos); err != nil {
			return err
		}
		fn(room, e)
	}
	return rows.Err()
}

// RoomSummary is what a /sync room summary is computed from.
type RoomSummary struct {
	Joined, Invited int
	// Named is true when the room has an m.room.name or
	// m.room.canonical_alias event.
	Named bool
	// Heroes are up to 5 joined or invited members other than the user,
	// in the order they entered the state.
	Heroes []string
}

// RoomSummaries reads the kept summaries of rooms (room_summaries), for
// self: self is not among the heroes.
func (r Reader) RoomSummaries(ctx context.Context, rooms []string, self string) (map[string]RoomSummary, error) {
	out := map[string]RoomSummary{}
	b := &Batch{}
	b.RoomSummaries(rooms, self, out)
	return out, r.Send(ctx, b)
}

// RoomSummaries queues Reader.RoomSummaries into out.
func (b *Batch) RoomSummaries(rooms []string, self string, out map[string]RoomSummary) {
	if len(rooms) == 0 {
		return
	}
	b.b.Queue(`SELECT room_id, joined, invited, named, heroes FROM room_summaries WHERE room_id = ANY($1)`, rooms).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var room string
				var s RoomSummary
				var heroes []string
				if err := rows.Scan(&room, &s.Joined, &s.Invited, &s.Named, &heroes); err != nil {
					return err
				}
				for _, h := range heroes {
					if h != self && len(s.Heroes) < maxHeroes {
						s.Heroes = append(s.Heroes, h)
					}
				}
				out[room] = s
			}
			return rows.Err()
		})
}

// maxHeroes is how many heroes a summary names.
const maxHeroes = 5

// queueSummaryRefresh queues the recomputation of the rooms' kept
// summaries from their current state. A room without members, name or
// alias keeps no row.
func queueSummaryRefresh(b *pgx.Batch, rooms []string) {
	b.Queue(`DELETE FROM room_summaries WHERE room_id = ANY($1)`, rooms)
	b.Queue(`INSERT INTO room_summaries (room_id, joined, invited, named, heroes)
		SELECT room_id,
			count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'join'),
			count(*) FILTER (WHERE type = 'm.room.member' AND membership = 'invite'),
			bool_or(type <> 'm.room.member'),
			COALESCE((array_agg(state_key ORDER BY pos, state_key) FILTER (
				WHERE type = 'm.room.member' AND membership IN ('join', 'invite')))[1:$2], '{}')
		FROM current_state
		WHERE room_id = ANY($1) AND type IN ('m.room.member', 'm.room.name', 'm.room.canonical_alias')
		GROUP BY room_id`, rooms, maxHeroes+1)
}
