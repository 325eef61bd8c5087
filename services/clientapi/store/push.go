package store

import (
	"context"
	"crypto/md5"
	"encoding/binary"

	"github.com/jackc/pgx/v5"
)

// Notification is one user's notification for an event, as push rule
// evaluation produced it.
type Notification struct {
	UserID    string
	RoomID    string
	EventID   string
	ThreadID  string // thread root event ID, or "main"
	Pos       int64
	Actions   []byte // JSON array
	Highlight bool
	TS        int64 // ms
	// Suppress marks a member the event's RoomNotification would notify
	// whose own rules do not: the row hides it from them. Its Actions are
	// the member's (no notify action).
	Suppress bool
}

// RoomNotification is an event's default outcome: what it does for a
// joined local member with the server-default push rules whom it does not
// name (room_notifications). Every joined local member but the sender
// receives it, from their join on, unless a Notification of their own
// for the event says otherwise.
type RoomNotification struct {
	RoomID, EventID, ThreadID, Sender string
	Pos                               int64
	Actions                           []byte // JSON array
	Highlight                         bool
	TS                                int64 // ms
}

// OwnRead is a local sender's own event, which reads its thread up to it.
type OwnRead struct {
	UserID, RoomID, ThreadID string
}

// PushOutcome is what evaluating one stored event produced.
type PushOutcome struct {
	// Room is the event's default outcome, nil when it notifies no such
	// member.
	Room *RoomNotification
	// Notifications are the members whose outcome differs from Room's.
	Notifications []Notification
	OwnRead       *OwnRead
}

// Evaluator evaluates a newly stored event inside the transaction that
// stores it; rd reads that transaction (the event and its state included),
// and pc was read there after the event.
type Evaluator func(ctx context.Context, rd Reader, a Applied, pc PushContext) (PushOutcome, error)

// unreadCond is true for a notification n the user has not read: it comes
// after the newest receipt (of any type) that covers its thread, and after
// the user's own newest event in it (own_reads; always threaded).
const unreadCond = `n.pos > COALESCE((SELECT MAX(p) FROM (
		SELECT se.pos AS p FROM push_receipts r JOIN sync_events se ON se.event_id = r.event_id
		WHERE r.user_id = n.user_id AND r.room_id = n.room_id AND (r.thread_id = '' OR r.thread_id = n.thread_id)
		UNION ALL
		SELECT o.pos FROM own_reads o WHERE o.user_id = n.user_id AND o.room_id = n.room_id AND o.thread_id = n.thread_id) rp), 0)`

