package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/services/clientapi"
)

// TestReplicasWakeEachOther runs two client-API replicas. Bob long-polls
// replica B while Alice writes through replica A. Each stored room event
// is stored by one replica or the other (they share the durable consumer),
// and account data by the replica that got the request; either way Bob's
// long poll on B must wake for it, long before its 2-minute timeout.
func TestReplicasWakeEachOther(t *testing.T) {
	urls := startReplicas(t, clientapi.DefaultConfig(), 2)
	ctx := context.Background()
	alice := newUser(t, urls[0], "alice")
	bob := newUser(t, urls[1], "bob")
	bobOnA, err := mautrix.NewClient(urls[0], bob.UserID, bob.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	first, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	since := first.NextBatch

	// waitFor long-polls replica B (timeout 2 minutes) until cond holds,
	// failing if that takes 30 s: only a wake-up can make it in time.
	waitFor := func(what string, cond func(*mautrix.RespSync) bool) {
		t.Helper()
		pollCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for {
			resp, err := bob.SyncRequest(pollCtx, 120000, since, `{"room":{"timeline":{"limit":50}}}`, false, "")
			if errors.Is(err, context.DeadlineExceeded) || pollCtx.Err() != nil {
				t.Fatalf("long poll on replica B not woken for %s", what)
			}
			if err != nil {
				t.Fatalf("sync: %v", err)
			}
			since = resp.NextBatch
			if cond(resp) {
				return
			}
		}
	}

	for i := range 8 {
		body := fmt.Sprintf("message %d", i)
		go func() {
			if _, err := alice.SendText(ctx, room.RoomID, body); err != nil {
				t.Errorf("send %s: %v", body, err)
			}
		}()
		waitFor(body, func(r *mautrix.RespSync) bool {
			for _, ev := range r.Rooms.Join[room.RoomID].Timeline.Events {
				if ev.Type == event.EventMessage && ev.Content.Raw["body"] == body {
					return true
				}
			}
			return false
		})
	}

	go func() {
		if err := bobOnA.SetAccountData(ctx, "org.example.replicas", map[string]any{"on": "A"}); err != nil {
			t.Errorf("account data: %v", err)
		}
	}()
	waitFor("account data written on replica A", func(r *mautrix.RespSync) bool {
		for _, ev := range r.AccountData.Events {
			if ev.Type.Type == "org.example.replicas" {
				return true
			}
		}
		return false
	})
}
