package clientapi_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// accountDataOf finds an account data event by type.
func accountDataOf(events []*event.Event, typ string) *event.Event {
	for _, e := range events {
		if e.Type.Type == typ {
			return e
		}
	}
	return nil
}

func TestAccountDataAndTags(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	as := &syncer{t: t, cli: alice}
	as.until("the room", func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Join[room.RoomID]; return ok })

	// Global account data: stored, readable, delivered once in /sync.
	if err := alice.SetAccountData(ctx, "org.example.prefs", map[string]any{"theme": "dark"}); err != nil {
		t.Fatal(err)
	}
	var prefs map[string]any
	if err := alice.GetAccountData(ctx, "org.example.prefs", &prefs); err != nil || prefs["theme"] != "dark" {
		t.Fatalf("get account data: %v %v", prefs, err)
	}
	as.until("global account data", func(r *mautrix.RespSync) bool {
		e := accountDataOf(r.AccountData.Events, "org.example.prefs")
		return e != nil && e.Content.Raw["theme"] == "dark"
	})
	again, err := alice.SyncRequest(ctx, 0, as.since, "", false, "")
	if err != nil || len(again.AccountData.Events) != 0 {
		t.Fatalf("account data repeated: %+v %v", again.AccountData, err)
	}

	// Tags are room account data (m.tag) in the joined room's section.
	if err := alice.AddTag(ctx, room.RoomID, "u.work", 0.5); err != nil {
		t.Fatal(err)
	}
	as.until("the tag", func(r *mautrix.RespSync) bool {
		jr, ok := r.Rooms.Join[room.RoomID]
		if !ok {
			return false
		}
		e := accountDataOf(jr.AccountData.Events, "m.tag")
		if e == nil {
			return false
		}
		tags, _ := e.Content.Raw["tags"].(map[string]any)
		_, has := tags["u.work"]
		return has
	})
	tags, err := alice.GetTags(ctx, room.RoomID)
	if order, _ := tags.Tags["u.work"].Order.Float64(); err != nil || order != 0.5 {
		t.Fatalf("tags: %+v %v", tags, err)
	}
	if err := alice.RemoveTag(ctx, room.RoomID, "u.work"); err != nil {
		t.Fatal(err)
	}
	if tags, _ := alice.GetTags(ctx, room.RoomID); len(tags.Tags) != 0 {
		t.Fatalf("tag not removed: %+v", tags)
	}
	if err := alice.SetRoomAccountData(ctx, room.RoomID, "org.example.room", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	var roomData map[string]any
	if err := alice.GetRoomAccountData(ctx, room.RoomID, "org.example.room", &roomData); err != nil || roomData["n"] != float64(1) {
		t.Fatalf("room account data: %v %v", roomData, err)
	}

	// An initial sync carries everything current.
	initial, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if accountDataOf(initial.AccountData.Events, "org.example.prefs") == nil ||
		accountDataOf(initial.Rooms.Join[room.RoomID].AccountData.Events, "org.example.room") == nil {
		t.Fatalf("initial sync account data: %+v / %+v", initial.AccountData, initial.Rooms.Join[room.RoomID].AccountData)
	}

	// Permissions and server-controlled types.
	other := bob.BuildClientURL("v3", "user", alice.UserID, "account_data", "org.example.prefs")
	if _, err := bob.MakeRequest(ctx, http.MethodGet, other, nil, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("reading another user's account data: %v", err)
	}
	if _, err := bob.MakeRequest(ctx, http.MethodPut, other, map[string]any{}, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("writing another user's account data: %v", err)
	}
	if _, err := bob.MakeRequest(ctx, http.MethodGet, bob.BuildClientURL("v3", "user", alice.UserID, "rooms", room.RoomID, "tags"), nil, nil); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("reading another user's tags: %v", err)
	}
	err = alice.SetRoomAccountData(ctx, room.RoomID, "m.fully_read", map[string]any{"event_id": "$x"})
	var herr mautrix.HTTPError
	if !errors.As(err, &herr) || herr.Response.StatusCode != http.StatusMethodNotAllowed || !errors.Is(err, mautrix.MBadJSON) {
		t.Fatalf("m.fully_read through account data: %v", err)
	}
	if err := alice.GetAccountData(ctx, "org.example.none", &prefs); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("missing account data: %v", err)
	}
	if err := bob.GetAccountData(ctx, "org.example.prefs", &prefs); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("bob sees alice's account data: %v", err)
	}
	_ = id.RoomID("")
}
