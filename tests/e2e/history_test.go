package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// historyScenario runs in its own room (the main room's history is compared
// message by message later): history visibility "joined", a redaction
// refused and one applied, seen through /event and /context.
func historyScenario(t *testing.T, alice, bob *mautrix.Client) {
	ctx := context.Background()
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	before, err := alice.SendText(ctx, room, "before bob joined")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendText(ctx, room, "to be redacted")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.RedactEvent(ctx, room, msg.EventID); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("bob redacting alice's message: %v", err)
	}
	red, err := alice.RedactEvent(ctx, room, msg.EventID, mautrix.ReqRedact{Reason: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		ev, err := bob.GetEvent(ctx, room, msg.EventID)
		if err != nil {
			return err
		}
		if len(ev.Content.Raw) != 0 || ev.Unsigned.RedactedBecause == nil || ev.Unsigned.RedactedBecause.ID != red.EventID {
			return errors.New("not redacted yet")
		}
		return nil
	})
	// Bob joined after "before bob joined" under "joined" visibility.
	if _, err := bob.GetEvent(ctx, room, before.EventID); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("bob reading history from before his join: %v", err)
	}
	c, err := bob.Context(ctx, room, msg.EventID, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range append(c.EventsBefore, c.EventsAfter...) {
		if e.ID == before.EventID {
			t.Fatal("/context shows bob an event from before his join")
		}
	}
	if len(c.EventsAfter) == 0 || c.EventsAfter[0].ID != red.EventID {
		t.Fatalf("/context after the message: %v", c.EventsAfter)
	}
}
