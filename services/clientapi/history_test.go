package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func sendText(t *testing.T, cli *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	resp, err := cli.SendText(context.Background(), roomID, body)
	if err != nil {
		t.Fatalf("%s sends %q: %v", cli.UserID, body, err)
	}
	return resp.EventID
}

func bodyOf(e *event.Event) string {
	b, _ := e.Content.Raw["body"].(string)
	return b
}

// caughtUp waits until the user's /sync has seen eventID, so the
// client-API's copy holds everything sent before it.
func caughtUp(t *testing.T, cli *mautrix.Client, roomID id.RoomID, eventID id.EventID) {
	t.Helper()
	s := &syncer{t: t, cli: cli}
	s.until("event "+eventID.String(), func(r *mautrix.RespSync) bool {
		room, ok := r.Rooms.Join[roomID]
		if !ok {
			return false
		}
		return slices.ContainsFunc(room.Timeline.Events, func(e *event.Event) bool { return e.ID == eventID })
	})
}

func TestEventAndContext(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	if _, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil {
		t.Fatal(err)
	}
	var ids []id.EventID
	for i := range 10 {
		ids = append(ids, sendText(t, alice, roomID, fmt.Sprint("m", i)))
	}
	caughtUp(t, bob, roomID, ids[9])

	ev, err := bob.GetEvent(ctx, roomID, ids[5])
	if err != nil || ev.ID != ids[5] || ev.RoomID != roomID || ev.Sender != alice.UserID || bodyOf(ev) != "m5" {
		t.Fatalf("GET event: %+v %v", ev, err)
	}
	if _, err := bob.GetEvent(ctx, roomID, "$nonexistent"); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("unknown event: %v", err)
	}
	// An event of another room is not found through this room.
	other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.GetEvent(ctx, other.RoomID, ids[5]); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("event through the wrong room: %v", err)
	}

	c, err := bob.Context(ctx, roomID, ids[5], nil, 4)
	if err != nil {
		t.Fatal(err)
	}
	if c.Event.ID != ids[5] || len(c.EventsBefore) != 2 || len(c.EventsAfter) != 2 ||
		c.EventsBefore[0].ID != ids[4] || c.EventsBefore[1].ID != ids[3] ||
		c.EventsAfter[0].ID != ids[6] || c.EventsAfter[1].ID != ids[7] {
		t.Fatalf("context: event %s before %v after %v", c.Event.ID, c.EventsBefore, c.EventsAfter)
	}
	var stateTypes []event.Type
	for _, e := range c.State {
		stateTypes = append(stateTypes, e.Type)
	}
	for _, want := range []event.Type{event.StateCreate, event.StatePowerLevels, event.StateMember} {
		if !slices.Contains(stateTypes, want) {
			t.Fatalf("context state lacks %s: %v", want.Type, stateTypes)
		}
	}
	// The tokens continue in /messages.
	back, err := bob.Messages(ctx, roomID, c.Start, "", mautrix.DirectionBackward, nil, 2)
	if err != nil || len(back.Chunk) != 2 || back.Chunk[0].ID != ids[2] || back.Chunk[1].ID != ids[1] {
		t.Fatalf("messages before context start: %v %v", back, err)
	}
	fwd, err := bob.Messages(ctx, roomID, c.End, "", mautrix.DirectionForward, nil, 5)
	if err != nil || len(fwd.Chunk) != 2 || fwd.Chunk[0].ID != ids[8] || fwd.Chunk[1].ID != ids[9] {
		t.Fatalf("messages after context end: %v %v", fwd, err)
	}
	// The filter applies to the surrounding events and the state.
	filtered, err := bob.Context(ctx, roomID, ids[1], &mautrix.FilterPart{NotTypes: []event.Type{event.EventMessage}}, 6)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range append(append(filtered.EventsBefore, filtered.EventsAfter...), filtered.State...) {
		if e.Type == event.EventMessage {
			t.Fatalf("filtered context holds a message: %s", e.ID)
		}
	}
	if len(filtered.EventsBefore) == 0 {
		t.Fatal("filtered context lost the room's state events before the message")
	}
	// Lazy-loaded members: only the senders' member events come along.
	lazy := &mautrix.FilterPart{LazyLoadMembers: true}
	lm, err := bob.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, lazy, 3)
	if err != nil || len(lm.Chunk) != 3 || len(lm.State) != 1 || lm.State[0].Type != event.StateMember ||
		lm.State[0].GetStateKey() != alice.UserID.String() {
		t.Fatalf("lazy-loaded /messages: %d events, state %v, %v", len(lm.Chunk), lm.State, err)
	}
	lc, err := bob.Context(ctx, roomID, ids[5], lazy, 4)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, e := range lc.State {
		if e.Type == event.StateMember {
			members = append(members, e.GetStateKey())
		}
	}
	if !slices.Equal(members, []string{alice.UserID.String()}) || len(lc.State) < 3 {
		t.Fatalf("lazy-loaded context state members %v (%d events)", members, len(lc.State))
	}
	if _, err := bob.Context(ctx, roomID, "$nonexistent", nil, 4); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("context of unknown event: %v", err)
	}
}

