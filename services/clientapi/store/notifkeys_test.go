package store

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// Notifications are indexed by a numeric key of their user (userKey): the
// key the consumer writes is the one migration 025 computes in SQL for
// older rows, and a row of another user that shares the key is not taken
// for the user's own by any reader.
func TestNotificationKeys(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, testkit.Postgres(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const alice, room, other = "@alice:x", "!r:x", "!other:x"
	users := []string{alice, "@bob:example.org", "@ünïcode:x", "@a-very-long-localpart-of-a-loadgen-user-1234567890:x"}
	eval := func(_ context.Context, _ Reader, a Applied, _ PushContext) (PushOutcome, error) {
		var out PushOutcome
		for _, u := range users {
			out.Notifications = append(out.Notifications, Notification{UserID: u, RoomID: a.Event.RoomID,
				EventID: a.Event.EventID, ThreadID: "main", Pos: a.Pos, Actions: []byte(`["notify"]`), TS: 7})
		}
		return out, nil
	}
	msg := func(id, room string) Input {
		return Input{Event: Event{EventID: id, RoomID: room, Type: "m.room.message", Sender: "@carol:x",
			JSON: []byte(`{"type":"m.room.message","sender":"@carol:x","content":{}}`)}}
	}
	joinRoom(t, st, room, alice)
	joinRoom(t, st, other, alice)
	if _, err := st.ApplyWith(ctx, []Input{msg("$1", room), msg("$2", other)}, eval); err != nil {
		t.Fatal(err)
	}
	// The migration's expressions, as in 025_notifications_keys.sql.
	var rows, wrong int
	err = st.db.QueryRow(ctx, `SELECT COUNT(*), COUNT(*) FILTER (WHERE
			user_key <> ('x' || left(md5(user_id), 16))::bit(64)::bigint)
		FROM notifications`).Scan(&rows, &wrong)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 2*len(users) || wrong != 0 {
		t.Fatalf("%d notifications (want %d), %d with keys unlike the migration's", rows, 2*len(users), wrong)
	}

	// A stranger whose key is alice's, notified later.
	_, err = st.db.Exec(ctx, `INSERT INTO notifications (user_key, user_id, event_id, room_id, thread_id, pos, actions, highlight, ts)
		SELECT user_key, '@stranger:x', event_id, '!stranger:x', thread_id, pos + 1000, actions, true, ts
		FROM notifications WHERE user_id = $1 AND room_id = $2`, alice, room)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Reader().Notifications(ctx, NotificationsQuery{UserID: alice, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].EventID != "$2" || got[1].EventID != "$1" {
		t.Fatalf("alice's notifications: %+v", got)
	}
	counts, err := st.Reader().UnreadCounts(ctx, alice, []string{room, "!stranger:x"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Kept counts, less those after position 0: nothing for alice.
	if len(counts) != 0 {
		t.Fatalf("alice's counts up to 0: %+v", counts)
	}
	counts, err = st.Reader().UnreadCounts(ctx, alice, []string{room}, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].Notify != 1 || counts[0].Highlight != 0 {
		t.Fatalf("alice's counts in %s: %+v", room, counts)
	}
	// A recount (a receipt for nothing stored) counts alice's row only.
	if _, err := st.PutPushReceipt(ctx, PushReceipt{UserID: alice, RoomID: room, Type: "m.read", EventID: "$none", EPos: 1}); err != nil {
		t.Fatal(err)
	}
	counts, err = st.Reader().UnreadCounts(ctx, alice, []string{room}, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].Notify != 1 || counts[0].Highlight != 0 {
		t.Fatalf("alice's counts in %s after a recount: %+v", room, counts)
	}
}
