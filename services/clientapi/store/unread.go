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
// itself.
//
// A /sync's count does not walk the unread rows: a room thread's rows in a
// range of positions are the difference of the running counts
// (room_notifications.cum_count, cum_highlight; migration 045) of the
// range's last row and of the row before its first, so each thread with a
// row after the reader's start (room_threads) costs two index probes. Only
// the user's own rows in the range are read one by one, to add those that
// notify and take off the room rows they override: they are the members
// whose rules differ from the defaults, mentions and invites.
//
// Retention pruning deletes rows by age (PruneNotifications), which is
// position order but for events whose timestamps are out of order. A
// count takes the running count before its first remaining row in range,
// so rows pruned before it do not count, as before. A room row pruned
// while an earlier row of its thread, within the reader's unread range,
// is still stored (an event with an earlier position but a later
// timestamp, or the moments while a prune is part way through) still
// counts until that earlier row is pruned too.

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
// counting starts: the join or the unthreaded receipt; t is each room
// thread with a row after lo, and where its counting starts (lo or its
// thread's receipt). rw counts t's room rows in range from their running
// counts: from the first row after the start (less itself) to the last up
// to $3. x is the user's own rows in range with the room row each
// overrides, if any: a room row in range overridden by a row of the user's
// is taken off its thread, and the user's rows that notify are added to
// theirs.
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
	t AS (
		SELECT lo.room_id, th.thread_id, GREATEST(lo.pos, COALESCE(rc.pos, 0)) AS start
		FROM lo JOIN room_threads th ON th.room_id = lo.room_id AND th.last_pos > lo.pos
		LEFT JOIN rc ON rc.room_id = th.room_id AND rc.thread_id = th.thread_id),
	rw AS (
		SELECT t.room_id, t.thread_id, z.cum_count - a.cum_count + 1 AS n, z.cum_highlight - a.cum_highlight + a.highlight::int AS h
		FROM t
		CROSS JOIN LATERAL (SELECT r.pos, r.cum_count, r.cum_highlight, r.highlight FROM room_notifications r
			WHERE r.room_id = t.room_id AND r.thread_id = t.thread_id AND r.pos > t.start AND r.pos <= $3
			ORDER BY r.pos LIMIT 1) a
		CROSS JOIN LATERAL (SELECT r.cum_count, r.cum_highlight FROM room_notifications r
			WHERE r.room_id = t.room_id AND r.thread_id = t.thread_id AND r.pos >= a.pos AND r.pos <= $3
			ORDER BY r.pos DESC LIMIT 1) z),
	x AS (
		SELECT x.room_id, x.thread_id, x.pos, x.notify, x.highlight, r.thread_id AS r_thread, r.highlight AS r_highlight
		FROM lo JOIN notifications x ON x.user_key = $4 AND x.pos > lo.pos AND x.pos <= $3 AND x.user_id = $1 AND x.room_id = lo.room_id
		LEFT JOIN room_notifications r ON r.room_id = x.room_id AND r.pos = x.pos),
	d AS (
		SELECT room_id, thread_id, n, h FROM rw
		UNION ALL
		SELECT x.room_id, x.r_thread, -1, -(x.r_highlight::int)
		FROM x LEFT JOIN rc ON rc.room_id = x.room_id AND rc.thread_id = x.r_thread
		WHERE x.r_thread IS NOT NULL AND x.pos > COALESCE(rc.pos, 0)
		UNION ALL
		SELECT x.room_id, x.thread_id, 1, x.highlight::int
		FROM x LEFT JOIN rc ON rc.room_id = x.room_id AND rc.thread_id = x.thread_id
		WHERE x.notify AND x.pos > COALESCE(rc.pos, 0))
	SELECT room_id, thread_id, SUM(n)::int, SUM(h)::int
	FROM d
	GROUP BY room_id, thread_id
	HAVING SUM(n) > 0`

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
