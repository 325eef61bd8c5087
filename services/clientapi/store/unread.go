package store

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Unread counts are counted when read, not kept per member (#20). A user's
// unread notifications in a thread of a joined room are
//
//   - the room's default outcomes (room_notifications) in that thread,
//     except those the user has a row of their own for in notifications;
//   - plus the user's own rows in notifications with notify set;
//
// counting only those after the user's join (memberships.join_pos) and
// after the newest receipt covering the thread: an unthreaded receipt, a
// receipt of the thread, or the user's own newest event in it (own_reads).
// The user's own events are never counted: each is an own read of its
// thread. So storing a message writes one row whatever the room's size,
// plus a row per member whose outcome differs; a receipt writes only
// itself; and a /sync counts the notifications after the reader's
// receipts, which an index range of the room's rows finds.

type ownReadKey struct{ user, room, thread string }

// ownReads are the last own event per (user, room, thread) of a batch.
type ownReads map[ownReadKey]int64

// add folds in the outcome of the event stored at pos, in stream order.
func (o ownReads) add(out PushOutcome, pos int64) {
	if r := out.OwnRead; r != nil {
		o[ownReadKey{r.UserID, r.RoomID, r.ThreadID}] = pos
	}
}

// queue queues the batch's own reads.
func (o ownReads) queue(b *pgx.Batch) {
	if len(o) == 0 {
		return
	}
	var us, rs, ts []string
	var ps []int64
	for k, p := range o {
		us, rs, ts, ps = append(us, k.user), append(rs, k.room), append(ts, k.thread), append(ps, p)
	}
	b.Queue(`INSERT INTO own_reads (user_id, room_id, thread_id, pos)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
		ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET pos = GREATEST(own_reads.pos, EXCLUDED.pos)`,
		us, rs, ts, ps)
}

// UnreadCount is the unread notifications of one thread of a room.
type UnreadCount struct {
	RoomID, ThreadID  string
	Notify, Highlight int
}

// unreadSQL counts a user's ($1, user key $4) unread notifications per
// room and thread, up to position $3, in the joined rooms the filter {{rooms}}
// of m selects. rc is the newest receipt or own read per room and
// thread (” = unthreaded, covering every thread); lo is where a room's
// counting starts: the join or the unthreaded receipt.
const unreadSQL = `WITH m AS (
		SELECT room_id, join_pos FROM memberships m WHERE m.user_id = $1 AND m.membership = 'join' AND {{rooms}}),
	rc AS (
		SELECT room_id, thread_id, MAX(pos) AS pos FROM (
			SELECT r.room_id, r.thread_id, se.pos FROM push_receipts r JOIN sync_events se ON se.event_id = r.event_id
			WHERE r.user_id = $1 AND r.room_id IN (SELECT room_id FROM m)
			UNION ALL
			SELECT room_id, thread_id, pos FROM own_reads WHERE user_id = $1 AND room_id IN (SELECT room_id FROM m)) x
		GROUP BY room_id, thread_id),
	lo AS (
		SELECT m.room_id, GREATEST(COALESCE(m.join_pos, 0), (SELECT rc.pos FROM rc WHERE rc.room_id = m.room_id AND rc.thread_id = '')) AS pos
		FROM m),
	n AS (
		SELECT r.room_id, r.thread_id, r.pos, true AS notify, r.highlight
		FROM lo JOIN room_notifications r ON r.room_id = lo.room_id AND r.pos > lo.pos AND r.pos <= $3
		WHERE NOT EXISTS (SELECT 1 FROM notifications x WHERE x.user_key = $4 AND x.pos = r.pos AND x.user_id = $1)
		UNION ALL
		SELECT x.room_id, x.thread_id, x.pos, x.notify, x.highlight
		FROM lo JOIN notifications x ON x.user_key = $4 AND x.pos > lo.pos AND x.pos <= $3 AND x.user_id = $1 AND x.room_id = lo.room_id)
	SELECT n.room_id, n.thread_id, (COUNT(*))::int, (COUNT(*) FILTER (WHERE n.highlight))::int
	FROM n LEFT JOIN rc ON rc.room_id = n.room_id AND rc.thread_id = n.thread_id
	WHERE n.notify AND n.pos > COALESCE(rc.pos, 0)
	GROUP BY n.room_id, n.thread_id`

// UnreadCounts returns the user's unread notification counts per room and
// thread for the given rooms (those of them the user is joined to),
// counting events up to position upto. One statement, so every part reads
// the same snapshot.
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
	b.b.Queue(strings.Replace(unreadSQL, "{{rooms}}", "m.room_id = ANY($2)", 1), userID, rooms, upto, userKey(userID)).
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
	err := r.q.QueryRow(ctx, `SELECT COALESCE(SUM(c.notify), 0)::int FROM (`+strings.Replace(unreadSQL, "{{rooms}}", "$2::text IS NULL", 1)+`) AS c(room_id, thread_id, notify, highlight)`,
		userID, nil, int64(1)<<62, userKey(userID)).Scan(&n)
	return n, err
}
