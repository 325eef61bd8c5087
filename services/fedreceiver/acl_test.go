package fedreceiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// TestServerACL: once a room's m.room.server_acl denies remote.test, its
// PDUs get an error and are not stored, its typing and receipts for the
// room are dropped, and every room endpoint answers 403 M_FORBIDDEN;
// evil.test, still allowed, is unaffected by the deny (but not in the
// room).
func TestServerACL(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	roomID, rr := e.joinedRoom(alice, "11")
	bob := e.remote.User("bob")
	_, err := alice.SendStateEvent(e.ctx, id.RoomID(roomID), event.StateServerACL, "",
		map[string]any{"allow": []string{"*"}, "deny": []string{"remote.*"}, "allow_ip_literals": false})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		status, _ := e.remote.Get("/_matrix/federation/v1/state_ids/" + esc(roomID) + "?event_id=" + esc(rr.Last.EventID()))
		if status != http.StatusForbidden {
			return fmt.Errorf("state_ids: %d", status)
		}
		return nil
	})
	known := rr.Last.EventID()
	msg := rr.Message(bob, "denied")
	status, res := e.remote.Send(raws(msg),
		edu(t, "m.typing", map[string]any{"room_id": roomID, "user_id": bob, "typing": true}),
		edu(t, "m.receipt", map[string]any{roomID: map[string]any{"m.read": map[string]any{bob: map[string]any{
			"event_ids": []string{known}, "data": map[string]any{"ts": 1}}}}}))
	if status != 200 || !strings.Contains(res[msg.EventID()].Error, "server ACL") {
		t.Fatalf("a PDU of a denied server: %d %+v", status, res)
	}
	if e.event(msg.EventID()) != nil {
		t.Fatal("a denied server's PDU was stored")
	}
	q := "/_matrix/federation/v1/"
	for _, c := range []fedpeer.Request{
		{Method: "GET", Path: q + "state/" + esc(roomID) + "?event_id=" + esc(known)},
		{Method: "GET", Path: q + "event_auth/" + esc(roomID) + "/" + esc(known)},
		{Method: "GET", Path: q + "backfill/" + esc(roomID) + "?v=" + esc(known) + "&limit=5"},
		{Method: "POST", Path: q + "get_missing_events/" + esc(roomID), Body: map[string]any{"earliest_events": []string{}, "latest_events": []string{known}}},
		{Method: "GET", Path: q + "event/" + esc(known)},
		{Method: "GET", Path: q + "make_join/" + esc(roomID) + "/" + esc(e.remote.User("new")) + "?ver=11"},
		{Method: "GET", Path: q + "make_leave/" + esc(roomID) + "/" + esc(bob)},
		{Method: "GET", Path: q + "make_knock/" + esc(roomID) + "/" + esc(bob) + "?ver=11"},
		{Method: "PUT", Path: q + "send_leave/" + esc(roomID) + "/" + esc(msg.EventID()), Body: json.RawMessage(msg.JSON())},
		{Method: "PUT", Path: "/_matrix/federation/v2/send_join/" + esc(roomID) + "/" + esc(msg.EventID()), Body: json.RawMessage(msg.JSON())},
		{Method: "PUT", Path: q + "send_knock/" + esc(roomID) + "/" + esc(msg.EventID()), Body: json.RawMessage(msg.JSON())},
		{Method: "GET", Path: q + "timestamp_to_event/" + esc(roomID) + "?dir=b&ts=1"},
		{Method: "GET", Path: q + "hierarchy/" + esc(roomID)},
	} {
		if status, body := e.remote.Do(c); status != http.StatusForbidden || errcode(body) != "M_FORBIDDEN" {
			t.Errorf("%s %s: %d %s, want 403 M_FORBIDDEN", c.Method, c.Path, status, body)
		}
	}
	// Typing and receipt were dropped: alice's sync shows neither.
	resp, err := alice.SyncRequest(context.Background(), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range resp.Rooms.Join[id.RoomID(roomID)].Ephemeral.Events {
		raw, _ := json.Marshal(ev.Content.Raw)
		if strings.Contains(string(raw), bob) {
			t.Fatalf("a denied server's EDU reached /sync: %s %s", ev.Type.Type, raw)
		}
	}
	if m := e.membership(roomID, bob); m != spec.Join {
		t.Fatalf("bob's membership %q (ACLs do not change the graph)", m)
	}
}
