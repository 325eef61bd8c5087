package notifier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func TestNotifierWakesOnlyAffectedUsers(t *testing.T) {
	const room = "!r:example.test"
	n := New(map[string][]string{room: {"@alice:x"}}, nil, nil, zap.NewNop())
	ctx := context.Background()

	woke := map[string]chan struct{}{}
	for _, u := range []string{"@alice:x", "@bob:x"} {
		ch := make(chan struct{})
		woke[u] = ch
		go func() { n.Wait(ctx, u, 0); close(ch) }()
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.Waiting("@alice:x") || !n.Waiting("@bob:x") {
			return fmt.Errorf("waiters not registered yet")
		}
		return nil
	})

	// A message in alice's room wakes alice only.
	n.Committed([]store.Applied{{Pos: 1, Event: store.Event{RoomID: room, Type: "m.room.message"}}})
	<-woke["@alice:x"]
	if !n.Waiting("@bob:x") {
		t.Fatal("bob was woken by a room he is not in")
	}

	// Bob's invite wakes bob (the target); he is not a joined member yet.
	n.Committed([]store.Applied{{Pos: 2, Event: store.Event{RoomID: room, Type: "m.room.member"},
		Changes: []store.MembershipChange{{UserID: "@bob:x", RoomID: room, Membership: store.MembershipInvite}}}})
	<-woke["@bob:x"]
	if m := n.Members(room); len(m) != 1 {
		t.Fatalf("members %v", m)
	}

	// A wait for a position the user has already been notified past
	// returns at once; a closed notifier releases everyone.
	n.Wait(ctx, "@bob:x", 1)
	done := make(chan struct{})
	go func() { n.Wait(ctx, "@carol:x", 5); close(done) }()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.Waiting("@carol:x") {
			return fmt.Errorf("carol not waiting")
		}
		return nil
	})
	n.Close()
	<-done
}

func TestNotifierWake(t *testing.T) {
	n := New(nil, nil, nil, zap.NewNop())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := n.WakeCount("@a:x")
	// A wake between reading the counter and waiting is not lost.
	n.Wake("@a:x")
	n.WaitSync(ctx, "@a:x", SyncCursor{Wakes: seen})
	if ctx.Err() != nil {
		t.Fatal("wait did not see the earlier wake")
	}
	// A waiting request is woken; another user's wake does not count.
	seen = n.WakeCount("@a:x")
	done := make(chan struct{})
	go func() { n.WaitSync(ctx, "@a:x", SyncCursor{Wakes: seen}); close(done) }()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.Waiting("@a:x") {
			return fmt.Errorf("not waiting yet")
		}
		return nil
	})
	n.Wake("@b:x")
	select {
	case <-done:
		t.Fatal("woken by another user's change")
	default:
	}
	if !n.Waiting("@a:x") {
		t.Fatal("the waiter was dropped by another user's change")
	}
	n.Wake("@a:x")
	<-done
	if ctx.Err() != nil {
		t.Fatal("the waiter was not woken")
	}
}

// A member who was not waiting when a room event was committed sees it at
// their next wait (the room's position stands for its members'), and only
// an event after their cursor releases them; whichever side the notifier
// walks (members or waiters), it finds them.
func TestNotifierRoomPositionStandsForMembers(t *testing.T) {
	const big, small = "!big:x", "!small:x"
	members := []string{"@w:x"}
	for i := range 50 {
		members = append(members, fmt.Sprintf("@m%d:x", i))
	}
	n := New(map[string][]string{big: members, small: {"@w:x"}}, nil, nil, zap.NewNop())
	ctx := context.Background()
	n.Committed([]store.Applied{{Pos: 7, Event: store.Event{RoomID: big, Type: "m.room.message"}}})
	n.Wait(ctx, "@m3:x", 6) // returns at once: position 7 concerns m3
	cursor := int64(100)
	for _, room := range []string{big, small} {
		done := make(chan struct{})
		go func() { n.Wait(ctx, "@w:x", cursor); close(done) }()
		testkit.Eventually(t, 10*time.Second, func() error {
			if !n.Waiting("@w:x") {
				return fmt.Errorf("w not waiting")
			}
			return nil
		})
		n.Committed([]store.Applied{{Pos: cursor + 1, Event: store.Event{RoomID: "!other:x", Type: "m.room.message"}}})
		if !n.Waiting("@w:x") {
			t.Fatal("w was woken by a room they are not in")
		}
		n.Committed([]store.Applied{{Pos: cursor + 2, Event: store.Event{RoomID: room, Type: "m.room.message"}}})
		<-done
		cursor += 2
	}
}
