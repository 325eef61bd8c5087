package notifier

import (
	"context"
	"fmt"
	"testing"

	"go.uber.org/zap"

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
// releases its write at once, without a database lookup (the notifier here
// has no store: a lookup would panic) and without leaving a waiter.
func TestAwaitStoredRecent(t *testing.T) {
	n := New(nil, nil, nil, zap.NewNop())
	n.Committed([]store.Applied{{Pos: 1, Event: store.Event{EventID: "$stored", RoomID: "!r:x", Type: "m.room.message"}}})
	n.AwaitStored(context.Background(), "$stored", true)
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.stored) != 0 {
		t.Fatalf("waiters left behind: %v", n.stored)
	}
}
