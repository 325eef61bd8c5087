package clientapi_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// TestReadYourWrites: once a write returns, the writer's next read sees
// it, with no retry: a joined room is in /joined_rooms, a sent message is
// the newest in /messages, a state change is in /sync's state. The copy
// these reads use is filled asynchronously, so without the wait in the
// write endpoints some of these reads would see the old data.
func TestReadYourWrites(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	for i := range 10 {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		joined, err := alice.JoinedRooms(ctx)
		if err != nil || !slices.Contains(joined.JoinedRooms, room.RoomID) {
			t.Fatalf("round %d: created room not in the creator's /joined_rooms: %v %v", i, joined, err)
		}
		if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
		joined, err = bob.JoinedRooms(ctx)
		if err != nil || !slices.Contains(joined.JoinedRooms, room.RoomID) {
			t.Fatalf("round %d: joined room not in /joined_rooms: %v %v", i, joined, err)
		}
		for j := range 5 {
			body := fmt.Sprintf("round %d message %d", i, j)
			sent, err := bob.SendText(ctx, room.RoomID, body)
			if err != nil {
				t.Fatal(err)
			}
			page, err := bob.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 1)
			if err != nil || len(page.Chunk) != 1 || page.Chunk[0].ID != sent.EventID {
				t.Fatalf("round %d: newest message is not the one just sent (%s): %+v %v", i, sent.EventID, page, err)
			}
		}
		if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateTopic, "", map[string]any{"topic": fmt.Sprint("topic ", i)}); err != nil {
			t.Fatal(err)
		}
		resp, err := alice.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if !hasTopic(resp.Rooms.Join[room.RoomID], fmt.Sprint("topic ", i)) {
			t.Fatalf("round %d: new topic not in the next /sync", i)
		}
	}
}

func hasTopic(r *mautrix.SyncJoinedRoom, topic string) bool {
	if r == nil {
		return false
	}
	for _, evs := range [][]*event.Event{r.State.Events, r.Timeline.Events} {
		for _, ev := range evs {
			if ev.Type == event.StateTopic && ev.Content.Raw["topic"] == topic {
				return true
			}
		}
	}
	return false
}
