package roomserver

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/outparts"
)

// TestJoinStateInParts joins a remote room whose state is larger than
// the room-server's message bound: the join goes out as ordered parts on
// the room's subject whose state changes together are the room's state,
// each part within the bound, the event in the last.
func TestJoinStateInParts(t *testing.T) {
	const limit = 4096
	remote := newRemote(t, "remote.test")
	h := newHarness(t, func(c *Config) { c.MaxMessageBytes = limit }, remote)
	ron := remote.User("ron")
	rr := remote.NewRoom("11", ron, "public")
	// More members than store.copyMinRows (256): the outliers are
	// stored with COPY.
	for i := range 300 {
		u := remote.User(fmt.Sprintf("member%d", i))
		rr.Add(u, spec.MRoomMember, &u, map[string]any{"membership": "join", "displayname": "a member of the remote room"})
	}
	join := h.joinRemoteRoom(rr, alice)

	var msgs []published
	testkit.Eventually(t, 15*time.Second, func() error {
		var err error
		if msgs, err = h.readRoom(rr.RoomID); err != nil {
			return err
		}
		if len(msgs) == 0 || msgs[len(msgs)-1].out.GetStatePart() != msgs[len(msgs)-1].out.GetStateParts() {
			return errors.New("the last part is not published yet")
		}
		return nil
	})
	if len(msgs) < 3 {
		t.Fatalf("%d messages published, want the join in several parts", len(msgs))
	}
	n := int32(len(msgs))
	var added []string
	for i, m := range msgs {
		o := m.out
		if o.GetEventId() != join.EventID() || o.GetStatePart() != int32(i+1) || o.GetStateParts() != n {
			t.Fatalf("message %d: %s part %d of %d", i, o.GetEventId(), o.GetStatePart(), o.GetStateParts())
		}
		if size := proto.Size(o); size > limit {
			t.Fatalf("part %d is %d bytes, over %d", i+1, size, limit)
		}
		last := i == len(msgs)-1
		if (len(o.GetEventJson()) > 0) != last {
			t.Fatalf("part %d of %d carries the event: %v", i+1, n, len(o.GetEventJson()) > 0)
		}
		wantID := join.EventID()
		if !last {
			wantID = outparts.MsgID(join.EventID(), i+1, int(n))
		}
		if m.msgID != wantID {
			t.Fatalf("part %d's message ID %q, want %q", i+1, m.msgID, wantID)
		}
		if o.GetStreamPosition() != msgs[0].out.GetStreamPosition() || o.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
			t.Fatalf("part %d: position %d kind %s", i+1, o.GetStreamPosition(), o.GetKind())
		}
		for _, raw := range o.GetAddedStateEvents() {
			ev, err := gomatrixserverlib.MustGetRoomVersion(rr.Version.Version()).NewEventFromTrustedJSON(raw, false)
			if err != nil {
				t.Fatal(err)
			}
			added = append(added, ev.EventID())
		}
	}
	want := append(rr.StateIDs(), join.EventID())
	// rr.StateIDs() already has the join (joinRemoteRoom applied it).
	slices.Sort(want)
	want = slices.Compact(want)
	slices.Sort(added)
	if !slices.Equal(added, want) {
		t.Fatalf("the parts added %d state events, want the room's %d", len(added), len(want))
	}
}
