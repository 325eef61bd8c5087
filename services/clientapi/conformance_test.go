package clientapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestSpecMUSTs checks MUSTs of the client-server API's text (spec v1.19,
// data/api/client-server) that no other test covered when
// docs/conformance.md was written; each subtest names its endpoint and
// sentence.
func TestSpecMUSTs(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice, bob := newUser(t, hs, "alice"), newUser(t, hs, "bob")
	room := createRoom(t, alice, map[string]any{"room_version": "10", "preset": "public_chat"})
	_, err := bob.JoinRoomByID(ctx, room)
	must(t, "bob joins", err)

	// room_send.yaml: "Homeservers MUST allow clients to send
	// m.room.redaction events with this endpoint for all room versions. In
	// rooms with a version older than 11 they MUST move the redacts
	// property inside the content to the top level of the event."
	t.Run("send m.room.redaction in a v10 room", func(t *testing.T) {
		msg, err := alice.SendText(ctx, room, "to be redacted")
		must(t, "send", err)
		red, err := alice.SendMessageEvent(ctx, room, event.EventRedaction, map[string]any{"redacts": msg.EventID, "reason": "r"})
		must(t, "send m.room.redaction", err)
		got := rawGet(t, alice, "v3", "rooms", room, "event", red.EventID)
		if got["redacts"] != msg.EventID.String() {
			t.Fatalf("top-level redacts %v, want %s: %v", got["redacts"], msg.EventID, got)
		}
		target := rawGet(t, alice, "v3", "rooms", room, "event", msg.EventID)
		if c, _ := target["content"].(map[string]any); len(c) != 0 {
			t.Fatalf("the target was not redacted: %v", target)
		}
	})

	// pushrules.yaml: "When creating push rules, they MUST be enabled by
	// default." and a rule ID starting with "." "MUST be rejected".
	t.Run("push rules enabled by default, dot IDs refused", func(t *testing.T) {
		must(t, "put rule", raw(t, alice, http.MethodPut, map[string]any{"actions": []any{"notify"}, "pattern": "cake"}, nil,
			"pushrules", "global", "content", "nocake"))
		var en struct {
			Enabled bool `json:"enabled"`
		}
		must(t, "get enabled", raw(t, alice, http.MethodGet, nil, &en, "pushrules", "global", "content", "nocake", "enabled"))
		if !en.Enabled {
			t.Fatal("a new push rule is not enabled")
		}
		err := raw(t, alice, http.MethodPut, map[string]any{"actions": []any{"notify"}, "pattern": "x"}, nil, "pushrules", "global", "content", ".dot")
		wantMatrixError(t, "rule ID starting with a dot", err, http.StatusBadRequest, "M_INVALID_PARAM")
	})

	// read_markers.yaml: "The event MUST belong to the room."
	t.Run("read marker for an event of another room", func(t *testing.T) {
		other := createRoom(t, alice, map[string]any{})
		ev, err := alice.SendText(ctx, other, "elsewhere")
		must(t, "send", err)
		err = raw(t, alice, http.MethodPost, map[string]any{"m.fully_read": ev.EventID}, nil, "rooms", room, "read_markers")
		if err == nil {
			t.Fatal("a fully-read marker at another room's event was accepted")
		}
		wantMatrixError(t, "fully-read marker at another room's event", err, http.StatusNotFound, "M_NOT_FOUND")
		err = raw(t, alice, http.MethodPost, map[string]any{"m.fully_read": "$nosuchevent"}, nil, "rooms", room, "read_markers")
		wantMatrixError(t, "fully-read marker at an unknown event", err, http.StatusNotFound, "M_NOT_FOUND")
		inRoom, err := alice.SendText(ctx, room, "here")
		must(t, "send", err)
		must(t, "fully-read marker in the room", raw(t, alice, http.MethodPost, map[string]any{"m.fully_read": inRoom.EventID}, nil, "rooms", room, "read_markers"))
	})

	// mutual_rooms.yaml: "If the provided user_id is not a valid user, the
	// server MUST return an empty list of rooms."
	t.Run("mutual rooms with a user that does not exist", func(t *testing.T) {
		for _, u := range []string{"@nobody:example.test", "@nobody:elsewhere.test"} {
			var resp struct {
				Joined []string `json:"joined"`
			}
			_, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "mutual_rooms"}, map[string]string{"user_id": u}), nil, &resp)
			if err != nil || len(resp.Joined) != 0 {
				t.Fatalf("%q: %v %v, want an empty list", u, resp.Joined, err)
			}
		}
		// The 400 is for IDs that are not compliant user IDs.
		_, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v1", "mutual_rooms"}, map[string]string{"user_id": "not a user id"}), nil, nil)
		wantMatrixError(t, "a non-compliant user ID", err, http.StatusBadRequest, "M_INVALID_PARAM")
	})

	// admin.yaml: "servers MUST ensure that authorisation is checked prior
	// to trying to do account lookups": a non-admin gets 403 for a user
	// that does not exist, as for one that does.
	t.Run("admin endpoints check authorisation before lookups", func(t *testing.T) {
		for _, kind := range []string{"suspend", "lock"} {
			for _, u := range []string{"@nobody:example.test", alice.UserID.String()} {
				_, err := bob.MakeRequest(ctx, http.MethodGet, bob.BuildClientURL("v1", "admin", kind, u), nil, nil)
				wantMatrixError(t, kind+" "+u, err, http.StatusForbidden, "M_FORBIDDEN")
			}
		}
	})

	// device_management.yaml: "regular clients may only update existing
	// devices"; an update answers 200.
	t.Run("device update and unknown device", func(t *testing.T) {
		_, resp, err := alice.MakeFullRequestWithResp(ctx, mautrix.FullRequest{Method: http.MethodPut,
			URL: alice.BuildClientURL("v3", "devices", alice.DeviceID), RequestJSON: map[string]any{"display_name": "phone"}})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("update: %v", err)
		}
		err = raw(t, alice, http.MethodPut, map[string]any{"display_name": "x"}, nil, "devices", "NOSUCHDEVICE")
		wantMatrixError(t, "unknown device", err, http.StatusNotFound, "M_NOT_FOUND")
	})

	// profile.yaml: the body's key "MUST match the keyName specified in the
	// URL"; "For avatar_url, the value MUST be an MXC URI string"; "For
	// displayname, the value MUST be a string".
	t.Run("profile field values", func(t *testing.T) {
		for _, c := range []struct {
			key  string
			body map[string]any
		}{
			{"displayname", map[string]any{"avatar_url": "mxc://example.test/x"}},
			{"avatar_url", map[string]any{"avatar_url": "https://example.test/x.png"}},
			{"displayname", map[string]any{"displayname": 5}},
		} {
			err := raw(t, alice, http.MethodPut, c.body, nil, "profile", alice.UserID, c.key)
			if err == nil {
				t.Errorf("PUT %s %v accepted", c.key, c.body)
				continue
			}
			var he mautrix.HTTPError
			if !asHTTPError(err, &he) || he.Response.StatusCode != http.StatusBadRequest {
				t.Errorf("PUT %s %v: %v, want 400", c.key, c.body, err)
			}
		}
	})

	// room_send.yaml: the transaction ID makes a send idempotent for one
	// access token; the same ID from another device is another event.
	t.Run("transaction IDs per device", func(t *testing.T) {
		url := alice.BuildClientURL("v3", "rooms", room, "send", "m.room.message", "txn-1")
		var first, again struct {
			EventID id.EventID `json:"event_id"`
		}
		body := map[string]any{"msgtype": "m.text", "body": "once"}
		_, err := alice.MakeRequest(ctx, http.MethodPut, url, body, &first)
		must(t, "first send", err)
		_, err = alice.MakeRequest(ctx, http.MethodPut, url, body, &again)
		must(t, "retried send", err)
		if first.EventID == "" || first.EventID != again.EventID {
			t.Fatalf("a retried transaction gave %s then %s", first.EventID, again.EventID)
		}
		second := loginAgain(t, hs, alice)
		var other struct {
			EventID id.EventID `json:"event_id"`
		}
		_, err = second.MakeRequest(ctx, http.MethodPut, second.BuildClientURL("v3", "rooms", room, "send", "m.room.message", "txn-1"), body, &other)
		must(t, "send from another device", err)
		if other.EventID == first.EventID {
			t.Fatal("another device's transaction with the same ID returned the first device's event")
		}
	})

	// oauth_server_metadata.yaml: a server without the OAuth 2.0 API
	// answers 404 M_UNRECOGNIZED; so do the endpoints Myelin does not
	// offer (docs/conformance.md lists them).
	t.Run("endpoints not offered", func(t *testing.T) {
		for _, p := range [][]any{{"v1", "auth_metadata"}, {"v3", "account", "3pid"}, {"v3", "login", "sso", "redirect"}} {
			_, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildClientURL(p...), nil, nil)
			wantMatrixError(t, fmt.Sprint(p), err, http.StatusNotFound, "M_UNRECOGNIZED")
		}
		// A third-party invite (third_party_membership.yaml) is refused
		// with a 400.
		err := raw(t, alice, http.MethodPost, map[string]any{"id_server": "id.example.test", "id_access_token": "x", "medium": "email", "address": "a@example.test"}, nil, "rooms", room, "invite")
		var he mautrix.HTTPError
		if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusBadRequest || he.RespError == nil {
			t.Fatalf("third-party invite: %v, want a 400 Matrix error", err)
		}
	})

	// rooms.yaml GET /members "at": the state at a /sync prev_batch token.
	// The prev_batch of a timeline that starts with the room's creation
	// is before the create event, where the room had no state: the chunk
	// is empty (see docs/conformance.md). At next_batch both members show.
	t.Run("members at a prev_batch before the creation", func(t *testing.T) {
		fresh := createRoom(t, alice, map[string]any{})
		resp, err := alice.SyncRequest(ctx, 0, "", `{"room":{"timeline":{"limit":50}}}`, false, "")
		must(t, "sync", err)
		jr, ok := resp.Rooms.Join[fresh]
		if !ok || len(jr.Timeline.Events) == 0 || jr.Timeline.Events[0].Type != event.StateCreate {
			t.Fatalf("the first timeline does not start at the creation: %+v", jr)
		}
		members := func(at string) []any {
			var out map[string]any
			_, err := alice.MakeRequest(ctx, http.MethodGet, alice.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", fresh, "members"}, map[string]string{"at": at}), nil, &out)
			must(t, "members at "+at, err)
			chunk, ok := out["chunk"].([]any)
			if !ok {
				t.Fatalf("members at %s: no chunk: %v", at, out)
			}
			return chunk
		}
		if n := len(members(jr.Timeline.PrevBatch)); n != 0 {
			t.Fatalf("members before the creation: %d, want none", n)
		}
		if n := len(members(resp.NextBatch)); n != 1 {
			t.Fatalf("members at next_batch: %d, want alice", n)
		}
	})
}

// loginAgain logs cli's user in on a new device.
func loginAgain(t *testing.T, hs string, cli *mautrix.Client) *mautrix.Client {
	t.Helper()
	other, err := mautrix.NewClient(hs, "", "")
	must(t, "client", err)
	resp, err := other.Login(context.Background(), &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: cli.UserID.Localpart()},
		Password: "pw-" + cli.UserID.Localpart(), StoreCredentials: true,
	})
	must(t, "login", err)
	_ = resp
	return other
}
