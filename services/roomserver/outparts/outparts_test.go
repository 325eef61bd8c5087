package outparts

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestSplit checks the split: order, bounds, the
// removed IDs before the added events, and a whole message kept whole.
func TestSplit(t *testing.T) {
	o := &roomserverv1.OutputRoomEvent{RoomId: "!r:x", RoomVersion: "11", EventId: "$e", EventJson: []byte(`{"type":"m.room.member"}`),
		StreamPosition: 7}
	if parts := Split(o, 1<<20); len(parts) != 1 || parts[0] != o || o.GetStateParts() != 0 {
		t.Fatalf("a small message was split: %d parts", len(parts))
	}
	var removed []string
	var added [][]byte
	for i := range 50 {
		removed = append(removed, "$removed"+string(rune('A'+i%26))+string(rune('A'+i/26)))
	}
	for range 200 {
		added = append(added, slices.Repeat([]byte("x"), 100+len(added)))
	}
	o.RemovedStateEventIds, o.AddedStateEvents = removed, added
	const limit = 2048
	parts := Split(o, limit)
	var gotRemoved []string
	var gotAdded [][]byte
	for i, p := range parts {
		if size := proto.Size(p); size > limit {
			t.Fatalf("part %d: %d bytes", i+1, size)
		}
		if p.GetStatePart() != int32(i+1) || p.GetStateParts() != int32(len(parts)) || p.GetEventId() != "$e" || p.GetStreamPosition() != 7 {
			t.Fatalf("part %d: %+v", i+1, p)
		}
		if len(p.GetRemovedStateEventIds()) > 0 && len(gotAdded) > 0 {
			t.Fatalf("part %d removes after an earlier part added", i+1)
		}
		gotRemoved = append(gotRemoved, p.GetRemovedStateEventIds()...)
		gotAdded = append(gotAdded, p.GetAddedStateEvents()...)
	}
	if !slices.Equal(gotRemoved, removed) || len(gotAdded) != len(added) {
		t.Fatalf("removed %d of %d, added %d of %d", len(gotRemoved), len(removed), len(gotAdded), len(added))
	}
	for i := range added {
		if string(gotAdded[i]) != string(added[i]) {
			t.Fatalf("added event %d out of order", i)
		}
	}
	if !slices.Equal(parts[len(parts)-1].GetEventJson(), o.GetEventJson()) {
		t.Fatal("the last part lacks the event")
	}
}
