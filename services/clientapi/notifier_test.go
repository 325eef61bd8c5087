package clientapi

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// waiting reports whether user has a registered, not yet woken waiter.
func (n *notifier) waiting(user string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ch := range n.waiters[user] {
		select {
		case <-ch:
		default:
			return true
		}
	}
	return false
}

func TestNotifierWakesOnlyAffectedUsers(t *testing.T) {
	const room = "!r:example.test"
	n := newNotifier(map[string][]string{room: {"@alice:x"}})
	ctx := context.Background()

	woke := map[string]chan struct{}{}
	for _, u := range []string{"@alice:x", "@bob:x"} {
		ch := make(chan struct{})
		woke[u] = ch
		go func() { n.wait(ctx, u, 0); close(ch) }()
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.waiting("@alice:x") || !n.waiting("@bob:x") {
			return fmt.Errorf("waiters not registered yet")
		}
		return nil
	})

	// A message in alice's room wakes alice only.
	n.committed([]store.Applied{{Pos: 1, Event: store.Event{RoomID: room, Type: "m.room.message"}}})
	<-woke["@alice:x"]
	if !n.waiting("@bob:x") {
		t.Fatal("bob was woken by a room he is not in")
	}

	// Bob's invite wakes bob (the target); he is not a joined member yet.
	n.committed([]store.Applied{{Pos: 2, Event: store.Event{RoomID: room, Type: "m.room.member"},
		Changes: []store.MembershipChange{{UserID: "@bob:x", RoomID: room, Membership: store.MembershipInvite}}}})
	<-woke["@bob:x"]
	if m := n.members(room); len(m) != 1 {
		t.Fatalf("members %v", m)
	}

	// A wait for a position the user has already been notified past
	// returns at once; a closed notifier releases everyone.
	n.wait(ctx, "@bob:x", 1)
	done := make(chan struct{})
	go func() { n.wait(ctx, "@carol:x", 5); close(done) }()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.waiting("@carol:x") {
			return fmt.Errorf("carol not waiting")
		}
		return nil
	})
	n.close()
	<-done
}

func TestNotifierWake(t *testing.T) {
	n := newNotifier(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := n.wakeCount("@a:x")
	// A wake between reading the counter and waiting is not lost.
	n.wake("@a:x")
	n.waitSync(ctx, "@a:x", syncCursor{wakes: seen})
	if ctx.Err() != nil {
		t.Fatal("wait did not see the earlier wake")
	}
	// A waiting request is woken; another user's wake does not count.
	seen = n.wakeCount("@a:x")
	done := make(chan struct{})
	go func() { n.waitSync(ctx, "@a:x", syncCursor{wakes: seen}); close(done) }()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.waiting("@a:x") {
			return fmt.Errorf("not waiting yet")
		}
		return nil
	})
	n.wake("@b:x")
	select {
	case <-done:
		t.Fatal("woken by another user's change")
	default:
	}
	if !n.waiting("@a:x") {
		t.Fatal("the waiter was dropped by another user's change")
	}
	n.wake("@a:x")
	<-done
	if ctx.Err() != nil {
		t.Fatal("the waiter was not woken")
	}
}