// userKey is the numeric key notifications are indexed by (migration
// 025): the first 8 bytes of the user ID's MD5, as the migration computes
// it in SQL for the rows it found. Queries compare the IDs too, so IDs
// sharing a key are told apart.
func userKey(userID string) int64 {
	sum := md5.Sum([]byte(userID))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// queueNotifications queues the insert of a batch's notifications. No
// conflict check: a notification is written once, with its newly stored
// event, and nothing else writes the table.
func queueNotifications(b *pgx.Batch, notes []Notification) {
	if len(notes) == 0 {
		return
	}
	// A batch's notifications are a few events times many members, with
	// few distinct actions. Each event, user and actions value is sent
	// once; a row is four numbers: indexes into them (SQL arrays count
	// from 1) and the highlight flag. Sending every row's IDs as text
	// made encoding the statement's parameters the client-API's largest
	// allocation (#5).
	type eventPart struct {
		eventID, roomID, threadID string
		pos, ts                   int64
	}
	var (
		eventIDs, roomIDs, threadIDs []string
		users, actions               stringIndex
		poss, tss, userKeys          []int64
		eventIdx, userIdx, actionIdx = make([]int32, len(notes)), make([]int32, len(notes)), make([]int32, len(notes))
		highlights                   = make([]bool, len(notes))
		notify                       = make([]bool, len(notes))
		eventAt                      = map[eventPart]int32{}
	)
	for i, no := range notes {
		ev := eventPart{no.EventID, no.RoomID, no.ThreadID, no.Pos, no.TS}
		e, ok := eventAt[ev]
		if !ok {
			eventIDs, roomIDs, threadIDs = append(eventIDs, ev.eventID), append(roomIDs, ev.roomID), append(threadIDs, ev.threadID)
			poss, tss = append(poss, ev.pos), append(tss, ev.ts)
			e = int32(len(eventIDs)) // from 1, like stringIndex
			eventAt[ev] = e
		}
		u := users.of(no.UserID)
		if int(u) > len(userKeys) {
			userKeys = append(userKeys, userKey(no.UserID))
		}
		eventIdx[i], userIdx[i], actionIdx[i], highlights[i] = e, u, actions.of(string(no.Actions)), no.Highlight
		notify[i] = !no.Suppress
	}
	b.Queue(`INSERT INTO notifications (user_key, user_id, event_id, room_id, thread_id, pos, actions, highlight, ts, notify)
		SELECT ($1::bigint[])[x.u], ($2::text[])[x.u], ($3::text[])[x.e], ($4::text[])[x.e], ($5::text[])[x.e],
			($6::bigint[])[x.e], ($8::jsonb[])[x.a], x.h, ($7::bigint[])[x.e], x.n
		FROM unnest($9::int[], $10::int[], $11::int[], $12::bool[], $13::bool[]) AS x(u, e, a, h, n)`,
		userKeys, users.list, eventIDs, roomIDs, threadIDs, poss, tss, actions.list, userIdx, eventIdx, actionIdx, highlights, notify)
}

// queueRoomNotifications queues the insert of a batch's events' default
// outcomes, each with its thread's running counts (cum_count,
// cum_highlight: migration 045, unread.go): the thread's new totals
// (room_threads, which the same statement adds the batch's rows to) less
// the batch's rows of the thread after it. That holds because the room
// event consumer is the only writer and stores a room's events one
// transaction at a time, in position order, so a new row comes after
// every stored row of its thread. A redelivered event is not evaluated
// again; a thread's rows that do not end after its last stored row
// (room_threads.last_pos), as rows stored already would, are skipped all
// the same, before they could count twice.
func queueRoomNotifications(b *pgx.Batch, rns []RoomNotification) {
	if len(rns) == 0 {
		return
	}
	var rooms, events, threads, senders, actions []string
	var poss, tss, after, hAfter []int64
	var highlights []bool
	// The batch's totals per thread, and each row's rows and highlights
	// of its thread after it (rows come in position order).
	type thread struct{ room, thread string }
	type total struct {
		n, h, last int64
	}
	totals := map[thread]*total{}
	var order []thread
	for i := len(rns) - 1; i >= 0; i-- {
		r := rns[i]
		k := thread{r.RoomID, r.ThreadID}
		t := totals[k]
		if t == nil {
			t = &total{last: r.Pos}
			totals[k] = t
			order = append(order, k)
		}
		after, hAfter = append(after, t.n), append(hAfter, t.h)
		t.n++
		if r.Highlight {
			t.h++
		}
		t.last = max(t.last, r.Pos)
		rooms, events, threads, senders = append(rooms, r.RoomID), append(events, r.EventID), append(threads, r.ThreadID), append(senders, r.Sender)
		actions, poss, tss, highlights = append(actions, string(r.Actions)), append(poss, r.Pos), append(tss, r.TS), append(highlights, r.Highlight)
	}
	var tRooms, tThreads []string
	var tLast, tN, tH []int64
	for _, k := range order {
		t := totals[k]
		tRooms, tThreads, tLast, tN, tH = append(tRooms, k.room), append(tThreads, k.thread), append(tLast, t.last), append(tN, t.n), append(tH, t.h)
	}
	b.Queue(`WITH t AS (
			INSERT INTO room_threads AS t (room_id, thread_id, last_pos, cum_count, cum_highlight)
			SELECT * FROM unnest($9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[])
			ON CONFLICT (room_id, thread_id) DO UPDATE SET last_pos = EXCLUDED.last_pos,
				cum_count = t.cum_count + EXCLUDED.cum_count, cum_highlight = t.cum_highlight + EXCLUDED.cum_highlight
				WHERE t.last_pos < EXCLUDED.last_pos
			RETURNING t.room_id, t.thread_id, t.cum_count, t.cum_highlight)
		INSERT INTO room_notifications (room_id, pos, event_id, thread_id, sender, actions, highlight, ts, cum_count, cum_highlight)
		SELECT u.room_id, u.pos, u.event_id, u.thread_id, u.sender, u.actions, u.highlight, u.ts,
			t.cum_count - u.after, t.cum_highlight - u.h_after
		FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bool[], $8::bigint[],
				$14::bigint[], $15::bigint[])
			AS u(room_id, pos, event_id, thread_id, sender, actions, highlight, ts, after, h_after)
		JOIN t ON t.room_id = u.room_id AND t.thread_id = u.thread_id
		ON CONFLICT DO NOTHING`,
		rooms, poss, events, threads, senders, actions, highlights, tss, tRooms, tThreads, tLast, tN, tH, after, hAfter)
}

// stringIndex numbers distinct strings in the order first seen, from 1
// (SQL arrays count from 1), for statements that send each string once
// and refer to it by number.
type stringIndex struct {
	list []string
	at   map[string]int32
}

// of returns v's number, adding v when new.
func (x *stringIndex) of(v string) int32 {
	if i, ok := x.at[v]; ok {
		return i
	}
	if x.at == nil {
		x.at = map[string]int32{}
	}
	x.list = append(x.list, v)
	x.at[v] = int32(len(x.list))
	return int32(len(x.list))
}

// PushReceipt is a local user's read receipt, copied from the presence
// service's change stream.
type PushReceipt struct {
	UserID, RoomID, ThreadID, Type, EventID string
	EPos                                    int64 // the presence service's position
}

// PutPushReceipt records a receipt unless a newer one (by presence
// position) is already there, so redelivery and reordering are harmless.
// It reports whether the copy changed.
func (s *Store) PutPushReceipt(ctx context.Context, r PushReceipt) (bool, error) {
	changed := false
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockAccountData, r.UserID); err != nil {
			return err
		}
		// Unread counts are counted from receipts when read (unread.go):
		// nothing else to update.
		tag, err := tx.Exec(ctx, `INSERT INTO push_receipts (user_id, room_id, thread_id, receipt_type, event_id, epos, pos)
			VALUES ($1, $2, $3, $4, $5, $6, nextval('account_data_pos'))
			ON CONFLICT (user_id, room_id, thread_id, receipt_type) DO UPDATE
				SET event_id = EXCLUDED.event_id, epos = EXCLUDED.epos, pos = EXCLUDED.pos
				WHERE push_receipts.epos < EXCLUDED.epos`,
			r.UserID, r.RoomID, r.ThreadID, r.Type, r.EventID, r.EPos)
		changed = err == nil && tag.RowsAffected() > 0
		return err
	})
	return changed, err
}

