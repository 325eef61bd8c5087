package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/services/clientapi"
)

type legacyRoom struct {
	RoomID     string        `json:"room_id"`
	Membership string        `json:"membership"`
	Invite     *event.Event  `json:"invite"`
	State      []event.Event `json:"state"`
	Visibility string        `json:"visibility"`
	Messages   *struct {
		Start string        `json:"start"`
		End   string        `json:"end"`
		Chunk []event.Event `json:"chunk"`
	} `json:"messages"`
	AccountData []map[string]any `json:"account_data"`
}

type legacyEvents struct {
	Start string        `json:"start"`
	End   string        `json:"end"`
	Chunk []event.Event `json:"chunk"`
}

func legacyGet(cli *mautrix.Client, path []any, query url.Values, out any) error {
	u := cli.BuildClientURL(path...)
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	_, err := cli.MakeRequest(context.Background(), http.MethodGet, u, nil, out)
	return err
}

func findRoom(rooms []legacyRoom, roomID id.RoomID) *legacyRoom {
	for i := range rooms {
		if rooms[i].RoomID == roomID.String() {
			return &rooms[i]
		}
	}
	return nil
}

func chunkIDs(events []event.Event) []id.EventID {
	var out []id.EventID
	for _, e := range events {
		out = append(out, e.ID)
	}
	return out
}

