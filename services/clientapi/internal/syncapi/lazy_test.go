package syncapi

import (
	"fmt"
	"testing"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func lazyMembers(room string, n int) []store.CurrentStateEvent {
	out := make([]store.CurrentStateEvent, n)
	for i := range out {
		out[i] = store.CurrentStateEvent{EventID: fmt.Sprintf("$%s-%d", room, i), Type: "m.room.member", StateKey: fmt.Sprintf("@u%d:x", i)}
	}
	return out
}

// The lazy-loading memory sends each member once per device, and starts
// over (sending members again) past its bounds on devices and on
// remembered members.
func TestLazyCacheBounds(t *testing.T) {
	c := newLazyCache(2, 10)
	a := &httpapi.Device{UserID: "@a:x", DeviceID: "A"}
	if got := c.unsent(a, "!r", lazyMembers("r", 4), false); len(got) != 4 {
		t.Fatalf("first sync: %d members sent, want 4", len(got))
	}
	if got := c.unsent(a, "!r", lazyMembers("r", 4), false); len(got) != 0 {
		t.Fatalf("second sync: %d members sent again, want 0", len(got))
	}
	if got := c.unsent(a, "!r", lazyMembers("r", 4), true); len(got) != 4 {
		t.Fatalf("include_redundant_members: %d sent, want 4", len(got))
	}
	if c.members != 4 {
		t.Fatalf("%d members remembered, want 4", c.members)
	}
	// 4 + 8 > 10: the cache starts over, so a's room is sent again later.
	if got := c.unsent(a, "!s", lazyMembers("s", 8), false); len(got) != 8 || c.members != 8 {
		t.Fatalf("past the member bound: %d sent, %d remembered; want 8 and 8", len(got), c.members)
	}
	if got := c.unsent(a, "!r", lazyMembers("r", 2), false); len(got) != 2 {
		t.Fatalf("after starting over: %d of room r sent, want 2 again", len(got))
	}
	c.reset(a)
	if c.members != 0 || len(c.devices) != 0 {
		t.Fatalf("after reset: %d members, %d devices", c.members, len(c.devices))
	}
	// Device bound: a third device starts the cache over.
	for i, id := range []string{"A", "B", "C"} {
		c.unsent(&httpapi.Device{UserID: "@a:x", DeviceID: id}, "!r", lazyMembers("r", 1), false)
		if want := min(i+1, 2); i < 2 && len(c.devices) != want {
			t.Fatalf("%d devices, want %d", len(c.devices), want)
		}
	}
	if len(c.devices) != 1 || c.members != 1 {
		t.Fatalf("past the device bound: %d devices, %d members; want 1 and 1", len(c.devices), c.members)
	}
}
