package clientapi_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestUnsignedMembership checks unsigned.membership (spec v1.11): every
// event served to a user carries that user's membership at the event, the
// event's own change included, and "leave" before they had any.
func TestUnsignedMembership(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat",
		InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}}}}})
	must(t, "create room", err)
	room := created.RoomID
	before := sendText(t, alice, room, "before bob")
	_, err = alice.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: bob.UserID})
	must(t, "invite", err)
	_, err = bob.JoinRoomByID(ctx, room)
	must(t, "join", err)
	after := sendText(t, alice, room, "after bob")
	caughtUp(t, bob, room, after)

	want := map[id.EventID]event.Membership{before: event.MembershipLeave, after: event.MembershipJoin}
	check := func(where string, evs []*event.Event) {
		t.Helper()
		seen := 0
		for _, e := range evs {
			if e.Type == event.StateMember && e.GetStateKey() == bob.UserID.String() {
				m := event.Membership(e.Content.Raw["membership"].(string))
				if e.Unsigned.Membership != m {
					t.Fatalf("%s: bob's %s event has unsigned.membership %q, want %q", where, m, e.Unsigned.Membership, m)
				}
				seen++
			}
			if w, ok := want[e.ID]; ok {
				if e.Unsigned.Membership != w {
					t.Fatalf("%s: %s has unsigned.membership %q, want %q", where, e.ID, e.Unsigned.Membership, w)
				}
				seen++
			}
			if e.Unsigned.Membership == "" {
				t.Fatalf("%s: %s (%s) has no unsigned.membership", where, e.ID, e.Type)
			}
		}
		if seen < 4 {
			t.Fatalf("%s: checked %d of the test's events, want 4 (invite, join and two messages)", where, seen)
		}
	}

	sync, err := bob.SyncRequest(ctx, 0, "", `{"room":{"timeline":{"limit":50}}}`, false, "")
	must(t, "initial sync", err)
	check("/sync", sync.Rooms.Join[room].Timeline.Events)

	msgs, err := bob.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 50)
	must(t, "messages", err)
	check("/messages", msgs.Chunk)

	ev, err := bob.GetEvent(ctx, room, before)
	must(t, "event", err)
	if ev.Unsigned.Membership != event.MembershipLeave {
		t.Fatalf("/event of a message before bob joined: unsigned.membership %q, want leave", ev.Unsigned.Membership)
	}
	c, err := bob.Context(ctx, room, after, nil, 10)
	must(t, "context", err)
	if c.Event.Unsigned.Membership != event.MembershipJoin {
		t.Fatalf("/context event: unsigned.membership %q, want join", c.Event.Unsigned.Membership)
	}
	check("/context", append(append(c.EventsBefore, c.Event), c.EventsAfter...))
}

// TestRejectedInviteInSync checks that a user who rejects an invite finds
// the room under rooms.leave with their leave event in its timeline (a
// private room's history is hidden from invitees, but never their own
// leave).
func TestRejectedInviteInSync(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	must(t, "create room", err)
	room := created.RoomID
	s := &syncer{t: t, cli: bob}
	s.until("the invite", func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Invite[room]; return ok })
	_, err = bob.LeaveRoom(ctx, room)
	must(t, "reject the invite", err)
	s.until("the rejection under leave", func(r *mautrix.RespSync) bool {
		lr, ok := r.Rooms.Leave[room]
		if !ok {
			return false
		}
		for _, e := range lr.Timeline.Events {
			if e.Type == event.StateMember && e.GetStateKey() == bob.UserID.String() && e.Content.Raw["membership"] == "leave" {
				return true
			}
		}
		t.Fatalf("rooms.leave of the rejected invite has no leave event: %d timeline events", len(lr.Timeline.Events))
		return false
	})
}
