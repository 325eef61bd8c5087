package store

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// The kept unread counts always equal counting the notifications one by
// one (the definition, unreadCond), at any /sync position, through a random
// mix of batches of notifications, own events, threaded and unthreaded receipts,
// receipts that arrive before their event, and redeliveries.
// Several seeds: one sequence rarely meets every case (a threaded receipt
// older than the unthreaded one, say).
func TestUnreadCountsMatchDefinition(t *testing.T) {
	for _, seed := range []int64{7, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { unreadCountsMatchDefinition(t, seed) })
	}
}

func unreadCountsMatchDefinition(t *testing.T, seed int64) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	rng := rand.New(rand.NewSource(seed))
	users := []string{"@a:x", "@b:x", "@c:x"}
	rooms := []string{"!r1:x", "!r2:x"}
	threads := []string{"main", "$t1", "$t2"}
	// The evaluator notifies every user but the sender, in the event's
	// thread, highlighting some; the sender's own event reads its thread.
	type plan struct {
		sender, thread string
		highlight      map[string]bool
	}
	plans := map[string]plan{}
	eval := func(ctx context.Context, rd Reader, a Applied, _ PushContext) (PushOutcome, error) {
		p := plans[a.Event.EventID]
		out := PushOutcome{OwnRead: &OwnRead{UserID: p.sender, RoomID: a.Event.RoomID, ThreadID: p.thread}}
		for _, u := range users {
			if u != p.sender {
				out.Notifications = append(out.Notifications, Notification{UserID: u, RoomID: a.Event.RoomID,
					EventID: a.Event.EventID, ThreadID: p.thread, Pos: a.Pos, Actions: []byte(`["notify"]`),
					Highlight: p.highlight[u], TS: 1})
			}
		}
		return out, nil
	}
	var stored []Input
	next := 0
	eventID := func(k int) string { return fmt.Sprintf("$e%d", k) }
	input := func(k int, room string) Input {
		return Input{Event: Event{EventID: eventID(k), RoomID: room, Type: "m.room.message", Sender: plans[eventID(k)].sender,
			JSON: []byte(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","sender":%q,"content":{}}`, eventID(k), plans[eventID(k)].sender))}}
	}
	epos := int64(0)
	var maxPos int64
	for _, r := range rooms {
		joinRoom(t, st, r, users...)
	}

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
			rows, err := st.db.Query(ctx, `SELECT n.room_id, n.thread_id, COUNT(*)::int, (COUNT(*) FILTER (WHERE n.highlight))::int
				FROM notifications n WHERE n.user_id = $1 AND n.room_id = ANY($2) AND n.pos <= $3 AND `+unreadCond+`
				GROUP BY n.room_id, n.thread_id`, u, rooms, upto)
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
			key := func(c UnreadCount) string { return c.RoomID + c.ThreadID }
			order := func(a, b UnreadCount) int {
				if key(a) < key(b) {
					return -1
				} else if key(a) > key(b) {
					return 1
				}
				return 0
			}
			slices.SortFunc(got, order)
			slices.SortFunc(want, order)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d, %s up to %d: kept counts %v, definition %v", step, u, upto, got, want)
			}
		}
	}

	for step := 0; step < 400; step++ {
		switch op := rng.Intn(10); {
		case op < 6: // one to three new events, stored in one batch
			var batch []Input
			for range 1 + rng.Intn(3) {
				k := next
				next++
				room := rooms[rng.Intn(len(rooms))]
				plans[eventID(k)] = plan{sender: users[rng.Intn(len(users))], thread: threads[rng.Intn(len(threads))],
					highlight: map[string]bool{users[rng.Intn(len(users))]: rng.Intn(4) == 0}}
				batch = append(batch, input(k, room))
			}
			applied, err := st.ApplyWith(ctx, batch, eval)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range applied {
				maxPos = max(maxPos, a.Pos)
			}
			stored = append(stored, batch...)
		case op < 7 && len(stored) > 0: // a redelivery
			if _, err := st.ApplyWith(ctx, []Input{stored[rng.Intn(len(stored))]}, eval); err != nil {
				t.Fatal(err)
			}
		default: // a receipt, sometimes for an event not stored yet
			k := rng.Intn(next + 2)
			room := rooms[rng.Intn(len(rooms))]
			if k < len(stored) {
				room = stored[k].Event.RoomID
			}
			thread := []string{"", "", "main", "$t1"}[rng.Intn(4)]
			epos++
			if _, err := st.PutPushReceipt(ctx, PushReceipt{UserID: users[rng.Intn(len(users))], RoomID: room,
				ThreadID: thread, Type: []string{"m.read", "m.read.private"}[rng.Intn(2)], EventID: eventID(k), EPos: epos}); err != nil {
				t.Fatal(err)
			}
		}
		check(step)
	}
}