// receiptChangesSince queues the read of the rooms whose receipt copy for
// the user changed after pos, and the latest such position (pos when
// none), into out.
func (b *Batch) receiptChangesSince(userID string, pos int64, out *AccountDataChanges) {
	out.ReceiptLatest = pos
	b.b.Queue(`SELECT room_id, MAX(pos) FROM push_receipts WHERE user_id = $1 AND pos > $2 GROUP BY room_id`, userID, pos).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var room string
				var p int64
				if err := rows.Scan(&room, &p); err != nil {
					return err
				}
				out.ReceiptRooms = append(out.ReceiptRooms, room)
				out.ReceiptLatest = max(out.ReceiptLatest, p)
			}
			return rows.Err()
		})
}

// NotificationRow is a stored notification with its event, for
// /notifications and the pushers.
type NotificationRow struct {
	Notification
	Read  bool
	Event StoredEvent
}

// NotificationsQuery selects a user's notifications.
type NotificationsQuery struct {
	UserID string
	// Before (exclusive, 0 = no bound) pages newest first; After
	// (exclusive) pages oldest first when Before is 0 and Ascending is set.
	Before, After int64
	Ascending     bool
	OnlyHighlight bool
	Limit         int
}

// Notifications returns notifications with their (current, possibly
// redacted) events: the user's own rows (notify) and their rooms' default
// outcomes (room_notifications) within their last membership (after their
// join, and before they left when they did), not sent by them and not
// overridden by a row of their own. Each part is read page by page, each
// room's walking its (room_id, pos) index from the page's bound.
func (r Reader) Notifications(ctx context.Context, q NotificationsQuery) ([]NotificationRow, error) {
	order := "DESC"
	if q.Ascending {
		order = "ASC"
	}
	rows, err := r.q.Query(ctx, `WITH mine AS (
			SELECT n.user_id, n.event_id, n.room_id, n.thread_id, n.pos, n.actions, n.highlight, n.ts FROM notifications n
			WHERE n.user_key = $6 AND n.user_id = $1 AND n.notify AND ($2 = 0 OR n.pos < $2) AND n.pos > $3 AND (NOT $4 OR n.highlight)
			ORDER BY n.pos `+order+` LIMIT $5),
		roomwide AS (
			SELECT $1::text AS user_id, rn.event_id, rn.room_id, rn.thread_id, rn.pos, rn.actions, rn.highlight, rn.ts
			FROM memberships m CROSS JOIN LATERAL (
				SELECT r.* FROM room_notifications r
				WHERE r.room_id = m.room_id AND r.pos > m.join_pos AND (m.membership = 'join' OR r.pos < m.pos)
					AND ($2 = 0 OR r.pos < $2) AND r.pos > $3 AND (NOT $4 OR r.highlight) AND r.sender <> $1
					AND NOT EXISTS (SELECT 1 FROM notifications x WHERE x.user_key = $6 AND x.pos = r.pos AND x.user_id = $1)
				ORDER BY r.pos `+order+` LIMIT $5) rn
			WHERE m.user_id = $1 AND m.join_pos IS NOT NULL)
		SELECT n.user_id, n.event_id, n.room_id, n.thread_id, n.pos, n.actions, n.highlight, n.ts,
			NOT (`+unreadCond+`), `+qualifiedEventCols+`
		FROM (SELECT * FROM mine UNION ALL SELECT * FROM roomwide) n JOIN sync_events e ON e.event_id = n.event_id
		ORDER BY n.pos `+order+` LIMIT $5`, q.UserID, q.Before, q.After, q.OnlyHighlight, q.Limit, userKey(q.UserID))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (NotificationRow, error) {
		var n NotificationRow
		dest := []any{&n.UserID, &n.EventID, &n.RoomID, &n.ThreadID, &n.Pos, &n.Actions, &n.Highlight, &n.TS, &n.Read}
		e := &n.Event
		dest = append(dest, &e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.JSON, &e.TxnDeviceID, &e.TxnID,
			&e.VisBefore, &e.VisAfter)
		err := row.Scan(dest...)
		return n, err
	})
}

