package store

import (
	"context"
	"testing"
)

// joinRoom stores join events of users into room (notifications and
// unread counts are a joined member's, from the join on).
func joinRoom(t *testing.T, st *Store, room string, users ...string) {
	t.Helper()
	var in []Input
	for _, u := range users {
		key := u
		js := []byte(`{"type":"m.room.member","state_key":"` + u + `","content":{"membership":"join"}}`)
		in = append(in, Input{
			Event: Event{EventID: "$join-" + room + u, RoomID: room, Type: "m.room.member", StateKey: &key, Sender: u, Membership: MembershipJoin, JSON: js},
			Added: []StateEvent{{EventID: "$join-" + room + u, Type: "m.room.member", StateKey: key, Sender: u, Membership: MembershipJoin, JSON: js}},
		})
	}
	if _, err := st.Apply(context.Background(), in); err != nil {
		t.Fatal(err)
	}
}
