package store

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// unreadRowsSQL is unread counting as it was before the running counts
// (#20): every notification row after the reader's start, one by one. The
// reference the running counts must equal.
const unreadRowsSQL = `WITH m AS (
		SELECT room_id, join_pos FROM memberships m WHERE m.user_id = $1 AND m.membership = 'join' AND m.room_id = ANY($2)),
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

// Counting unread room-wide notifications from the running counts gives
// exactly what counting the rows one by one gives, at any position:
// through random batches (several events of a room and thread in one, and
// a batch of thousands of unread events), room-wide outcomes with
// per-member exceptions (suppressed, other highlight, own rows where the
// room has none), own events, threaded and unthreaded receipts (some
// before their event), late joins, leaves, redeliveries and retention
// pruning in timestamp order.
func TestUnreadRunningCountsMatchRows(t *testing.T) {
	for _, seed := range []int64{11, 12} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { unreadRunningCountsMatchRows(t, seed) })
	}
}

func unreadRunningCountsMatchRows(t *testing.T, seed int64) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rng := rand.New(rand.NewSource(seed))
	users := []string{"@a:x", "@b:x", "@c:x", "@d:x"}
	rooms := []string{"!r1:x", "!r2:x"}
	threads := []string{"main", "main", "$t1", "$t2"}

	type exc struct {
		suppress, highlight bool
	}
	type plan struct {
		sender, thread string
		room           bool // a room-wide outcome
		highlight      bool
		except         map[string]exc
		ts             int64
	}
	plans := map[string]plan{}
	eval := func(ctx context.Context, rd Reader, a Applied, _ PushContext) (PushOutcome, error) {
		p, ok := plans[a.Event.EventID]
		if !ok {
			return PushOutcome{}, nil
		}
		out := PushOutcome{OwnRead: &OwnRead{UserID: p.sender, RoomID: a.Event.RoomID, ThreadID: p.thread}}
		if p.room {
			out.Room = &RoomNotification{RoomID: a.Event.RoomID, EventID: a.Event.EventID, ThreadID: p.thread, Sender: p.sender,
				Pos: a.Pos, Actions: []byte(`["notify"]`), Highlight: p.highlight, TS: p.ts}
		}
		for _, u := range users {
			if e, ok := p.except[u]; ok && u != p.sender {
				out.Notifications = append(out.Notifications, Notification{UserID: u, RoomID: a.Event.RoomID, EventID: a.Event.EventID,
					ThreadID: p.thread, Pos: a.Pos, Actions: []byte(`["notify"]`), Highlight: e.highlight, TS: p.ts, Suppress: e.suppress})
			}
		}
		return out, nil
	}
	next := 0
	var ts int64
	var stored []Input
	var maxPos int64
	eventID := func(k int) string { return fmt.Sprintf("$e%d", k) }
	newEvent := func(room string) Input {
		k := next
		next++
		ts++
		p := plan{sender: users[rng.Intn(len(users))], thread: threads[rng.Intn(len(threads))], room: rng.Intn(5) > 0,
			highlight: rng.Intn(5) == 0, except: map[string]exc{}, ts: ts}
		for _, u := range users {
			if rng.Intn(6) == 0 {
				p.except[u] = exc{suppress: p.room && rng.Intn(2) == 0, highlight: rng.Intn(3) == 0}
			}
		}
		plans[eventID(k)] = p
		return Input{Event: Event{EventID: eventID(k), RoomID: room, Type: "m.room.message", Sender: p.sender,
			JSON: []byte(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","sender":%q,"content":{}}`, eventID(k), p.sender))}}
	}
	apply := func(batch []Input) {
		t.Helper()
		applied, err := st.ApplyWith(ctx, batch, eval)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range applied {
			maxPos = max(maxPos, a.Pos)
		}
		stored = append(stored, batch...)
	}
	member := func(room, u, membership string) {
		t.Helper()
		key := u
		id := fmt.Sprintf("$m%d", next)
		next++
		js := []byte(`{"type":"m.room.member","state_key":"` + u + `","content":{"membership":"` + membership + `"}}`)
		ms := membership
		apply([]Input{{Event: Event{EventID: id, RoomID: room, Type: "m.room.member", StateKey: &key, Sender: u, Membership: ms, JSON: js},
			Added: []StateEvent{{EventID: id, Type: "m.room.member", StateKey: key, Sender: u, Membership: ms, JSON: js}}}})
	}
	joinRoom(t, st, rooms[0], users...)
	joinRoom(t, st, rooms[1], users[:3]...)

	checks := 0
	check := func(step int) {
		t.Helper()
		for _, u := range users {
			upto := maxPos
			if rng.Intn(3) == 0 && maxPos > 0 {
				upto = rng.Int63n(maxPos + 1)
			}
			got, err := st.Reader().UnreadCounts(ctx, u, rooms, upto)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := st.db.Query(ctx, unreadRowsSQL, u, rooms, upto, userKey(u))
			if err != nil {
				t.Fatal(err)
			}
			var want []UnreadCount
			for rows.Next() {
				var c UnreadCount
				if err := rows.Scan(&c.RoomID, &c.ThreadID, &c.Notify, &c.Highlight); err != nil {
					t.Fatal(err)
				}
				want = append(want, c)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			order := func(a, b UnreadCount) int { return strings.Compare(a.RoomID+" "+a.ThreadID, b.RoomID+" "+b.ThreadID) }
			slices.SortFunc(got, order)
			slices.SortFunc(want, order)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d, %s up to %d: running counts %v, rows %v", step, u, upto, got, want)
			}
			checks++
		}
	}

	for step := 0; step < 300; step++ {
		switch op := rng.Intn(20); {
		case op < 10: // one to four events, often of one room
			var batch []Input
			room := rooms[rng.Intn(len(rooms))]
			for range 1 + rng.Intn(4) {
				if rng.Intn(4) == 0 {
					room = rooms[rng.Intn(len(rooms))]
				}
				batch = append(batch, newEvent(room))
			}
			apply(batch)
		case op < 11 && len(stored) > 0: // a redelivery, sometimes with a new event
			batch := []Input{stored[rng.Intn(len(stored))]}
			if rng.Intn(2) == 0 {
				batch = append(batch, newEvent(rooms[rng.Intn(len(rooms))]))
			}
			apply(batch)
		case op < 12: // d joins or leaves the second room
			member(rooms[1], users[3], []string{"join", "leave"}[rng.Intn(2)])
		case op < 13 && step > 100: // retention: the oldest notifications, in timestamp order
			before := ts - int64(rng.Intn(200)) - 50
			for {
				n, err := st.PruneNotifications(ctx, before, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
			}
		case op == 13 && step < 150: // a reader falls far behind: thousands of events
			var batch []Input
			for range 1500 {
				batch = append(batch, newEvent(rooms[rng.Intn(len(rooms))]))
			}
			apply(batch)
		default: // a receipt, sometimes for an event not stored yet
			k := rng.Intn(next + 2)
			room := rooms[rng.Intn(len(rooms))]
			for _, in := range stored {
				if in.Event.EventID == eventID(k) {
					room = in.Event.RoomID
				}
			}
			thread := []string{"", "", "main", "$t1", "$t2"}[rng.Intn(5)]
			if _, err := st.PutPushReceipt(ctx, PushReceipt{UserID: users[rng.Intn(len(users))], RoomID: room,
				ThreadID: thread, Type: []string{"m.read", "m.read.private"}[rng.Intn(2)], EventID: eventID(k), EPos: int64(step + 1)}); err != nil {
				t.Fatal(err)
			}
		}
		check(step)
	}
	var rn, big int
	if err := st.db.QueryRow(ctx, `SELECT COUNT(*), COALESCE(MAX(cum_count), 0) FROM room_notifications`).Scan(&rn, &big); err != nil {
		t.Fatal(err)
	}
	if rn == 0 || big < 1000 {
		t.Fatalf("the sequence stored %d room rows, a thread's running count reached %d: it does not cover thousands of unread events", rn, big)
	}
	t.Logf("%d checks, %d room rows, running counts up to %d", checks, rn, big)
}

