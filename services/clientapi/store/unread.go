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
	lo0 AS (
		SELECT m.room_id, GREATEST(COALESCE(m.join_pos, 0), (SELECT rc.pos FROM rc WHERE rc.room_id = m.room_id AND rc.thread_id = '')) AS pos
		FROM m),
	lo AS ({{lo}}),
	n AS (
		SELECT r.room_id, r.thread_id, r.pos, true AS notify, r.highlight
		FROM lo JOIN room_notifications r ON r.room_id = lo.room_id AND r.pos > lo.start AND r.pos <= $3
		WHERE NOT EXISTS (SELECT 1 FROM notifications x WHERE x.user_key = $4 AND x.pos = r.pos AND x.user_id = $1)
		UNION ALL
		SELECT x.room_id, x.thread_id, x.pos, x.notify, x.highlight
		FROM lo JOIN notifications x ON x.user_key = $4 AND x.pos > lo.start AND x.pos <= $3 AND x.user_id = $1 AND x.room_id = lo.room_id)
	SELECT n.room_id, n.thread_id, (COUNT(*))::int, (COUNT(*) FILTER (WHERE n.highlight))::int{{cols}}
	FROM n LEFT JOIN rc ON rc.room_id = n.room_id AND rc.thread_id = n.thread_id
	WHERE n.notify AND n.pos > COALESCE(rc.pos, 0)
	GROUP BY n.room_id, n.thread_id{{more}}`

// unreadQuery is unreadSQL counting from each room's start (lo.pos: the
// join or the unthreaded receipt), for the rooms the condition on m
// selects.
func unreadQuery(rooms string) string {
	return strings.NewReplacer("{{rooms}}", rooms, "{{lo}}", `SELECT room_id, pos, pos AS start FROM lo0`,
		"{{cols}}", "", "{{more}}", "").Replace(unreadSQL)
}

// unreadSinceSQL is unreadSQL for the rooms $2 that, for a room of the
// bases ($5 room, $6 position, $7 key) whose receipts and join are still
// those the base was counted against (its key) and whose position is not
// after $3, counts only from the base's position: counts are sums over
// positions, and while the receipts and the join stay, what the base
// counted stays too, so the base's counts plus these are the counts up to
// $3. Every room also gets a row with a NULL thread: its key now, and
// whether it was counted from its base.
var unreadSinceSQL = strings.NewReplacer("{{rooms}}", "m.room_id = ANY($2)",
	"{{lo}}", `SELECT l.room_id, l.pos, k.key,
			CASE WHEN b.key = k.key AND b.upto <= $3 THEN GREATEST(b.upto, l.pos) ELSE l.pos END AS start,
			COALESCE(b.key = k.key AND b.upto <= $3, false) AS incremental
		FROM lo0 l
		CROSS JOIN LATERAL (SELECT l.pos::text || ':' || COALESCE((SELECT md5(json_agg(json_build_array(rc.thread_id, rc.pos)
			ORDER BY rc.thread_id)::text) FROM rc WHERE rc.room_id = l.room_id), '') AS key) k
		LEFT JOIN unnest($5::text[], $6::bigint[], $7::text[]) AS b(room_id, upto, key) ON b.room_id = l.room_id`,
	"{{cols}}", ", NULL::text, NULL::bool",
	"{{more}}", `
	UNION ALL SELECT room_id, NULL, 0, 0, key, incremental FROM lo`).Replace(unreadSQL)

// UnreadBase is a room's unread counts up to Upto, with the key of the
// receipts and join they were counted against (UnreadCountsSince).
type UnreadBase struct {
	Upto   int64
	Key    string
	Counts []UnreadCount
	// Incremental says these counts were counted on from an earlier base.
	Incremental bool
}

// UnreadCountsSince is UnreadCounts that starts from earlier counts: a
// room of bases whose receipts and join have not changed since (and whose
// base is not after upto) is counted only after its base. out gets every
// counted room's counts up to upto and their new base.
func (b *Batch) UnreadCountsSince(userID string, rooms []string, upto int64, bases map[string]UnreadBase, out map[string]UnreadBase) {
	if len(rooms) == 0 {
		return
	}
	var bRooms, bKeys []string
	var bUpto []int64
	for room, base := range bases {
		bRooms, bUpto, bKeys = append(bRooms, room), append(bUpto, base.Upto), append(bKeys, base.Key)
	}
	b.b.Queue(unreadSinceSQL, userID, rooms, upto, userKey(userID), bRooms, bUpto, bKeys).
		Query(func(rows pgx.Rows) error {
			counts := map[string][]UnreadCount{}
			for rows.Next() {
				var c UnreadCount
				var thread, key *string
				var incremental *bool
				if err := rows.Scan(&c.RoomID, &thread, &c.Notify, &c.Highlight, &key, &incremental); err != nil {
					return err
				}
				if thread != nil {
					c.ThreadID = *thread
					counts[c.RoomID] = append(counts[c.RoomID], c)
					continue
				}
				nb := UnreadBase{Upto: upto, Key: *key, Incremental: *incremental}
				if *incremental {
					nb.Counts = append(nb.Counts, bases[c.RoomID].Counts...)
				}
				out[c.RoomID] = nb
			}
			if err := rows.Err(); err != nil {
				return err
			}
			for room, cs := range counts {
				nb := out[room]
			add:
				for _, c := range cs {
					for i := range nb.Counts {
						if nb.Counts[i].ThreadID == c.ThreadID {
							nb.Counts[i].Notify += c.Notify
							nb.Counts[i].Highlight += c.Highlight
							continue add
						}
					}
					nb.Counts = append(nb.Counts, c)
				}
				out[room] = nb
			}
			return nil
		})
}

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
	b.b.Queue(unreadQuery("m.room_id = ANY($2)"), userID, rooms, upto, userKey(userID)).
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
	err := r.q.QueryRow(ctx, `SELECT COALESCE(SUM(c.notify), 0)::int FROM (`+unreadQuery("$2::text IS NULL")+`) AS c(room_id, thread_id, notify, highlight)`,
		userID, nil, int64(1)<<62, userKey(userID)).Scan(&n)
	return n, err
}
