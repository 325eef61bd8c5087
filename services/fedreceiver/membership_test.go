package fedreceiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
)

// TestLeaveAndKnock: remote users leave (send_leave v1 and v2) and knock
// (make_knock, send_knock, whose answer carries the room's stripped
// state), then retract the knock with a leave; events of the wrong
// membership are refused.
func TestLeaveAndKnock(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	for _, version := range []string{"v1", "v2"} {
		roomID := e.createRoom(alice, "11", "public_chat")
		user := e.remote.User("leaver" + version)
		rr := e.remote.Join(roomID, user, false)
		e.waitAccepted(rr.Last.EventID())
		// A join is not a leave.
		if status, body := e.remote.SendMembership("leave", version, roomID, rr.Last); status != http.StatusBadRequest {
			t.Fatalf("send_leave %s of a join: %d %s", version, status, body)
		}
		verImpl, leave := e.remote.MakeMembership("leave", roomID, user)
		if verImpl.Version() != "11" {
			t.Fatalf("make_leave room version %s", verImpl.Version())
		}
		// A leave is not a join.
		if status, body := e.remote.SendMembership("join", "v2", roomID, leave); status != http.StatusBadRequest {
			t.Fatalf("send_join of a leave: %d %s", status, body)
		}
		if status, body := e.remote.SendMembership("leave", version, roomID, leave); status != 200 || string(body) != "{}" {
			t.Fatalf("send_leave %s: %d %s", version, status, body)
		}
		if m := e.membership(roomID, user); m != spec.Leave {
			t.Fatalf("after send_leave %s: membership %q", version, m)
		}
	}

	// Knocking on a knock room (room version 7 and later).
	for _, version := range []string{"7", "11", "12"} {
		roomID := e.createRoom(alice, version, "private_chat", &mautrixStateEvent{typ: "m.room.join_rules", content: map[string]any{"join_rule": "knock"}})
		carol := e.remote.User("carol" + version)
		// make_join is refused: the room is not public.
		if status, body := e.remote.Get("/_matrix/federation/v1/make_join/" + esc(roomID) + "/" + esc(carol) + "?" + fedpeer.VerQuery()); status != http.StatusForbidden {
			t.Fatalf("make_join of a knock room: %d %s", status, body)
		}
		_, knock := e.remote.MakeMembership("knock", roomID, carol)
		status, body := e.remote.SendMembership("knock", "v1", roomID, knock)
		var resp struct {
			KnockRoomState []json.RawMessage `json:"knock_room_state"`
		}
		if status != 200 || json.Unmarshal(body, &resp) != nil {
			t.Fatalf("send_knock v%s: %d %s", version, status, body)
		}
		types := map[string]bool{}
		for _, raw := range resp.KnockRoomState {
			var ev struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(raw, &ev)
			types[ev.Type] = true
		}
		if !types[spec.MRoomCreate] || !types[spec.MRoomJoinRules] {
			t.Fatalf("knock_room_state %v", types)
		}
		if m := e.membership(roomID, carol); m != spec.Knock {
			t.Fatalf("carol's membership after knocking: %q", m)
		}
		// Retract it.
		_, leave := e.remote.MakeMembership("leave", roomID, carol)
		if status, body := e.remote.SendMembership("leave", "v2", roomID, leave); status != 200 {
			t.Fatalf("send_leave of a knock: %d %s", status, body)
		}
		if m := e.membership(roomID, carol); m != spec.Leave {
			t.Fatalf("carol's membership after the leave: %q", m)
		}
	}
	// An unknown room is 404.
	if status, body := e.remote.Get("/_matrix/federation/v1/make_join/" + esc("!nope:hs1.test") + "/" + esc(e.remote.User("x")) + "?ver=11"); status != 404 {
		t.Fatalf("make_join of an unknown room: %d %s", status, body)
	}
	// Another server's user is refused.
	roomID := e.createRoom(alice, "11", "public_chat")
	if status, body := e.remote.Get("/_matrix/federation/v1/make_join/" + esc(roomID) + "/" + esc("@x:evil.test") + "?ver=11"); status != http.StatusForbidden {
		t.Fatalf("make_join for another server's user: %d %s", status, body)
	}
	// A room version the joining server does not support.
	if status, body := e.remote.Get("/_matrix/federation/v1/make_join/" + esc(roomID) + "/" + esc(e.remote.User("y")) + "?ver=1"); status != 400 || errcode(body) != "M_INCOMPATIBLE_ROOM_VERSION" {
		t.Fatalf("make_join with ver=1 for a v11 room: %d %s", status, body)
	}
}