// Migration 045's backfill gives stored rows the running counts, and
// room_threads the totals, that storing them gives.
func TestRunningCountsBackfill(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rng := rand.New(rand.NewSource(5))
	threads := []string{"main", "$t1", "$t2"}
	eval := func(ctx context.Context, rd Reader, a Applied, _ PushContext) (PushOutcome, error) {
		var k int
		fmt.Sscanf(a.Event.EventID, "$e%d", &k)
		return PushOutcome{Room: &RoomNotification{RoomID: a.Event.RoomID, EventID: a.Event.EventID, ThreadID: threads[k%3],
			Sender: "@a:x", Pos: a.Pos, Actions: []byte(`["notify"]`), Highlight: k%4 == 0, TS: 1}}, nil
	}
	next := 0
	for range 20 {
		var batch []Input
		for range 1 + rng.Intn(6) {
			id, room := fmt.Sprintf("$e%d", next), []string{"!r1:x", "!r2:x"}[rng.Intn(2)]
			next++
			batch = append(batch, Input{Event: Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: "@a:x",
				JSON: []byte(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","sender":"@a:x","content":{}}`, id))}})
		}
		if _, err := st.ApplyWith(ctx, batch, eval); err != nil {
			t.Fatal(err)
		}
	}
	const snapshot = `SELECT string_agg(x, ' ' ORDER BY x) FROM (
		SELECT format('%s/%s/%s:%s,%s', room_id, thread_id, pos, cum_count, cum_highlight) AS x FROM room_notifications
		UNION ALL SELECT format('%s/%s<=%s:%s,%s', room_id, thread_id, last_pos, cum_count, cum_highlight) FROM room_threads) s`
	var stored, backfilled string
	if err := st.db.QueryRow(ctx, snapshot).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if _, err := st.db.Exec(ctx, `UPDATE room_notifications SET cum_count = 0, cum_highlight = 0; DELETE FROM room_threads`); err != nil {
		t.Fatal(err)
	}
	sql, err := migrations.ReadFile("migrations/045_room_notifications_cum.sql")
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, stmt := range strings.Split(string(sql), ";") {
		var lines []string
		for _, l := range strings.Split(stmt, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "--") {
				lines = append(lines, l)
			}
		}
		if s := strings.TrimSpace(strings.Join(lines, "\n")); strings.HasPrefix(s, "UPDATE") || strings.HasPrefix(s, "INSERT") {
			if _, err := st.db.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
			ran++
		}
	}
	if err := st.db.QueryRow(ctx, snapshot).Scan(&backfilled); err != nil {
		t.Fatal(err)
	}
	if ran != 2 || backfilled != stored {
		t.Fatalf("%d backfill statements; stored:\n%s\nbackfilled:\n%s", ran, stored, backfilled)
	}
}

// Room rows stored again (a redelivery that was evaluated after all) are
// skipped whole, not counted twice in their thread's totals.
func TestRoomNotificationsStoredTwice(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rns := []RoomNotification{
		{RoomID: "!r:x", EventID: "$1", ThreadID: "main", Sender: "@a:x", Pos: 1, Actions: []byte(`[]`), Highlight: true, TS: 1},
		{RoomID: "!r:x", EventID: "$2", ThreadID: "$t", Sender: "@a:x", Pos: 2, Actions: []byte(`[]`), TS: 1},
		{RoomID: "!r:x", EventID: "$3", ThreadID: "main", Sender: "@a:x", Pos: 3, Actions: []byte(`[]`), TS: 1},
	}
	const snapshot = `SELECT string_agg(x, ' ' ORDER BY x) FROM (
		SELECT format('%s/%s:%s,%s', thread_id, pos, cum_count, cum_highlight) AS x FROM room_notifications
		UNION ALL SELECT format('%s<=%s:%s,%s', thread_id, last_pos, cum_count, cum_highlight) FROM room_threads) s`
	var got []string
	for range 2 {
		b := &pgx.Batch{}
		queueRoomNotifications(b, rns)
		if err := st.db.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := st.db.QueryRow(ctx, snapshot).Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	want := "$t/2:1,0 $t<=2:1,0 main/1:1,1 main/3:2,1 main<=3:2,1"
	if got[0] != want || got[1] != want {
		t.Fatalf("stored once: %s; twice: %s; want %s", got[0], got[1], want)
	}
}
