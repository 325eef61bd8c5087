package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Unread counts: unread_counts holds, per (user, room, thread), how many of
// the user's notifications satisfy unreadCond, i.e. come after the newest
// receipt covering their thread. Three writers keep that true:
//
//   - storing an event's notifications adds one per row (they are the
//     newest position, so no receipt covers them yet);
//   - a local user's own event is a receipt for its thread at the newest
//     position: it clears that thread's count;
//   - a receipt that moves (PutPushReceipt), or a stored event that earlier
//     receipts already named, recounts the threads that receipt covers (of
//     that user's room) from the tables.
//
// The room event consumer gathers the first two over its whole batch
// (unreadDelta, which also writes the own events' reads, own_reads) and
// writes them with one round trip at the end of its transaction. Every writer first takes unreadLock, held to commit, so a
// recount never overwrites an increment it could not see.

// unreadLock is the transaction-level advisory lock of unread count writers.
const unreadLock = `SELECT pg_advisory_xact_lock(hashtext('myelin.clientapi.unread_counts'))`

type unreadKey struct{ user, room, thread string }

type unreadChange struct {
	// ownPos, when set, is the position of the last own event of the
	// key's user in the thread: it cleared the count first and is their
	// own read.
	ownPos            int64
	notify, highlight int
}

// unreadDelta is what a batch of stored events does to the counts.
type unreadDelta map[unreadKey]*unreadChange

func newUnreadDelta() unreadDelta { return unreadDelta{} }

// add folds in the outcome of the event stored at pos, in stream order.
func (d unreadDelta) add(out PushOutcome, pos int64) {
	if o := out.OwnRead; o != nil {
		d[unreadKey{o.UserID, o.RoomID, o.ThreadID}] = &unreadChange{ownPos: pos}
	}
	for _, n := range out.Notifications {
		k := unreadKey{n.UserID, n.RoomID, n.ThreadID}
		c := d[k]
		if c == nil {
			c = &unreadChange{}
			d[k] = c
		}
		c.notify++
		if n.Highlight {
			c.highlight++
		}
	}
}

// queue queues, under unreadLock, the batch's own reads and count
// changes, and the query for receipts that named one of the batch's
// events before it was stored (a receipt for an unknown event covers
// nothing until its event arrives): their rooms are recounted once the
// batch has run.
func (d unreadDelta) queue(b *pgx.Batch, inputs []Input) *earlyReceipts {
	var resetU, resetR, resetT []string
	var resetP []int64
	// The additions are many (notified members times rooms), so each
	// user, room and thread ID is sent once and a row refers to them.
	var users, rooms, threads stringIndex
	var addU, addR, addT, addN, addH []int32
	for k, c := range d {
		if c.ownPos != 0 {
			resetU, resetR, resetT, resetP = append(resetU, k.user), append(resetR, k.room), append(resetT, k.thread), append(resetP, c.ownPos)
		}
		if c.notify > 0 || c.highlight > 0 {
			addU, addR, addT = append(addU, users.of(k.user)), append(addR, rooms.of(k.room)), append(addT, threads.of(k.thread))
			addN, addH = append(addN, int32(c.notify)), append(addH, int32(c.highlight))
		}
	}
	ids := make([]string, len(inputs))
	for i, in := range inputs {
		ids[i] = in.Event.EventID
	}
	b.Queue(unreadLock)
	if len(resetU) > 0 {
		b.Queue(`INSERT INTO own_reads (user_id, room_id, thread_id, pos)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
			ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET pos = EXCLUDED.pos`,
			resetU, resetR, resetT, resetP)
		// Zeroed, not deleted: the row is counted up again by the next
		// notification, and updating it in place (no indexed column
		// changes) spares the index the entries a delete and re-insert
		// would cost. Readers skip zero counts.
		b.Queue(`UPDATE unread_counts c SET notify = 0, highlight = 0 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(u, r, t)
			WHERE c.user_id = x.u AND c.room_id = x.r AND c.thread_id = x.t AND (c.notify <> 0 OR c.highlight <> 0)`, resetU, resetR, resetT)
	}
	if len(addU) > 0 {
		b.Queue(`INSERT INTO unread_counts (user_id, room_id, thread_id, notify, highlight)
			SELECT ($1::text[])[x.u], ($2::text[])[x.r], ($3::text[])[x.t], x.n, x.h
			FROM unnest($4::int[], $5::int[], $6::int[], $7::int[], $8::int[]) AS x(u, r, t, n, h)
			ON CONFLICT (user_id, room_id, thread_id) DO UPDATE
				SET notify = unread_counts.notify + EXCLUDED.notify, highlight = unread_counts.highlight + EXCLUDED.highlight`,
			users.list, rooms.list, threads.list, addU, addR, addT, addN, addH)
	}
	early := &earlyReceipts{}
	b.Queue(`SELECT DISTINCT user_id, room_id, thread_id FROM push_receipts WHERE event_id = ANY($1)`, ids).Query(func(rows pgx.Rows) error {
		var err error
		early.threads, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) ([3]string, error) {
			var p [3]string
			err := r.Scan(&p[0], &p[1], &p[2])
			return p, err
		})
		return err
	})
	return early
}

