package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// typingWakes: a /sync long poll with the longest timeout the server
// allows is answered by a typing notification (from the presence service,
// through JetStream, to the client-API's notifier), well before its
// timeout.
func typingWakes(t *testing.T, alice, bob *user, room id.RoomID) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	typing := func(resp []*event.Event) []string {
		for _, ev := range resp {
			if ev.Type.Type == "m.typing" {
				var c struct {
					UserIDs []string `json:"user_ids"`
				}
				_ = json.Unmarshal(ev.Content.VeryRaw, &c)
				return c.UserIDs
			}
		}
		return nil
	}
	done := make(chan []string, 1)
	errs := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		since := bob.since
		close(started)
		for {
			resp, err := bob.cli.SyncRequest(ctx, 300000, since, timelineFilter, false, event.PresenceOffline)
			if err != nil {
				errs <- err
				return
			}
			since = resp.NextBatch
			if jr := resp.Rooms.Join[room]; jr != nil {
				if users := typing(jr.Ephemeral.Events); users != nil {
					bob.since = since
					done <- users
					return
				}
			}
		}
	}()
	<-started
	if _, err := alice.cli.UserTyping(ctx, room, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case users := <-done:
		if !slices.Equal(users, []string{alice.cli.UserID.String()}) {
			t.Fatalf("typing = %v", users)
		}
	case err := <-errs:
		t.Fatalf("long poll not woken by typing: %v", err)
	}
	if _, err := alice.cli.UserTyping(ctx, room, false, 0); err != nil {
		t.Fatal(err)
	}
}

// ephemeralFilters: the room ephemeral filter and the presence filter of
// /sync, on real typing notifications and presence from the presence
// service.
func ephemeralFilters(t *testing.T, alice, bob *user, room id.RoomID) {
	ctx := context.Background()
	if _, err := alice.cli.UserTyping(ctx, room, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = alice.cli.UserTyping(ctx, room, false, 0) }()
	count := func(filter string) (typing, presence int, err error) {
		resp, err := bob.cli.SyncRequest(ctx, 0, "", filter, false, event.PresenceOffline)
		if err != nil {
			return 0, 0, err
		}
		if jr := resp.Rooms.Join[room]; jr != nil {
			for _, ev := range jr.Ephemeral.Events {
				if ev.Type.Type == "m.typing" {
					typing++
				}
			}
		}
		return typing, len(resp.Presence.Events), nil
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		typing, presence, err := count(`{"room":{"timeline":{"limit":1}}}`)
		if err != nil {
			return err
		}
		if typing == 0 || presence == 0 {
			return fmt.Errorf("unfiltered: %d typing, %d presence events", typing, presence)
		}
		return nil
	})
	typing, presence, err := count(`{"room":{"timeline":{"limit":1},"ephemeral":{"not_types":["m.typing"]}},"presence":{"types":["m.nothing"]}}`)
	if err != nil || typing != 0 || presence != 0 {
		t.Fatalf("filtered: %d typing, %d presence events, %v", typing, presence, err)
	}
	typing, _, err = count(`{"room":{"timeline":{"limit":1},"ephemeral":{"not_rooms":["` + room.String() + `"]}}}`)
	if err != nil || typing != 0 {
		t.Fatalf("ephemeral not_rooms: %d typing, %v", typing, err)
	}
}
