package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// Pruning deletes the notifications of events older than the cutoff, at
// most a batch at a time, and leaves the newer ones; unread counts count
// what is left.
func TestPruneNotifications(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	users := []string{"@a:x", "@b:x", "@c:x"}
	// Event k has timestamp 1000*k and notifies b and c.
	eval := func(ctx context.Context, rd Reader, a Applied, _ PushContext) (PushOutcome, error) {
		var k int64
		fmt.Sscanf(a.Event.EventID, "$e%d", &k)
		var out PushOutcome
		for _, u := range users[1:] {
			out.Notifications = append(out.Notifications, Notification{UserID: u, RoomID: a.Event.RoomID, EventID: a.Event.EventID,
				ThreadID: "main", Pos: a.Pos, Actions: []byte(`["notify"]`), TS: 1000 * k})
		}
		return out, nil
	}
	joinRoom(t, st, "!r:x", users...)
	var batch []Input
	for k := 1; k <= 6; k++ {
		id := fmt.Sprintf("$e%d", k)
		batch = append(batch, Input{Event: Event{EventID: id, RoomID: "!r:x", Type: "m.room.message", Sender: users[0],
			JSON: []byte(fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","sender":"@a:x","content":{}}`, id))}})
	}
	applied, err := st.ApplyWith(ctx, batch, eval)
	if err != nil || len(applied) != 6 {
		t.Fatalf("apply: %d applied, %v", len(applied), err)
	}
	counts := func(user string) int {
		t.Helper()
		c, err := st.Reader().UnreadCounts(ctx, user, []string{"!r:x"}, applied[5].Pos)
		if err != nil || len(c) != 1 {
			t.Fatalf("unread counts of %s: %v %v", user, c, err)
		}
		return c[0].Notify
	}
	listed := func(user string) []string {
		t.Helper()
		rows, err := st.Reader().Notifications(ctx, NotificationsQuery{UserID: user, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range rows {
			ids = append(ids, r.EventID)
		}
		return ids
	}
	if n := counts("@b:x"); n != 6 {
		t.Fatalf("b's count before pruning: %d", n)
	}
	// Before 3500: events 1-3, six rows; a batch of 4 takes four of them.
	n, err := st.PruneNotifications(ctx, 3500, 4)
	if err != nil || n != 4 {
		t.Fatalf("first prune: %d rows, %v; want the batch of 4", n, err)
	}
	n, err = st.PruneNotifications(ctx, 3500, 4)
	if err != nil || n != 2 {
		t.Fatalf("second prune: %d rows, %v; want the last 2", n, err)
	}
	if n, err := st.PruneNotifications(ctx, 3500, 4); err != nil || n != 0 {
		t.Fatalf("third prune: %d rows, %v; want none", n, err)
	}
	for _, u := range users[1:] {
		if got := listed(u); fmt.Sprint(got) != "[$e6 $e5 $e4]" {
			t.Errorf("%s's notifications after pruning: %v, want events 6, 5, 4", u, got)
		}
		if n := counts(u); n != 3 {
			t.Errorf("%s's unread count after pruning: %d, want the 3 left", u, n)
		}
	}
}