// GlobalAccountData returns one global account data type for each of the
// users that have it (Content and Pos).
func (r Reader) GlobalAccountData(ctx context.Context, users []string, typ string) (map[string]AccountData, error) {
	rows, err := r.q.Query(ctx, `SELECT user_id, content, pos FROM account_data WHERE user_id = ANY($1) AND room_id = '' AND type = $2`, users, typ)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]AccountData{}
	for rows.Next() {
		var u string
		a := AccountData{Type: typ}
		if err := rows.Scan(&u, &a.Content, &a.Pos); err != nil {
			return nil, err
		}
		out[u] = a
	}
	return out, rows.Err()
}

// PruneNotifications deletes up to batch notifications (of both tables)
// whose event's timestamp is before before (ms) and reports how many it
// deleted. Unread counts are counted from what is left, so a notification
// older than the retention no longer counts; a room's default outcome and
// a member's own row for the same event have the same timestamp and go
// together.
func (s *Store) PruneNotifications(ctx context.Context, before int64, batch int) (int64, error) {
	var n int64
	for _, table := range []string{"room_notifications", "notifications"} {
		tag, err := s.db.Exec(ctx, `DELETE FROM `+table+` WHERE ctid = ANY(ARRAY(
			SELECT ctid FROM `+table+` WHERE ts < $1 LIMIT $2))`, before, batch-int(n))
		if err != nil {
			return n, err
		}
		if n += tag.RowsAffected(); n >= int64(batch) {
			break
		}
	}
	return n, nil
}
