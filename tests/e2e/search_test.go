package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// searchScenario runs server-side search in its own room with "joined"
// history visibility: bob finds only what was sent after he joined, pages
// through the results newest first, and stops finding a redacted message.
func searchScenario(t *testing.T, alice, bob *mautrix.Client) {
	ctx := context.Background()
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(ctx, room, "zephyr before bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	var sent []id.EventID
	for i := range 3 {
		resp, err := alice.SendText(ctx, room, fmt.Sprintf("zephyr number %d", i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, resp.EventID)
	}
	find := func() ([]id.EventID, error) {
		var out []id.EventID
		req := &mautrix.ReqSearch{SearchTerm: "zephyr", OrderBy: "recent", Filter: &mautrix.FilterPart{Rooms: []id.RoomID{room}, Limit: 2}}
		for range 10 {
			resp, err := bob.Search(ctx, req)
			if err != nil {
				return nil, err
			}
			for _, r := range resp.Results {
				out = append(out, r.Event.ID)
			}
			if resp.NextBatch == "" {
				return out, nil
			}
			req.NextBatch = resp.NextBatch
		}
		return nil, fmt.Errorf("search pagination does not end")
	}
	want := []id.EventID{sent[2], sent[1], sent[0]}
	testkit.Eventually(t, 30*time.Second, func() error {
		got, err := find()
		if err != nil || !slices.Equal(got, want) {
			return fmt.Errorf("bob's search: %v %v, want %v", got, err, want)
		}
		return nil
	})
	if _, err := alice.RedactEvent(ctx, room, sent[1]); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		got, err := find()
		if err != nil || !slices.Equal(got, []id.EventID{sent[2], sent[0]}) {
			return fmt.Errorf("after the redaction: %v %v", got, err)
		}
		return nil
	})
}
