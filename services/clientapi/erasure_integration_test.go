package clientapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// deactivate deactivates cli's account (UIA with its password).
func deactivate(t *testing.T, cli *mautrix.Client, username string, erase bool) {
	t.Helper()
	_, err := cli.MakeRequest(context.Background(), "POST", cli.BuildClientURL("v3", "account", "deactivate"), map[string]any{
		"erase": erase,
		"auth":  map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": username}, "password": "pw-" + username},
	}, nil)
	if err != nil {
		t.Fatalf("deactivate %s: %v", username, err)
	}
}

// bodyIn returns the body of the event with the given ID among evs, and
// whether it is there.
func bodyIn(evs []*event.Event, eventID id.EventID) (string, bool) {
	for _, ev := range evs {
		if ev.ID == eventID {
			return bodyOf(ev), true
		}
	}
	return "", false
}

// searchCount is how many results POST /search finds for term.
func searchCount(t *testing.T, cli *mautrix.Client, term string) int {
	t.Helper()
	var resp struct {
		SearchCategories struct {
			RoomEvents struct {
				Results []json.RawMessage `json:"results"`
			} `json:"room_events"`
		} `json:"search_categories"`
	}
	_, err := cli.MakeRequest(context.Background(), "POST", cli.BuildClientURL("v3", "search"),
		map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": term}}}, &resp)
	if err != nil {
		t.Fatalf("search %q: %v", term, err)
	}
	return len(resp.SearchCategories.RoomEvents.Results)
}

// TestErasure: after a deactivation with erase, users who join later get
// redacted copies of the erased user's messages everywhere the client-API
// serves room events from its copy, and search does not find them; users
// who could see the messages before the erasure (joined then, or joined
// later but before it, under shared history) still see them whole. A
// deactivation without erase changes nothing for later joiners.
func TestErasure(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	dave := newUser(t, hs, "dave")
	erin := newUser(t, hs, "erin")

	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{bob, erin} {
		if _, err := c.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	erased, err := bob.SendText(ctx, room.RoomID, "bob's zanzibar secret")
	if err != nil {
		t.Fatal(err)
	}
	kept, err := erin.SendText(ctx, room.RoomID, "erin's zanzibar note")
	if err != nil {
		t.Fatal(err)
	}
	// Carol joins after the messages but before the erasure: shared
	// history let her see them then.
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	deactivate(t, bob, "bob", true)
	deactivate(t, erin, "erin", false)
	if _, err := dave.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}

	messages := func(cli *mautrix.Client) []*event.Event {
		t.Helper()
		var out []*event.Event
		testkit.Eventually(t, 30*time.Second, func() error {
			resp, err := cli.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 100)
			if err != nil {
				return err
			}
			if _, ok := bodyIn(resp.Chunk, erased.EventID); !ok {
				return fmt.Errorf("bob's message not in /messages yet")
			}
			out = resp.Chunk
			return nil
		})
		return out
	}
	for _, c := range []struct {
		cli      *mautrix.Client
		name     string
		wantBody string
	}{
		{alice, "alice (joined before)", "bob's zanzibar secret"},
		{carol, "carol (joined before the erasure)", "bob's zanzibar secret"},
		{dave, "dave (joined after)", ""},
	} {
		chunk := messages(c.cli)
		if body, _ := bodyIn(chunk, erased.EventID); body != c.wantBody {
			t.Errorf("%s: /messages body of bob's message %q, want %q", c.name, body, c.wantBody)
		}
		if body, _ := bodyIn(chunk, kept.EventID); body != "erin's zanzibar note" {
			t.Errorf("%s: /messages body of erin's message %q, want it whole", c.name, body)
		}
		ev, err := c.cli.GetEvent(ctx, room.RoomID, erased.EventID)
		if err != nil {
			t.Fatalf("%s: /event: %v", c.name, err)
		}
		if body := bodyOf(ev); body != c.wantBody || ev.Sender != bob.UserID || ev.Type != event.EventMessage {
			t.Errorf("%s: /event: %s from %s, body %q; want an m.room.message from bob with body %q", c.name, ev.Type.Type, ev.Sender, body, c.wantBody)
		}
		cx, err := c.cli.Context(ctx, room.RoomID, kept.EventID, nil, 10)
		if err != nil {
			t.Fatalf("%s: /context: %v", c.name, err)
		}
		if body, ok := bodyIn(cx.EventsBefore, erased.EventID); !ok || body != c.wantBody {
			t.Errorf("%s: /context body of bob's message %q (found %v), want %q", c.name, body, ok, c.wantBody)
		}
		// An initial sync's timeline.
		resp, err := c.cli.SyncRequest(ctx, 0, "", `{"room":{"timeline":{"limit":50}}}`, true, "")
		if err != nil {
			t.Fatal(err)
		}
		jr, ok := resp.Rooms.Join[room.RoomID]
		if !ok {
			t.Fatalf("%s: room not in the initial sync", c.name)
		}
		if body, ok := bodyIn(jr.Timeline.Events, erased.EventID); !ok || body != c.wantBody {
			t.Errorf("%s: /sync body of bob's message %q (found %v), want %q", c.name, body, ok, c.wantBody)
		}
		wantHits := 2
		if c.wantBody == "" {
			wantHits = 1
		}
		if n := searchCount(t, c.cli, "zanzibar"); n != wantHits {
			t.Errorf("%s: search found %d messages, want %d", c.name, n, wantHits)
		}
	}
}