// earlyReceipts are the (user, room, receipt thread) a batch's events were
// named by in receipts that came first.
type earlyReceipts struct{ threads [][3]string }

func (e *earlyReceipts) recount(ctx context.Context, tx pgx.Tx) error {
	for _, p := range e.threads {
		if err := recountUnread(ctx, tx, p[0], p[1], p[2]); err != nil {
			return err
		}
	}
	return nil
}

// recountUnread recomputes a user's counts in a room, for the threads a
// receipt of the given thread covers (every thread when it is empty,
// unthreaded), from notifications and receipts. The other threads' counts
// do not depend on that receipt. The notifications read are the user's
// after that receipt (or the unthreaded one, when newer): an index range
// from the receipt's position. Caller holds unreadLock.
func recountUnread(ctx context.Context, tx pgx.Tx, userID, roomID, thread string) error {
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM unread_counts WHERE user_id = $1 AND room_id = $2 AND ($3 = '' OR thread_id = $3)`, userID, roomID, thread)
	// rc: the newest receipt or own read position per thread ('' =
	// unthreaded, which covers every thread).
	b.Queue(`WITH rc AS (
			SELECT thread_id, MAX(pos) AS pos FROM (
				SELECT r.thread_id, se.pos FROM push_receipts r JOIN sync_events se ON se.event_id = r.event_id
				WHERE r.user_id = $1 AND r.room_id = $2
				UNION ALL
				SELECT thread_id, pos FROM own_reads WHERE user_id = $1 AND room_id = $2) x
			GROUP BY thread_id)
		INSERT INTO unread_counts (user_id, room_id, thread_id, notify, highlight)
		SELECT $1, $2, n.thread_id, COUNT(*), COUNT(*) FILTER (WHERE n.highlight)
		FROM notifications n LEFT JOIN rc ON rc.thread_id = n.thread_id
		WHERE n.user_key = $3 AND n.user_id = $1 AND n.room_id = $2 AND ($4 = '' OR n.thread_id = $4)
			AND n.pos > (SELECT COALESCE(MAX(pos), 0) FROM rc WHERE thread_id IN ('', $4))
			AND n.pos > COALESCE(rc.pos, 0)
		GROUP BY n.thread_id`, userID, roomID, userKey(userID), thread)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recount unread notifications of %s in %s: %w", userID, roomID, err)
	}
	return nil
}

// UnreadCounts returns the user's unread notification counts per room and
// thread for the given rooms, counting events up to position upto: the
// kept counts, less the unread notifications stored after upto (few: only
// those committed while the caller's /sync was being built). One
// statement, so both parts read the same snapshot.
func (r Reader) UnreadCounts(ctx context.Context, userID string, rooms []string, upto int64) ([]UnreadCount, error) {
	var out []UnreadCount
	b := &Batch{}
	b.UnreadCounts(userID, rooms, upto, &out)
	return out, r.Send(ctx, b)
}

// UnreadCounts queues Reader.UnreadCounts, appending to out.
func (b *Batch) UnreadCounts(userID string, rooms []string, upto int64, out *[]UnreadCount) {
	if len(rooms) == 0 {
		return
	}
	b.b.Queue(`SELECT room_id, thread_id, SUM(notify)::int, SUM(highlight)::int FROM (
			SELECT room_id, thread_id, notify, highlight FROM unread_counts WHERE user_id = $1 AND room_id = ANY($2)
			UNION ALL
			SELECT n.room_id, n.thread_id, -COUNT(*), -COUNT(*) FILTER (WHERE n.highlight)
			FROM notifications n WHERE n.user_key = $4 AND n.user_id = $1 AND n.pos > $3 AND n.room_id = ANY($2) AND `+unreadCond+`
			GROUP BY n.room_id, n.thread_id
		) c GROUP BY room_id, thread_id HAVING SUM(notify) > 0 OR SUM(highlight) > 0`, userID, rooms, upto, userKey(userID)).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var c UnreadCount
				if err := rows.Scan(&c.RoomID, &c.ThreadID, &c.Notify, &c.Highlight); err != nil {
					return err
				}
				*out = append(*out, c)
			}
			return rows.Err()
		})
}

// UnreadTotal is the user's unread notifications over the rooms they are
// joined to (the push gateway's badge count).
func (r Reader) UnreadTotal(ctx context.Context, userID string) (int, error) {
	var n int
	err := r.q.QueryRow(ctx, `SELECT COALESCE(SUM(c.notify), 0) FROM unread_counts c
		JOIN memberships m ON m.user_id = c.user_id AND m.room_id = c.room_id AND m.membership = 'join'
		WHERE c.user_id = $1`, userID).Scan(&n)
	return n, err
}