func TestLegacyEndpoints(t *testing.T) {
	cfg := clientapi.DefaultConfig()
	cfg.Registration.GuestAccess = true
	hs := startStackWith(t, cfg)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	guest, err := mautrix.NewClient(hs, "", "")
	if err != nil {
		t.Fatal(err)
	}
	g, _, err := guest.RegisterGuest(ctx, &mautrix.ReqRegister[any]{})
	if err != nil {
		t.Fatal(err)
	}
	guest.SetCredentials(g.UserID, g.AccessToken)

	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Old school"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	var hello []id.EventID
	for _, body := range []string{"hello 1", "hello 2", "hello 3"} {
		hello = append(hello, sendText(t, alice, room, body))
	}
	caughtUp(t, bob, room, hello[2])
	invited, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{carol.UserID}})
	if err != nil {
		t.Fatal(err)
	}

	var initial struct {
		End         string           `json:"end"`
		Rooms       []legacyRoom     `json:"rooms"`
		Presence    []map[string]any `json:"presence"`
		AccountData []map[string]any `json:"account_data"`
	}
	if err := legacyGet(bob, []any{"v3", "initialSync"}, url.Values{"limit": {"2"}}, &initial); err != nil {
		t.Fatal(err)
	}
	r := findRoom(initial.Rooms, room)
	if initial.End == "" || initial.Presence == nil || initial.AccountData == nil || r == nil {
		t.Fatalf("/initialSync: %+v", initial)
	}
	if r.Membership != "join" || r.Visibility != "private" || r.Messages == nil ||
		!slices.Equal(chunkIDs(r.Messages.Chunk), hello[1:]) || r.Messages.Chunk[0].RoomID != room || r.Messages.Start == "" {
		t.Fatalf("/initialSync room: %+v", r)
	}
	if !slices.ContainsFunc(r.State, func(e event.Event) bool { return e.Type == event.StateRoomName && e.RoomID == room }) {
		t.Fatalf("/initialSync state: %+v", r.State)
	}
	// The start token continues in /messages.
	older, err := bob.Messages(ctx, room, r.Messages.Start, "", mautrix.DirectionBackward, nil, 1)
	if err != nil || len(older.Chunk) != 1 || older.Chunk[0].ID != hello[0] {
		t.Fatalf("/messages from /initialSync's start: %v %v", older, err)
	}
	// Carol's invite (the consumer may take a moment to store it).
	testkit.Eventually(t, 30*time.Second, func() error {
		var carolInitial struct {
			Rooms []legacyRoom `json:"rooms"`
		}
		if err := legacyGet(carol, []any{"v3", "initialSync"}, nil, &carolInitial); err != nil {
			return err
		}
		if inv := findRoom(carolInitial.Rooms, invited.RoomID); inv == nil || inv.Membership != "invite" || inv.Invite == nil ||
			inv.Invite.Type != event.StateMember || inv.Invite.Sender != alice.UserID {
			return fmt.Errorf("carol's invite in /initialSync: %+v", carolInitial.Rooms)
		}
		return nil
	})

	t.Run("events long-poll", func(t *testing.T) {
		done := make(chan legacyEvents, 1)
		errs := make(chan error, 1)
		go func() {
			var out legacyEvents
			err := legacyGet(bob, []any{"v3", "events"}, url.Values{"from": {initial.End}, "timeout": {"30000"}}, &out)
			if err != nil {
				errs <- err
				return
			}
			done <- out
		}()
		live := sendText(t, alice, room, "live")
		var out legacyEvents
		select {
		case out = <-done:
		case err := <-errs:
			t.Fatal(err)
		}
		if out.Start != initial.End || out.End == "" || !slices.Contains(chunkIDs(out.Chunk), live) {
			t.Fatalf("/events: %+v", out)
		}
		for _, e := range out.Chunk {
			if e.ID == live && e.RoomID != room {
				t.Fatalf("event without room_id: %+v", e)
			}
		}
		// Nothing new since: an empty chunk at once with timeout 0.
		var again legacyEvents
		if err := legacyGet(bob, []any{"v3", "events"}, url.Values{"from": {out.End}, "timeout": {"0"}}, &again); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(chunkIDs(again.Chunk), live) || again.Chunk == nil {
			t.Fatalf("/events repeats: %+v", again)
		}
		if err := legacyGet(bob, []any{"v3", "events"}, url.Values{"from": {"garbage"}}, nil); !errors.Is(err, mautrix.MInvalidParam) {
			t.Fatalf("bad from: %v", err)
		}
	})

	t.Run("events by ID", func(t *testing.T) {
		var ev event.Event
		if err := legacyGet(bob, []any{"v3", "events", hello[0]}, nil, &ev); err != nil || ev.ID != hello[0] || ev.RoomID != room {
			t.Fatalf("/events/{eventId}: %+v %v", ev, err)
		}
		// Carol was never in the room (shared visibility does not let
		// outsiders read).
		if err := legacyGet(carol, []any{"v3", "events", hello[0]}, nil, nil); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("carol reading the event: %v", err)
		}
	})

	t.Run("room initialSync", func(t *testing.T) {
		var info legacyRoom
		if err := legacyGet(bob, []any{"v3", "rooms", room, "initialSync"}, nil, &info); err != nil {
			t.Fatal(err)
		}
		if info.RoomID != room.String() || info.Membership != "join" || info.Messages == nil || len(info.Messages.Chunk) == 0 ||
			!slices.Contains(chunkIDs(info.Messages.Chunk), hello[2]) || len(info.State) == 0 || info.AccountData == nil {
			t.Fatalf("room initialSync: membership %q, messages %+v, %d state events", info.Membership, info.Messages, len(info.State))
		}
		if err := legacyGet(carol, []any{"v3", "rooms", room, "initialSync"}, nil, nil); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("non-member: %v", err)
		}
	})

	t.Run("peeking a world_readable room", func(t *testing.T) {
		open, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		msg := sendText(t, alice, open.RoomID, "public words")
		caughtUp(t, alice, open.RoomID, msg)
		for _, cli := range []*mautrix.Client{carol, guest} {
			var info legacyRoom
			if err := legacyGet(cli, []any{"v3", "rooms", open.RoomID, "initialSync"}, nil, &info); err != nil {
				t.Fatalf("%s: %v", cli.UserID, err)
			}
			if info.Membership != "" || info.Messages == nil || !slices.Contains(chunkIDs(info.Messages.Chunk), msg) {
				t.Fatalf("%s peeking: %+v", cli.UserID, info)
			}
		}
		var first legacyRoom
		if err := legacyGet(guest, []any{"v3", "rooms", open.RoomID, "initialSync"}, nil, &first); err != nil {
			t.Fatal(err)
		}
		done := make(chan legacyEvents, 1)
		errs := make(chan error, 1)
		go func() {
			var out legacyEvents
			q := url.Values{"room_id": {open.RoomID.String()}, "from": {first.Messages.End}, "timeout": {"30000"}}
			if err := legacyGet(guest, []any{"v3", "events"}, q, &out); err != nil {
				errs <- err
				return
			}
			done <- out
		}()
		live := sendText(t, alice, open.RoomID, "peeked live")
		select {
		case out := <-done:
			if !slices.Equal(chunkIDs(out.Chunk), []id.EventID{live}) {
				t.Fatalf("peeking /events: %+v", out)
			}
		case err := <-errs:
			t.Fatal(err)
		}
		// Guests may also use the plain stream.
		if err := legacyGet(guest, []any{"v3", "events"}, url.Values{"timeout": {"0"}}, nil); err != nil {
			t.Fatalf("guest /events: %v", err)
		}
		// Peeking a room that is not world_readable is refused.
		q := url.Values{"room_id": {room.String()}, "timeout": {"0"}}
		if err := legacyGet(carol, []any{"v3", "events"}, q, nil); !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("peeking a shared room: %v", err)
		}
	})
}
