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

// roomWaiting reports whether the room has a registered waiter.
func (n *Notifier) roomWaiting(room string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.roomWaiters[room]) > 0
}

// A peeker (not a member, so no user waiter would be woken) is woken by
// an event in the room it waits on, and only by that room.
func TestNotifierWakesRoomWaiters(t *testing.T) {
	const room, other = "!peek:example.test", "!other:example.test"
	n := New(nil, nil, nil, zap.NewNop())
	done := make(chan struct{})
	go func() { n.WaitRoom(context.Background(), room, 0); close(done) }()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !n.roomWaiting(room) {
			return fmt.Errorf("waiter not registered yet")
		}
		return nil
	})
	n.Committed([]store.Applied{{Pos: 1, Event: store.Event{RoomID: other, Type: "m.room.message"}}})
	if !n.roomWaiting(room) {
		t.Fatal("an event of another room woke the waiter")
	}
	n.Committed([]store.Applied{{Pos: 2, Event: store.Event{RoomID: room, Type: "m.room.message"}}})
	<-done
	if n.roomWaiting(room) {
		t.Fatal("the woken waiter is still registered")
	}
	// Already past: returns at once.
	n.WaitRoom(context.Background(), room, 1)
	// A cancelled wait deregisters itself.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.WaitRoom(ctx, room, 2)
	if n.roomWaiting(room) {
		t.Fatal("a cancelled waiter is still registered")
	}
}
