package clientapi

import (
	"context"
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// TestRecentIDs: the set holds the last recentStoredCap IDs added; an ID
// added twice stays until its newest copy leaves the ring.
func TestRecentIDs(t *testing.T) {
	var r recentIDs
	if r.has("$a") {
		t.Fatal("empty set has $a")
	}
	r.add("$dup")
	for i := range recentStoredCap - 1 {
		r.add(fmt.Sprint("$", i))
	}
	r.add("$dup") // evicts the first $dup, keeps the second
	if !r.has("$dup") || !r.has("$0") || !r.has(fmt.Sprint("$", recentStoredCap-2)) {
		t.Fatal("a recent ID is missing")
	}
	r.add("$next") // evicts $0
	if r.has("$0") || !r.has("$1") || !r.has("$next") {
		t.Fatal("the oldest ID was not the one evicted")
	}
	for i := range recentStoredCap {
		r.add(fmt.Sprint("$new", i))
	}
	if r.has("$dup") || len(r.count) != recentStoredCap {
		t.Fatalf("after a full turn: $dup kept %v, %d IDs counted", r.has("$dup"), len(r.count))
	}
}

// TestAwaitStoredRecent: a new event the notifier has already seen stored
// releases its write at once, without a database lookup (the service here
// has no store: a lookup would panic) and without leaving a waiter.
func TestAwaitStoredRecent(t *testing.T) {
	n := newNotifier(nil)
	s := &Service{notifier: n}
	n.committed([]store.Applied{{Pos: 1, Event: store.Event{EventID: "$stored", RoomID: "!r:x", Type: "m.room.message"}}})
	s.awaitStored(context.Background(), "$stored", true)
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.stored) != 0 {
		t.Fatalf("waiters left behind: %v", n.stored)
	}
}

// TestAwaitStoredLostWake: a stored event whose wake never reached the
// notifier (the wake bus is at most once) still releases its write: a new
// event after the database recheck, a repeated one at once. Either way
// before the caller's deadline, which only a wait for storedWaitLimit
// would reach.
func TestAwaitStoredLostWake(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	p := newPublisher(t, h, "!lost:"+testServerName)
	b := p.send("@alice:"+testServerName, "m.room.message", nil, map[string]any{"body": "hi"})
	h.waitPos(p.seq)
	for _, fresh := range []bool{true, false} {
		n := h.svc.notifier
		n.mu.Lock()
		n.recent = recentIDs{} // as if the wake had been lost
		n.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), (storedWaitLimit+storedRecheck)/2)
		h.svc.awaitStored(ctx, b.id, fresh)
		if ctx.Err() != nil {
			t.Fatalf("fresh=%v: the write waited for its deadline, not for the database", fresh)
		}
		cancel()
	}
}
