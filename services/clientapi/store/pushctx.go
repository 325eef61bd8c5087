package store

import (
	"errors"

	"github.com/jackc/pgx/v5"
)

// PushContext is what push rule evaluation reads about an event's room, as
// of the event.
type PushContext struct {
	// Members are the room's joined users.
	Members []string
	// RulesPos is the account data position of each member's (and the
	// extra user's) stored rules; a user without any has none (0).
	RulesPos map[string]int64
	// Create and PowerLevels are the room's create and power levels
	// events in client format (nil when absent).
	Create, PowerLevels []byte
	// Thread is the root of the event's thread: of its m.thread relation,
	// or of the nearest ancestor's within maxThreadHops; empty for the
	// main timeline (thread roots included).
	Thread string
}

// relThread is the thread relation type.
const relThread = "m.thread"

// maxThreadHops bounds the walk up relations to find an event's thread.
const maxThreadHops = 3

// PushRulesType is the account data type of push rules.
const PushRulesType = "m.push_rules"

// queuePushContext queues the reads of ev's PushContext: its thread and
// its room's (queueRoomPushContext).
func queuePushContext(b *pgx.Batch, ev Event, pc *PushContext) {
	queueThread(b, ev, &pc.Thread)
	queueRoomPushContext(b, ev.RoomID, pushExtraUser(ev), pc)
}

// pushExtraUser is the user besides the joined members whose rules an
// event's evaluation needs: the target of an invite, a recipient too.
// Whether a user is local is the evaluator's business, so any target is
// read.
func pushExtraUser(ev Event) string {
	if ev.Type == typeMember && ev.Membership == MembershipInvite && ev.StateKey != nil && *ev.StateKey != ev.Sender {
		return *ev.StateKey
	}
	return ""
}

// queueRoomPushContext queues the reads of the room's part of a
// PushContext (all but Thread): the joined members, the positions of their
// (and extraUser's, when not empty) stored push rules, and the create and
// power levels events.
func queueRoomPushContext(b *pgx.Batch, roomID, extraUser string, pc *PushContext) {
	queueRoomsPushContext(b, map[string]*PushContext{roomID: pc})
	if extraUser == "" {
		return
	}
	b.Queue(`SELECT pos FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2`,
		extraUser, PushRulesType).QueryRow(func(row pgx.Row) error {
		var pos int64
		if err := row.Scan(&pos); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // no stored rules: the defaults
			}
			return err
		}
		pc.RulesPos[extraUser] = pos
		return nil
	})
}

// queueRoomsPushContext queues the reads of the rooms' parts of their
// PushContexts (queueRoomPushContext without an extra user) in two
// statements, whatever their number: a run of a batch touches many rooms,
// and a statement per room was most of the consumer's statements.
func queueRoomsPushContext(b *pgx.Batch, pcs map[string]*PushContext) {
	rooms := make([]string, 0, len(pcs))
	for room, pc := range pcs {
		rooms = append(rooms, room)
		pc.RulesPos = map[string]int64{}
	}
	b.Queue(`SELECT cs.room_id, cs.state_key, ad.pos FROM current_state cs
		LEFT JOIN account_data ad ON ad.user_id = cs.state_key AND ad.room_id = '' AND ad.type = $2
		WHERE cs.room_id = ANY($1) AND cs.type = 'm.room.member' AND cs.membership = 'join'`,
		rooms, PushRulesType).Query(func(rows pgx.Rows) error {
		var room, user string
		var pos *int64
		_, err := pgx.ForEachRow(rows, []any{&room, &user, &pos}, func() error {
			pc := pcs[room]
			pc.Members = append(pc.Members, user)
			if pos != nil {
				pc.RulesPos[user] = *pos
			}
			return nil
		})
		return err
	})
	b.Queue(`SELECT room_id, type, event FROM current_state
		WHERE room_id = ANY($1) AND type IN ('m.room.create', 'm.room.power_levels') AND state_key = ''`,
		rooms).Query(func(rows pgx.Rows) error {
		var room, typ string
		var ev []byte
		_, err := pgx.ForEachRow(rows, []any{&room, &typ, &ev}, func() error {
			if typ == "m.room.create" {
				pcs[room].Create = ev
			} else {
				pcs[room].PowerLevels = ev
			}
			return nil
		})
		return err
	})
}

// queueThread finds the event's thread (PushContext.Thread): its own
// relation decides at once; otherwise its ancestors' relations are read,
// one query for the remaining hops.
func queueThread(b *pgx.Batch, ev Event, thread *string) {
	switch {
	case ev.RelatesTo == "":
		return
	case ev.RelType == relThread:
		*thread = ev.RelatesTo
		return
	}
	b.Queue(`WITH RECURSIVE up(to_id, typ, hop) AS (
			SELECT relates_to, rel_type, 1 FROM event_relations WHERE event_id = $1
			UNION ALL
			SELECT r.relates_to, r.rel_type, up.hop + 1 FROM up JOIN event_relations r ON r.event_id = up.to_id
			WHERE up.typ <> $2 AND up.hop + 1 < $3)
		SELECT to_id FROM up WHERE typ = $2 AND to_id <> '' ORDER BY hop LIMIT 1`,
		ev.RelatesTo, relThread, maxThreadHops).QueryRow(func(row pgx.Row) error {
		err := row.Scan(thread)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
}