func TestRedactions(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	for _, version := range []id.RoomVersion{"10", "11", "12"} {
		t.Run("v"+string(version), func(t *testing.T) {
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: version, Topic: "secret topic"})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID
			if _, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil {
				t.Fatal(err)
			}
			bobMsg := sendText(t, bob, roomID, "bob secret")
			aliceMsg := sendText(t, alice, roomID, "alice secret")

			// Bob has power 0; redacting alice's event needs 50.
			if _, err := bob.RedactEvent(ctx, roomID, aliceMsg, mautrix.ReqRedact{Reason: "no"}); !errors.Is(err, mautrix.MForbidden) {
				t.Fatalf("bob redacting alice's event: %v", err)
			}
			red, err := bob.RedactEvent(ctx, roomID, bobMsg, mautrix.ReqRedact{Reason: "typo", TxnID: "r1"})
			if err != nil {
				t.Fatal(err)
			}
			// The same transaction is the same redaction.
			again, err := bob.RedactEvent(ctx, roomID, bobMsg, mautrix.ReqRedact{Reason: "typo", TxnID: "r1"})
			if err != nil || again.EventID != red.EventID {
				t.Fatalf("retried redaction: %v %v", again, err)
			}
			// Alice (power 100) redacts a state event: the topic.
			topic, err := alice.FullStateEvent(ctx, roomID, event.StateTopic, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := alice.RedactEvent(ctx, roomID, topic.ID); err != nil {
				t.Fatalf("alice redacting the topic: %v", err)
			}
			last := sendText(t, alice, roomID, "after")
			caughtUp(t, bob, roomID, last)

			// Every room version serves the target both top-level and in
			// content (room v11's compatibility rule for clients).
			checkRedacts := func(where string, e *event.Event) {
				t.Helper()
				if e.Redacts != bobMsg || e.Content.Raw["redacts"] != bobMsg.String() {
					t.Fatalf("%s: redaction %s names top-level %q, content %v; want %s in both", where, e.ID, e.Redacts, e.Content.Raw["redacts"], bobMsg)
				}
			}
			checkRedacted := func(where string, e *event.Event) {
				t.Helper()
				checkRedacts(where+" redacted_because", e.Unsigned.RedactedBecause)
				if len(e.Content.Raw) != 0 || e.Unsigned.RedactedBecause == nil || e.Unsigned.RedactedBecause.ID != red.EventID {
					t.Fatalf("%s: redacted event %s content %v redacted_because %v", where, e.ID, e.Content.Raw, e.Unsigned.RedactedBecause)
				}
				if r, _ := e.Unsigned.RedactedBecause.Content.Raw["reason"].(string); r != "typo" {
					t.Fatalf("%s: redaction reason %q", where, r)
				}
			}
			ev, err := alice.GetEvent(ctx, roomID, bobMsg)
			if err != nil {
				t.Fatal(err)
			}
			checkRedacted("/event", ev)
			msgs, err := alice.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 20)
			if err != nil {
				t.Fatal(err)
			}
			var sawRedaction bool
			for _, e := range msgs.Chunk {
				switch e.ID {
				case bobMsg:
					checkRedacted("/messages", e)
				case aliceMsg:
					if bodyOf(e) != "alice secret" {
						t.Fatalf("unrelated event changed: %v", e.Content.Raw)
					}
				case red.EventID:
					sawRedaction = true
					checkRedacts("/messages", e)
				}
			}
			if !sawRedaction {
				t.Fatal("the redaction is not in /messages")
			}
			c, err := alice.Context(ctx, roomID, bobMsg, nil, 2)
			if err != nil {
				t.Fatal(err)
			}
			checkRedacted("/context", c.Event)
			init, err := bob.SyncRequest(ctx, 0, "", `{"room":{"timeline":{"limit":50}}}`, false, "")
			if err != nil {
				t.Fatal(err)
			}
			sawRedaction = false
			for _, e := range init.Rooms.Join[roomID].Timeline.Events {
				switch e.ID {
				case bobMsg:
					checkRedacted("/sync", e)
				case red.EventID:
					sawRedaction = true
					checkRedacts("/sync", e)
				}
			}
			if !sawRedaction {
				t.Fatal("the redaction is not in /sync")
			}
			// The current state copy holds the redacted topic.
			var tc map[string]any
			if err := alice.StateEvent(ctx, roomID, event.StateTopic, "", &tc); err != nil || len(tc) != 0 {
				t.Fatalf("redacted topic content %v %v", tc, err)
			}
		})
	}
}
