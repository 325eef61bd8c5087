package clientapi

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestConsumerStateInParts publishes a local user's join of a remote
// room as the room-server does when the state it adds is over its
// message bound: leading parts with slices of the state, the join with
// the rest. The consumer stores the join once with the whole state, and
// /sync shows every member; a repeat of the parts changes nothing.
func TestConsumerStateInParts(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	const roomID = "!big:remote.test"
	ron := "@ron:remote.test"
	aliceTok, _ := h.register("alice", "pw")
	alice := "@alice:" + testServerName

	p := newPublisher(t, h, roomID)
	var state [][]byte
	state = append(state, p.build(ron, "m.room.create", ptr(""), map[string]any{"creator": ron, "room_version": "10"}, nil).json)
	state = append(state, p.build(ron, "m.room.member", ptr(ron), map[string]any{"membership": "join"}, nil).json)
	state = append(state, p.build(ron, "m.room.join_rules", ptr(""), map[string]any{"join_rule": "public"}, nil).json)
	const members = 40
	for i := range members {
		u := fmt.Sprintf("@member%d:remote.test", i)
		state = append(state, p.build(u, "m.room.member", ptr(u), map[string]any{"membership": "join"}, nil).json)
	}
	p.seq = 0 // the join is the room's first event this server publishes
	join := p.build(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"}, nil)
	all := append(state, join.json)
	parts := [][][]byte{all[:10], all[10:30], all[30:]}
	publishParts := func(prefix string) {
		for i, added := range parts {
			out := &roomserverv1.OutputRoomEvent{RoomId: roomID, RoomVersion: "10", EventId: join.id, StreamPosition: join.out.StreamPosition,
				AddedStateEvents: added, StatePart: int32(i + 1), StateParts: int32(len(parts))}
			msgID := fmt.Sprintf("%s%s#state.%d", prefix, join.id, i+1)
			if i == len(parts)-1 {
				out.EventJson, msgID = join.json, prefix+join.id
			}
			p.publish(built{id: join.id, json: out.EventJson, out: out}, msgID)
		}
	}
	publishParts("")
	h.waitPos(1)

	sync := func() *syncRoomView {
		s := h.do("GET", "/_matrix/client/v3/sync?since=s1&timeout=0", aliceTok, nil)
		h.expect(s, 200, "")
		return roomView(t, s, "join", roomID)
	}
	// The copy's memberships (what /sync and the notifier read).
	check := func() {
		t.Helper()
		all, err := h.svc.store.JoinedMembers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		joined := all[roomID]
		if len(joined) != members+2 || !slices.Contains(joined, alice) || !slices.Contains(joined, ron) ||
			!slices.Contains(joined, "@member39:remote.test") {
			t.Fatalf("%d joined members, want %d: %v", len(joined), members+2, joined)
		}
	}
	check()

	// The parts again (new message IDs, so JetStream keeps them), then a
	// message: stored once, after the join.
	publishParts("again-")
	msg := p.send(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "welcome"})
	h.waitPos(2)
	testkit.Eventually(t, 10*time.Second, func() error {
		if v := sync(); v == nil || len(v.ids) != 1 || v.ids[0] != msg.id {
			return fmt.Errorf("timeline %+v", v)
		}
		return nil
	})
	check()
}
