package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
)

// PushContext is what push rule evaluation reads about an event's room, as
// of the event. It does not list every member (#20): a joined member with
// the server-default rules, no pusher, not mentioned by the event and not
// its invite's target gets the event's default outcome, which is decided
// once.
type PushContext struct {
	// MemberCount is the number of joined members (room_member_count).
	MemberCount int
	// Members are the joined members evaluated one by one: those with
	// stored push rules or a pusher, and those the event mentions
	// (content.m.mentions.user_ids).
	Members []string
	// RulesPos is the account data position of each of Members' (and the
	// extra user's) stored rules; a user without any has none (0).
	RulesPos map[string]int64
	// Pushers are the members of Members with a pusher.
	Pushers map[string]bool
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

// queuePushContext queues the reads of ev's PushContext, after it changed
// its room's state: its thread, its room's and its mentions'.
func queuePushContext(b *pgx.Batch, ev Event, pc *PushContext) {
	queueThread(b, ev, &pc.Thread)
	queueRoomsPushContext(b, map[string]*PushContext{ev.RoomID: pc}, []string{ev.RoomID})
	if extra := pushExtraUser(ev); extra != "" {
		queueRulesPos(b, extra, pc)
	}
	queueMentioned(b, ev, pc)
}

// with returns the room's context with an event's own additions (its
// mentioned members and an invite target's rules; nil: none) added.
func (pc *PushContext) with(own *PushContext) PushContext {
	out := *pc
	if own == nil {
		return out
	}
	out.Members = slices.Clone(pc.Members)
	for _, u := range own.Members {
		if !slices.Contains(out.Members, u) {
			out.Members = append(out.Members, u)
		}
	}
	out.RulesPos = maps.Clone(pc.RulesPos)
	maps.Copy(out.RulesPos, own.RulesPos)
	return out
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

// queueRulesPos queues the read of the position of user's stored push
// rules into pc.RulesPos.
func queueRulesPos(b *pgx.Batch, user string, pc *PushContext) {
	b.Queue(`SELECT pos FROM account_data WHERE user_id = $1 AND room_id = '' AND type = $2`,
		user, PushRulesType).QueryRow(func(row pgx.Row) error {
		var pos int64
		if err := row.Scan(&pos); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // no stored rules: the defaults
			}
			return err
		}
		pc.RulesPos[user] = pos
		return nil
	})
}

// mentionedUsers returns the user IDs of the event's
// content.m.mentions.user_ids (the strings of it; nothing else can match
// the is_user_mention rule).
func mentionedUsers(js []byte) []string {
	if !bytes.Contains(js, []byte(`m.mentions`)) {
		return nil
	}
	var ev struct {
		Content struct {
			Mentions struct {
				UserIDs []any `json:"user_ids"`
			} `json:"m.mentions"`
		} `json:"content"`
	}
	if json.Unmarshal(js, &ev) != nil {
		return nil
	}
	var out []string
	for _, u := range ev.Content.Mentions.UserIDs {
		if s, ok := u.(string); ok && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// queueMentioned queues the read of the joined members the event mentions
// (and their rules' positions), adding them to pc.Members. pc's room part
// is queued first, so it is read first.
func queueMentioned(b *pgx.Batch, ev Event, pc *PushContext) {
	users := mentionedUsers(ev.JSON)
	if len(users) == 0 {
		return
	}
	b.Queue(`SELECT cs.state_key, ad.pos FROM current_state cs
		LEFT JOIN account_data ad ON ad.user_id = cs.state_key AND ad.room_id = '' AND ad.type = 'm.push_rules'
		WHERE cs.room_id = $1 AND cs.type = 'm.room.member' AND cs.state_key = ANY($2) AND cs.membership = 'join'`,
		ev.RoomID, users).Query(func(rows pgx.Rows) error {
		var user string
		var pos *int64
		_, err := pgx.ForEachRow(rows, []any{&user, &pos}, func() error {
			if !slices.Contains(pc.Members, user) {
				pc.Members = append(pc.Members, user)
			}
			if pos != nil {
				pc.RulesPos[user] = *pos
			}
			return nil
		})
		return err
	})
}

// queueRoomsPushContext queues the reads of the rooms' parts of their
// PushContexts in three statements, whatever their number (a run of a
// batch touches many rooms): the joined members with stored push rules or
// a pusher, found from those users (few) rather than from the members
// (many); the joined member count, from the room's summary unless its
// state changed earlier in the batch (stale: its summary is refreshed at
// the batch's end), when it is counted; and the create and power levels
// events.
func queueRoomsPushContext(b *pgx.Batch, pcs map[string]*PushContext, stale []string) {
	rooms := make([]string, 0, len(pcs))
	for room, pc := range pcs {
		rooms = append(rooms, room)
		pc.RulesPos = map[string]int64{}
		pc.Pushers = map[string]bool{}
	}
	b.Queue(`WITH u AS (
			SELECT user_id FROM account_data WHERE room_id = '' AND type = 'm.push_rules'
			UNION SELECT user_id FROM pushers)
		SELECT cs.room_id, cs.state_key, ad.pos, EXISTS (SELECT 1 FROM pushers p WHERE p.user_id = cs.state_key)
		FROM u JOIN current_state cs ON cs.room_id = ANY($1) AND cs.type = 'm.room.member' AND cs.state_key = u.user_id
		LEFT JOIN account_data ad ON ad.user_id = cs.state_key AND ad.room_id = '' AND ad.type = 'm.push_rules'
		WHERE cs.membership = 'join'`, rooms).Query(func(rows pgx.Rows) error {
		var room, user string
		var pos *int64
		var pusher bool
		_, err := pgx.ForEachRow(rows, []any{&room, &user, &pos, &pusher}, func() error {
			pc := pcs[room]
			pc.Members = append(pc.Members, user)
			if pos != nil {
				pc.RulesPos[user] = *pos
			}
			if pusher {
				pc.Pushers[user] = true
			}
			return nil
		})
		return err
	})
	b.Queue(`SELECT r.room_id, COALESCE(
			CASE WHEN r.room_id = ANY($2) THEN NULL ELSE (SELECT s.joined FROM room_summaries s WHERE s.room_id = r.room_id) END,
			(SELECT count(*) FROM current_state cs WHERE cs.room_id = r.room_id AND cs.type = 'm.room.member' AND cs.membership = 'join'))::int
		FROM unnest($1::text[]) AS r(room_id)`, rooms, stale).Query(func(rows pgx.Rows) error {
		var room string
		var n int
		_, err := pgx.ForEachRow(rows, []any{&room, &n}, func() error {
			pcs[room].MemberCount = n
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