// TestRestrictedJoin: a remote user joined to an allowed room joins a
// restricted room; the template names a local authorising user and the
// resident server's SignJoin signs it. A user in no allowed room is
// refused.
func TestRestrictedJoin(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	space := e.createRoom(alice, "10", "public_chat")
	e.remote.Join(space, e.remote.User("bob"), false)
	restricted := e.createRoom(alice, "10", "private_chat", &mautrixStateEvent{typ: "m.room.join_rules",
		content: map[string]any{"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space}}}})
	testkit.Eventually(t, 10*time.Second, func() error {
		if m := e.membership(space, e.remote.User("bob")); m != spec.Join {
			return fmt.Errorf("bob %q", m)
		}
		return nil
	})
	rr := e.remote.Join(restricted, e.remote.User("bob"), false)
	var c struct {
		Content struct {
			Via string `json:"join_authorised_via_users_server"`
		} `json:"content"`
	}
	_ = json.Unmarshal(rr.Last.JSON(), &c)
	if c.Content.Via != alice.UserID.String() {
		t.Fatalf("join_authorised_via_users_server %q, want %s", c.Content.Via, alice.UserID)
	}
	e.waitAccepted(rr.Last.EventID())
	if status, body := e.remote.Get("/_matrix/federation/v1/make_join/" + esc(restricted) + "/" + esc(e.remote.User("stranger")) + "?" + fedpeer.VerQuery()); status != http.StatusForbidden {
		t.Fatalf("make_join of a user in no allowed room: %d %s", status, body)
	}
}

// TestInvites: a remote user invites a local user (invite v1 for a room
// version 1 room, v2 for 11 and 12); the answer carries this server's
// signature and the invite shows in the local user's /sync with its
// stripped state. Invites that are not, or not for a local user, are
// refused.
func TestInvites(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.localUser("alice")
	ron := e.remote.User("ron")
	for _, c := range []struct {
		version string
		api     string
	}{{"1", "v1"}, {"2", "v2"}, {"11", "v2"}, {"12", "v2"}} {
		t.Run("room v"+c.version+" invite "+c.api, func(t *testing.T) {
			rr := e.remote.NewRoom(c.version, ron, "invite")
			aliceID := alice.UserID.String()
			invite := rr.Build(ron, spec.MRoomMember, &aliceID, map[string]any{"membership": "invite"})
			var stripped []json.RawMessage
			for _, k := range []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName} {
				stripped = append(stripped, rr.State[gomatrixserverlib.StateKeyTuple{EventType: k}].JSON())
			}
			path := "/_matrix/federation/" + c.api + "/invite/" + esc(rr.RoomID) + "/" + esc(invite.EventID())
			var status int
			var body []byte
			if c.api == "v1" {
				withState := setUnsigned(t, invite.JSON(), map[string]any{"invite_room_state": stripped})
				status, body = e.remote.Put(path, json.RawMessage(withState))
				var wrapped []json.RawMessage
				if status == 200 {
					if err := json.Unmarshal(body, &wrapped); err != nil || len(wrapped) != 2 {
						t.Fatalf("invite v1 answer: %s", body)
					}
					body = wrapped[1]
				}
			} else {
				status, body = e.remote.Put(path, map[string]any{"room_version": c.version, "event": json.RawMessage(invite.JSON()),
					"invite_room_state": stripped})
			}
			var resp struct {
				Event json.RawMessage `json:"event"`
			}
			if status != 200 || json.Unmarshal(body, &resp) != nil {
				t.Fatalf("invite: %d %s", status, body)
			}
			signed, err := rr.Version.NewEventFromUntrustedJSON(resp.Event)
			if err != nil || signed.EventID() != invite.EventID() {
				t.Fatalf("signed invite: %v", err)
			}
			var sigs struct {
				Signatures map[string]map[string]string `json:"signatures"`
			}
			_ = json.Unmarshal(resp.Event, &sigs)
			if sigs.Signatures[hsName] == nil || sigs.Signatures[string(e.remote.Name)] == nil {
				t.Fatalf("the invite should carry both signatures: %v", sigs.Signatures)
			}
			testkit.Eventually(t, 20*time.Second, func() error {
				resp, err := alice.SyncRequest(context.Background(), 0, "", "", false, "")
				if err != nil {
					return err
				}
				inv, ok := resp.Rooms.Invite[id.RoomID(rr.RoomID)]
				if !ok {
					return fmt.Errorf("no invite in /sync")
				}
				for _, ev := range inv.State.Events {
					if ev.Type.Type == spec.MRoomName {
						return nil
					}
				}
				return fmt.Errorf("the invite's stripped state has no name: %+v", inv.State.Events)
			})
		})
	}
	rr := e.remote.NewRoom("11", ron, "invite")
	aliceID := alice.UserID.String()
	nobody := "@nobody:" + hsName
	other := "@someone:evil.test"
	create := rr.State[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate}].JSON()
	for _, c := range []struct {
		name   string
		ev     gomatrixserverlib.PDU
		status int
	}{
		{"a join, not an invite", rr.Build(ron, spec.MRoomMember, &ron, map[string]any{"membership": "join"}), 400},
		{"an unknown local user", rr.Build(ron, spec.MRoomMember, &nobody, map[string]any{"membership": "invite"}), 404},
		{"another server's user", rr.Build(ron, spec.MRoomMember, &other, map[string]any{"membership": "invite"}), 400},
		{"a message", rr.Build(ron, "m.room.message", nil, map[string]any{"body": "x"}), 400},
	} {
		status, body := e.remote.Put("/_matrix/federation/v2/invite/"+esc(rr.RoomID)+"/"+esc(c.ev.EventID()),
			map[string]any{"room_version": "11", "event": json.RawMessage(c.ev.JSON()), "invite_room_state": []json.RawMessage{create}})
		if status != c.status {
			t.Errorf("invite of %s: %d %s, want %d", c.name, status, body, c.status)
		}
	}
	// An invite sent by another server than its sender's.
	invite := rr.Build(ron, spec.MRoomMember, &aliceID, map[string]any{"membership": "invite"})
	status, body := e.evil.Put("/_matrix/federation/v2/invite/"+esc(rr.RoomID)+"/"+esc(invite.EventID()),
		map[string]any{"room_version": "11", "event": json.RawMessage(invite.JSON()), "invite_room_state": []json.RawMessage{create}})
	if status != http.StatusForbidden {
		t.Errorf("an invite relayed by evil.test: %d %s", status, body)
	}
	// Room version 12 invites must carry the create event.
	rr12 := e.remote.NewRoom("12", ron, "invite")
	invite = rr12.Build(ron, spec.MRoomMember, &aliceID, map[string]any{"membership": "invite"})
	status, body = e.remote.Put("/_matrix/federation/v2/invite/"+esc(rr12.RoomID)+"/"+esc(invite.EventID()),
		map[string]any{"room_version": "12", "event": json.RawMessage(invite.JSON()), "invite_room_state": []json.RawMessage{}})
	if status != 400 || errcode(body) != "M_MISSING_PARAM" {
		t.Errorf("a v12 invite without the create event: %d %s", status, body)
	}
}

// setUnsigned adds unsigned fields to an event's JSON.
func setUnsigned(t *testing.T, raw []byte, unsigned map[string]any) []byte {
	t.Helper()
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	obj["unsigned"] = unsigned
	return mustJSON(t, obj)
}
