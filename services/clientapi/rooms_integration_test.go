package clientapi_test

// Room creation, membership, member lists, everyday state, aliases and the
// room directory, through real HTTP with mautrix-go against the real
// room-server, key-server, PostgreSQL and NATS (startStack).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// raw sends a request with a JSON body and decodes the answer into out.
func raw(t *testing.T, cli *mautrix.Client, method string, body, out any, path ...any) error {
	t.Helper()
	_, err := cli.MakeRequest(context.Background(), method, cli.BuildClientURL(append([]any{"v3"}, path...)...), body, out)
	return err
}

func wantErr(t *testing.T, what string, err error, want mautrix.RespError) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %s", what, err, want.ErrCode)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func createRoom(t *testing.T, cli *mautrix.Client, body map[string]any) id.RoomID {
	t.Helper()
	var resp struct {
		RoomID id.RoomID `json:"room_id"`
	}
	must(t, "createRoom", raw(t, cli, http.MethodPost, body, &resp, "createRoom"))
	return resp.RoomID
}

// roomEvents returns the room's events, oldest first, as alice sees them.
func roomEvents(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	msgs, err := cli.Messages(context.Background(), roomID, "", "", mautrix.DirectionForward, nil, 100)
	must(t, "messages", err)
	return msgs.Chunk
}

func stateContent(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ, key string) map[string]any {
	t.Helper()
	var c map[string]any
	must(t, "get state "+typ, cli.StateEvent(context.Background(), roomID, event.NewEventType(typ), key, &c))
	return c
}

func membershipOf(t *testing.T, cli *mautrix.Client, roomID id.RoomID, user id.UserID) event.Membership {
	t.Helper()
	var c event.MemberEventContent
	err := cli.StateEvent(context.Background(), roomID, event.StateMember, user.String(), &c)
	if errors.Is(err, mautrix.MNotFound) {
		return ""
	}
	must(t, "member state", err)
	return c.Membership
}

func TestRoomsMembershipAndDirectory(t *testing.T) {
	hs := startStack(t)
	ctx := context.Background()
	alice := newUser(t, hs, "alice")
	bob := newUser(t, hs, "bob")
	carol := newUser(t, hs, "carol")
	dave := newUser(t, hs, "dave")

	t.Run("createRoom in every stable room version", func(t *testing.T) {
		for v := 1; v <= 12; v++ {
			version := fmt.Sprint(v)
			roomID := createRoom(t, alice, map[string]any{"room_version": version, "preset": "public_chat", "name": "v" + version})
			create := stateContent(t, alice, roomID, "m.room.create", "")
			if create["room_version"] != version {
				t.Fatalf("room version %s: create content %v", version, create)
			}
			if name := stateContent(t, alice, roomID, "m.room.name", ""); name["name"] != "v"+version {
				t.Fatalf("room version %s: name %v", version, name)
			}
		}
		for _, bad := range []string{"13", "banana", "org.example.unstable"} {
			err := raw(t, alice, http.MethodPost, map[string]any{"room_version": bad}, nil, "createRoom")
			wantErr(t, "room version "+bad, err, mautrix.MUnsupportedRoomVersion)
		}
		err := raw(t, alice, http.MethodPost, map[string]any{"invite_3pid": []any{map[string]any{"medium": "email", "address": "a@example.test", "id_server": "id.example.test", "id_access_token": "x"}}}, nil, "createRoom")
		wantErr(t, "invite_3pid", err, mautrix.MInvalidParam)
		err = raw(t, alice, http.MethodPost, map[string]any{"preset": "party"}, nil, "createRoom")
		wantErr(t, "unknown preset", err, mautrix.MInvalidParam)
		// The override leaves the creator too weak to set the name it asks for.
		err = raw(t, alice, http.MethodPost, map[string]any{"room_version": "11", "name": "x",
			"power_level_content_override": map[string]any{"users": map[string]any{alice.UserID.String(): 10}}}, nil, "createRoom")
		wantErr(t, "initial state the creator may not send", err, mautrix.RespError{ErrCode: "M_INVALID_ROOM_STATE"})
		err = raw(t, alice, http.MethodPost, map[string]any{"initial_state": []any{map[string]any{"type": "m.room.name", "content": "x"}}}, nil, "createRoom")
		wantErr(t, "initial_state content not an object", err, mautrix.MBadJSON)
	})

	t.Run("createRoom with every option, events in spec order", func(t *testing.T) {
		roomID := createRoom(t, alice, map[string]any{
			"room_version":     "11",
			"preset":           "trusted_private_chat",
			"visibility":       "public",
			"room_alias_name":  "everything",
			"name":             "Everything",
			"topic":            "All options",
			"invite":           []string{bob.UserID.String()},
			"is_direct":        true,
			"creation_content": map[string]any{"m.federate": false},
			"initial_state": []map[string]any{
				{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}},
				{"type": "org.example.custom", "state_key": "k", "content": map[string]any{"v": 1}},
			},
			"power_level_content_override": map[string]any{"events_default": 10, "users": map[string]any{alice.UserID.String(): 100, carol.UserID.String(): 20}},
		})
		// /messages reads the client-API's copy, which follows the room-server.
		var got []string
		testkit.Eventually(t, 10*time.Second, func() error {
			got = got[:0]
			for _, e := range roomEvents(t, alice, roomID) {
				key := ""
				if e.StateKey != nil {
					key = *e.StateKey
				}
				got = append(got, e.Type.Type+"|"+key)
			}
			if len(got) < 11 {
				return fmt.Errorf("%d events so far", len(got))
			}
			return nil
		})
		want := []string{
			"m.room.create|", "m.room.member|" + alice.UserID.String(), "m.room.power_levels|", "m.room.canonical_alias|",
			"m.room.join_rules|", "m.room.guest_access|", "m.room.history_visibility|", "org.example.custom|k",
			"m.room.name|", "m.room.topic|", "m.room.member|" + bob.UserID.String(),
		}
		if !slices.Equal(got, want) {
			t.Fatalf("events\n got %v\nwant %v", got, want)
		}
		create := stateContent(t, alice, roomID, "m.room.create", "")
		if create["m.federate"] != false || create["room_version"] != "11" {
			t.Fatalf("create content %v", create)
		}
		pl := stateContent(t, alice, roomID, "m.room.power_levels", "")
		users := pl["users"].(map[string]any)
		// The override replaces "users" as a whole (it is a top-level key).
		if pl["events_default"] != 10.0 || users[carol.UserID.String()] != 20.0 || users[alice.UserID.String()] != 100.0 {
			t.Fatalf("power levels %v", pl)
		}
		if jr := stateContent(t, alice, roomID, "m.room.join_rules", ""); jr["join_rule"] != "invite" {
			t.Fatalf("join rules %v", jr)
		}
		if hv := stateContent(t, alice, roomID, "m.room.history_visibility", ""); hv["history_visibility"] != "world_readable" {
			t.Fatalf("initial_state must override the preset: %v", hv)
		}
		invite, err := alice.FullStateEvent(ctx, roomID, event.StateMember, bob.UserID.String())
		must(t, "invite event", err)
		if invite.Content.Raw["is_direct"] != true || invite.Content.Raw["membership"] != "invite" {
			t.Fatalf("invite content %v", invite.Content.Raw)
		}
		if ca := stateContent(t, alice, roomID, "m.room.canonical_alias", ""); ca["alias"] != "#everything:"+serverName {
			t.Fatalf("canonical alias %v", ca)
		}
		var vis struct{ Visibility string }
		must(t, "visibility", raw(t, dave, http.MethodGet, nil, &vis, "directory", "list", "room", roomID))
		if vis.Visibility != "public" {
			t.Fatalf("visibility %q", vis.Visibility)
		}

		// trusted_private_chat: in room version 11 the invitees get the creator's power.
		roomID = createRoom(t, alice, map[string]any{"preset": "trusted_private_chat", "room_version": "11", "invite": []string{bob.UserID.String()}})
		pl = stateContent(t, alice, roomID, "m.room.power_levels", "")
		if pl["users"].(map[string]any)[bob.UserID.String()] != 100.0 {
			t.Fatalf("trusted_private_chat power levels %v", pl)
		}
		// In version 12 they become additional creators instead.
		roomID = createRoom(t, alice, map[string]any{"preset": "trusted_private_chat", "room_version": "12", "invite": []string{bob.UserID.String()}})
		create = stateContent(t, alice, roomID, "m.room.create", "")
		if ac, _ := create["additional_creators"].([]any); len(ac) != 1 || ac[0] != bob.UserID.String() {
			t.Fatalf("v12 trusted_private_chat create %v", create)
		}
	})

	// A private (invite-only) room: alice (100), bob (0, invited at creation).
	private := createRoom(t, alice, map[string]any{"preset": "private_chat", "room_version": "11", "invite": []string{bob.UserID.String()}, "name": "Private"})
	_, err := bob.JoinRoomByID(ctx, private)
	must(t, "bob joins", err)
	bs := &syncer{t: t, cli: bob}
	bs.until("bob's join", func(r *mautrix.RespSync) bool {
		_, ok := r.Rooms.Join[private]
		return ok
	})
	beforeCarol := bs.since

	t.Run("membership in an invite-only room", func(t *testing.T) {
		_, err := carol.JoinRoomByID(ctx, private)
		wantErr(t, "uninvited join", err, mautrix.MForbidden)
		_, err = bob.InviteUser(ctx, private, &mautrix.ReqInviteUser{UserID: carol.UserID})
		must(t, "bob invites (invite level 0 in private_chat)", err)
		_, err = carol.JoinRoom(ctx, private.String(), &mautrix.ReqJoinRoom{Via: []string{serverName}})
		must(t, "carol joins with via", err)

		_, err = carol.KickUser(ctx, private, &mautrix.ReqKickUser{UserID: bob.UserID})
		wantErr(t, "kick without power", err, mautrix.MForbidden)
		_, err = carol.BanUser(ctx, private, &mautrix.ReqBanUser{UserID: bob.UserID})
		wantErr(t, "ban without power", err, mautrix.MForbidden)
		_, err = carol.SendStateEvent(ctx, private, event.StateRoomName, "", &event.RoomNameEventContent{Name: "mine"})
		wantErr(t, "state change below the needed power level", err, mautrix.MForbidden)

		_, err = alice.KickUser(ctx, private, &mautrix.ReqKickUser{UserID: carol.UserID, Reason: "bye"})
		must(t, "alice kicks carol", err)
		if m := membershipOf(t, alice, private, carol.UserID); m != event.MembershipLeave {
			t.Fatalf("carol after kick: %q", m)
		}
		_, err = carol.JoinRoomByID(ctx, private)
		wantErr(t, "join after kick", err, mautrix.MForbidden)
		_, err = alice.KickUser(ctx, private, &mautrix.ReqKickUser{UserID: carol.UserID})
		wantErr(t, "kick of a user who already left", err, mautrix.MForbidden)
		_, err = alice.KickUser(ctx, private, &mautrix.ReqKickUser{UserID: "@never:" + serverName})
		wantErr(t, "kick of a user who was never in the room", err, mautrix.MForbidden)

		_, err = alice.UnbanUser(ctx, private, &mautrix.ReqUnbanUser{UserID: carol.UserID})
		wantErr(t, "unban of a user who is not banned", err, mautrix.MForbidden)
		_, err = alice.BanUser(ctx, private, &mautrix.ReqBanUser{UserID: carol.UserID, Reason: "spam"})
		must(t, "alice bans carol", err)
		_, err = alice.InviteUser(ctx, private, &mautrix.ReqInviteUser{UserID: carol.UserID})
		wantErr(t, "invite a banned user", err, mautrix.MForbidden)
		_, err = bob.UnbanUser(ctx, private, &mautrix.ReqUnbanUser{UserID: carol.UserID})
		wantErr(t, "unban without power", err, mautrix.MForbidden)
		_, err = alice.UnbanUser(ctx, private, &mautrix.ReqUnbanUser{UserID: carol.UserID})
		must(t, "alice unbans carol", err)
		if m := membershipOf(t, alice, private, carol.UserID); m != event.MembershipLeave {
			t.Fatalf("carol after unban: %q", m)
		}
		err = raw(t, alice, http.MethodPost, map[string]any{}, nil, "rooms", private, "kick")
		wantErr(t, "kick without user_id", err, mautrix.MBadJSON)
	})

	t.Run("ban then join refused in a public room", func(t *testing.T) {
		public := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_alias_name": "square"})
		_, err := alice.BanUser(ctx, public, &mautrix.ReqBanUser{UserID: dave.UserID})
		must(t, "ban", err)
		_, err = dave.JoinRoom(ctx, "#square:"+serverName, nil)
		wantErr(t, "banned join", err, mautrix.MForbidden)
		_, err = alice.UnbanUser(ctx, public, &mautrix.ReqUnbanUser{UserID: dave.UserID})
		must(t, "unban", err)
		u := dave.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "join", "#square:" + serverName}, map[string]string{"server_name": serverName, "via": serverName})
		_, err = dave.MakeRequest(ctx, http.MethodPost, u, map[string]any{}, nil)
		must(t, "join by alias with server_name", err)
		// public_chat needs power 50 to invite.
		_, err = dave.InviteUser(ctx, public, &mautrix.ReqInviteUser{UserID: carol.UserID})
		wantErr(t, "invite without power", err, mautrix.MForbidden)
	})

	t.Run("members, joined_members and at", func(t *testing.T) {
		members, err := bob.Members(ctx, private)
		must(t, "members", err)
		byUser := map[string]event.Membership{}
		for _, e := range members.Chunk {
			byUser[*e.StateKey] = e.Content.AsMember().Membership
			if e.RoomID != private {
				t.Fatalf("member event without room_id: %+v", e)
			}
		}
		if byUser[alice.UserID.String()] != event.MembershipJoin || byUser[bob.UserID.String()] != event.MembershipJoin || byUser[carol.UserID.String()] != event.MembershipLeave {
			t.Fatalf("members %v", byUser)
		}
		joinedOnly, err := bob.Members(ctx, private, mautrix.ReqMembers{Membership: event.MembershipJoin})
		must(t, "members membership=join", err)
		notLeave, err := bob.Members(ctx, private, mautrix.ReqMembers{NotMembership: event.MembershipLeave})
		must(t, "members not_membership=leave", err)
		if len(joinedOnly.Chunk) != 2 || len(notLeave.Chunk) != 2 {
			t.Fatalf("filtered members: %d joined, %d not left", len(joinedOnly.Chunk), len(notLeave.Chunk))
		}
		// At a token from before carol was ever in the room.
		var at mautrix.RespMembers
		testkit.Eventually(t, 10*time.Second, func() error {
			resp, err := bob.Members(ctx, private, mautrix.ReqMembers{At: beforeCarol})
			if err != nil {
				return err
			}
			at = *resp
			return nil
		})
		for _, e := range at.Chunk {
			if *e.StateKey == carol.UserID.String() {
				t.Fatalf("members at %s include carol: %+v", beforeCarol, e)
			}
		}
		if len(at.Chunk) != 2 {
			t.Fatalf("members at %s: %d", beforeCarol, len(at.Chunk))
		}
		_, err = bob.Members(ctx, private, mautrix.ReqMembers{Membership: "dancing"})
		wantErr(t, "bad membership filter", err, mautrix.MInvalidParam)

		joined, err := alice.JoinedMembers(ctx, private)
		must(t, "joined_members", err)
		if len(joined.Joined) != 2 {
			t.Fatalf("joined_members %v", joined.Joined)
		}
		if _, ok := joined.Joined[bob.UserID]; !ok {
			t.Fatalf("joined_members lacks bob: %v", joined.Joined)
		}
		// Every entry carries both keys, null when unset (no one set an
		// avatar): clients such as matrix-nio read them unconditionally.
		var rawJoined struct {
			Joined map[string]map[string]any `json:"joined"`
		}
		must(t, "raw joined_members", raw(t, alice, http.MethodGet, nil, &rawJoined, "rooms", private, "joined_members"))
		for u, m := range rawJoined.Joined {
			av, hasAvatar := m["avatar_url"]
			if _, ok := m["display_name"]; !ok || !hasAvatar || av != nil {
				t.Fatalf("joined_members entry of %s: %v, want display_name and a null avatar_url", u, m)
			}
		}
		_, err = dave.JoinedMembers(ctx, private)
		wantErr(t, "joined_members of a stranger", err, mautrix.MForbidden)
		_, err = carol.JoinedMembers(ctx, private)
		wantErr(t, "joined_members of a former member", err, mautrix.MForbidden)
		_, err = dave.Members(ctx, private)
		wantErr(t, "members of a stranger", err, mautrix.MForbidden)
	})

	t.Run("forget", func(t *testing.T) {
		_, err := bob.ForgetRoom(ctx, private)
		var httpErr mautrix.HTTPError
		if !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_UNKNOWN" || !httpErr.IsStatus(http.StatusBadRequest) {
			t.Fatalf("forget while joined: got %v, want 400 M_UNKNOWN", err)
		}
		_, err = bob.LeaveRoom(ctx, private)
		must(t, "leave", err)
		filter := `{"room":{"include_leave":true}}`
		testkit.Eventually(t, 10*time.Second, func() error {
			s, err := bob.SyncRequest(ctx, 0, "", filter, false, "")
			if err != nil {
				return err
			}
			if _, ok := s.Rooms.Leave[private]; !ok {
				return errors.New("left room not yet in the leave section")
			}
			return nil
		})
		// A former member still reads history up to the leave.
		_, err = bob.Messages(ctx, private, "", "", mautrix.DirectionBackward, nil, 5)
		must(t, "history before forget", err)
		_, err = bob.ForgetRoom(ctx, private)
		must(t, "forget", err)
		s, err := bob.SyncRequest(ctx, 0, "", filter, false, "")
		must(t, "sync", err)
		if _, ok := s.Rooms.Leave[private]; ok {
			t.Fatalf("forgotten room still in the leave section")
		}
		_, err = bob.Messages(ctx, private, "", "", mautrix.DirectionBackward, nil, 5)
		wantErr(t, "history of a forgotten room", err, mautrix.MForbidden)
		joined, err := bob.JoinedRooms(ctx)
		must(t, "joined_rooms", err)
		if slices.Contains(joined.JoinedRooms, private) {
			t.Fatalf("joined_rooms still lists the forgotten room")
		}
		// Invited back, the room returns to bob's sync.
		_, err = alice.InviteUser(ctx, private, &mautrix.ReqInviteUser{UserID: bob.UserID})
		must(t, "re-invite", err)
		testkit.Eventually(t, 10*time.Second, func() error {
			s, err := bob.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				return err
			}
			if _, ok := s.Rooms.Invite[private]; !ok {
				return errors.New("invite not in sync yet")
			}
			return nil
		})
	})

	t.Run("knock", func(t *testing.T) {
		knockRoom := createRoom(t, alice, map[string]any{
			"preset": "private_chat", "room_alias_name": "door",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}},
		})
		_, err := dave.JoinRoomByID(ctx, knockRoom)
		wantErr(t, "join a knock room uninvited", err, mautrix.MForbidden)
		_, err = dave.KnockRoom(ctx, "#door:"+serverName, &mautrix.ReqKnockRoom{Reason: "let me in", Via: []string{serverName}})
		must(t, "knock", err)
		// Dave's sync shows the knock with the room's stripped state.
		testkit.Eventually(t, 10*time.Second, func() error {
			s, err := dave.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				return err
			}
			kr, ok := s.Rooms.Knock[knockRoom]
			if !ok {
				return errors.New("knock not in sync yet")
			}
			var sawJoinRules, sawOwn bool
			for _, e := range kr.State.Events {
				sawJoinRules = sawJoinRules || e.Type == event.StateJoinRules
				sawOwn = sawOwn || (e.Type == event.StateMember && *e.StateKey == dave.UserID.String())
			}
			if !sawJoinRules || !sawOwn {
				return fmt.Errorf("knock_state %v", kr.State.Events)
			}
			if _, ok := s.Rooms.Invite[knockRoom]; ok {
				return errors.New("knock shown as an invite")
			}
			return nil
		})
		knocking, err := alice.Members(ctx, knockRoom, mautrix.ReqMembers{Membership: event.MembershipKnock})
		must(t, "members knock", err)
		if len(knocking.Chunk) != 1 || *knocking.Chunk[0].StateKey != dave.UserID.String() {
			t.Fatalf("knocking members %v", knocking.Chunk)
		}
		_, err = alice.InviteUser(ctx, knockRoom, &mautrix.ReqInviteUser{UserID: dave.UserID})
		must(t, "invite the knocker", err)
		_, err = dave.JoinRoomByID(ctx, knockRoom)
		must(t, "join after invite", err)

		_, err = carol.KnockRoom(ctx, private.String(), nil)
		wantErr(t, "knock on an invite-only room", err, mautrix.MForbidden)
		old := createRoom(t, alice, map[string]any{"room_version": "6", "initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}})
		_, err = carol.KnockRoom(ctx, old.String(), nil)
		wantErr(t, "knock in room version 6", err, mautrix.MForbidden)
	})

	t.Run("restricted and knock_restricted", func(t *testing.T) {
		space := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Space"})
		allow := []map[string]any{{"type": "m.room_membership", "room_id": space.String()}}
		restricted := createRoom(t, alice, map[string]any{
			"preset": "private_chat", "room_version": "10",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "restricted", "allow": allow}}},
		})
		_, err := carol.JoinRoomByID(ctx, restricted)
		wantErr(t, "restricted join without membership of the allowed room", err, mautrix.MForbidden)
		// Naming an authoriser oneself does not help: the server decides.
		_, err = carol.SendStateEvent(ctx, restricted, event.StateMember, carol.UserID.String(),
			map[string]any{"membership": "join", "join_authorised_via_users_server": alice.UserID.String()})
		wantErr(t, "forged join_authorised_via_users_server", err, mautrix.MForbidden)
		_, err = carol.JoinRoomByID(ctx, space)
		must(t, "join the allowed room", err)
		_, err = carol.JoinRoomByID(ctx, restricted)
		must(t, "restricted join", err)
		join, err := alice.FullStateEvent(ctx, restricted, event.StateMember, carol.UserID.String())
		must(t, "carol's join", err)
		if join.Content.Raw["join_authorised_via_users_server"] != alice.UserID.String() {
			t.Fatalf("restricted join content %v", join.Content.Raw)
		}
		// Once joined, carol may update her member event even after leaving
		// the allowed room, and it carries no authoriser.
		_, err = carol.LeaveRoom(ctx, space)
		must(t, "leave the allowed room", err)
		_, err = carol.SendStateEvent(ctx, restricted, event.StateMember, carol.UserID.String(),
			map[string]any{"membership": "join", "displayname": "Carol"})
		must(t, "profile change in a restricted room", err)
		join, err = alice.FullStateEvent(ctx, restricted, event.StateMember, carol.UserID.String())
		must(t, "carol's profile", err)
		if join.Content.Raw["displayname"] != "Carol" || join.Content.Raw["join_authorised_via_users_server"] != nil {
			t.Fatalf("profile change content %v", join.Content.Raw)
		}
		_, err = carol.JoinRoomByID(ctx, space)
		must(t, "rejoin the allowed room", err)

		kr := createRoom(t, alice, map[string]any{
			"preset": "private_chat", "room_version": "11",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock_restricted", "allow": allow}}},
		})
		_, err = carol.JoinRoomByID(ctx, kr)
		must(t, "knock_restricted join through the allowed room", err)
		_, err = bob.JoinRoomByID(ctx, kr)
		wantErr(t, "knock_restricted join without membership", err, mautrix.MForbidden)
		_, err = bob.KnockRoom(ctx, kr.String(), nil)
		must(t, "knock on a knock_restricted room", err)
		// Restricted join rules need room version 8.
		v7 := createRoom(t, alice, map[string]any{
			"preset": "private_chat", "room_version": "7",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "restricted", "allow": allow}}},
		})
		_, err = carol.JoinRoomByID(ctx, v7)
		wantErr(t, "restricted join in room version 7", err, mautrix.MForbidden)
	})

	t.Run("everyday state events", func(t *testing.T) {
		room := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_version": "11"})
		_, err := carol.JoinRoomByID(ctx, room)
		must(t, "carol joins", err)
		cases := []struct {
			typ     string
			content map[string]any
		}{
			{"m.room.name", map[string]any{"name": "Renamed"}},
			{"m.room.topic", map[string]any{"topic": "New topic"}},
			{"m.room.avatar", map[string]any{"url": "mxc://example.test/avatar"}},
			{"m.room.join_rules", map[string]any{"join_rule": "invite"}},
			{"m.room.history_visibility", map[string]any{"history_visibility": "joined"}},
			{"m.room.guest_access", map[string]any{"guest_access": "can_join"}},
			{"m.room.encryption", map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
			{"m.room.server_acl", map[string]any{"allow": []any{"*"}, "deny": []any{"evil.example"}, "allow_ip_literals": false}},
			{"m.room.pinned_events", map[string]any{"pinned": []any{}}},
			{"m.room.power_levels", map[string]any{"users": map[string]any{alice.UserID.String(): 100.0}, "state_default": 50.0, "events": map[string]any{"m.room.tombstone": 100.0}}},
			{"m.room.tombstone", map[string]any{"body": "moved", "replacement_room": "!elsewhere:example.test"}},
		}
		for _, c := range cases {
			_, err := alice.SendStateEvent(ctx, room, event.NewEventType(c.typ), "", c.content)
			must(t, "set "+c.typ, err)
			got := stateContent(t, carol, room, c.typ, "")
			if fmt.Sprint(got) != fmt.Sprint(c.content) {
				t.Fatalf("%s: got %v, want %v", c.typ, got, c.content)
			}
			_, err = carol.SendStateEvent(ctx, room, event.NewEventType(c.typ), "", c.content)
			wantErr(t, c.typ+" by a user without power", err, mautrix.MForbidden)
		}
	})

	t.Run("canonical alias validation", func(t *testing.T) {
		room := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_alias_name": "canon"})
		other := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_alias_name": "elsewhere"})
		set := func(content map[string]any) error {
			_, err := alice.SendStateEvent(ctx, room, event.StateCanonicalAlias, "", content)
			return err
		}
		wantErr(t, "malformed alias", set(map[string]any{"alias": "not-an-alias"}), mautrix.MInvalidParam)
		wantErr(t, "malformed alt alias", set(map[string]any{"alt_aliases": []string{"#nocolon"}}), mautrix.MInvalidParam)
		badAlias := mautrix.RespError{ErrCode: "M_BAD_ALIAS"}
		wantErr(t, "unknown alias", set(map[string]any{"alias": "#nowhere:" + serverName}), badAlias)
		wantErr(t, "alias of another room", set(map[string]any{"alt_aliases": []string{"#elsewhere:" + serverName}}), badAlias)
		_, err := alice.CreateAlias(ctx, id.RoomAlias("#canon2:"+serverName), room)
		must(t, "second alias", err)
		must(t, "valid canonical alias", set(map[string]any{"alias": "#canon2:" + serverName, "alt_aliases": []string{"#canon:" + serverName}}))
		must(t, "clearing the alias", set(map[string]any{}))
		_ = other
	})

	t.Run("aliases and directory visibility", func(t *testing.T) {
		room := createRoom(t, alice, map[string]any{"preset": "public_chat", "room_alias_name": "hall"})
		_, err := carol.JoinRoomByID(ctx, room)
		must(t, "carol joins", err)
		carolAlias := id.RoomAlias("#carols-hall:" + serverName)
		_, err = carol.CreateAlias(ctx, carolAlias, room)
		must(t, "carol creates an alias", err)

		aliases, err := carol.GetAliases(ctx, room)
		must(t, "aliases", err)
		if !slices.Equal(aliases.Aliases, []id.RoomAlias{carolAlias, id.RoomAlias("#hall:" + serverName)}) {
			t.Fatalf("aliases %v", aliases.Aliases)
		}
		_, err = dave.GetAliases(ctx, room)
		wantErr(t, "aliases for a non-member", err, mautrix.MForbidden)

		_, err = carol.DeleteAlias(ctx, id.RoomAlias("#hall:"+serverName))
		wantErr(t, "delete someone else's alias", err, mautrix.MForbidden)
		_, err = dave.DeleteAlias(ctx, carolAlias)
		wantErr(t, "delete by a stranger", err, mautrix.MForbidden)
		_, err = alice.DeleteAlias(ctx, carolAlias)
		must(t, "delete with power over the canonical alias", err)
		_, err = carol.ResolveAlias(ctx, carolAlias)
		wantErr(t, "resolve a deleted alias", err, mautrix.MNotFound)
		_, err = alice.DeleteAlias(ctx, carolAlias)
		wantErr(t, "delete twice", err, mautrix.MNotFound)
		_, err = carol.CreateAlias(ctx, carolAlias, room)
		must(t, "carol re-creates her alias", err)
		_, err = carol.DeleteAlias(ctx, carolAlias)
		must(t, "the creator deletes her alias", err)

		// Deleting the canonical alias takes it out of m.room.canonical_alias.
		hall := "#hall:" + serverName
		_, err = alice.SendStateEvent(ctx, room, event.StateCanonicalAlias, "", map[string]any{"alias": hall, "alt_aliases": []string{hall}})
		must(t, "canonical alias with the alias as an alt alias too", err)
		_, err = alice.DeleteAlias(ctx, id.RoomAlias(hall))
		must(t, "delete the canonical alias", err)
		testkit.Eventually(t, 20*time.Second, func() error {
			ca := stateContent(t, alice, room, "m.room.canonical_alias", "")
			if alts, _ := ca["alt_aliases"].([]any); ca["alias"] != nil || len(alts) != 0 {
				return fmt.Errorf("canonical alias after deletion: %v", ca)
			}
			return nil
		})

		// World-readable rooms show their aliases to anyone.
		_, err = alice.SendStateEvent(ctx, room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "world_readable"})
		must(t, "world_readable", err)
		_, err = dave.GetAliases(ctx, room)
		must(t, "aliases of a world_readable room", err)

		var vis struct{ Visibility string }
		must(t, "get visibility", raw(t, dave, http.MethodGet, nil, &vis, "directory", "list", "room", room))
		if vis.Visibility != "private" {
			t.Fatalf("default visibility %q", vis.Visibility)
		}
		err = raw(t, carol, http.MethodPut, map[string]any{"visibility": "public"}, nil, "directory", "list", "room", room)
		wantErr(t, "publish without power", err, mautrix.MForbidden)
		must(t, "publish", raw(t, alice, http.MethodPut, map[string]any{"visibility": "public"}, nil, "directory", "list", "room", room))
		must(t, "get visibility", raw(t, dave, http.MethodGet, nil, &vis, "directory", "list", "room", room))
		if vis.Visibility != "public" {
			t.Fatalf("visibility after publishing %q", vis.Visibility)
		}
		err = raw(t, alice, http.MethodPut, map[string]any{"visibility": "secret"}, nil, "directory", "list", "room", room)
		wantErr(t, "bad visibility", err, mautrix.MInvalidParam)
		err = raw(t, alice, http.MethodGet, nil, nil, "directory", "list", "room", "!unknown:"+serverName)
		wantErr(t, "visibility of an unknown room", err, mautrix.MNotFound)
	})

	t.Run("publicRooms", func(t *testing.T) {
		var rooms []id.RoomID
		for i, name := range []string{"Lobby alpha", "Lobby beta", "Lobby gamma"} {
			roomID := createRoom(t, alice, map[string]any{"preset": "public_chat", "visibility": "public", "name": name, "topic": "lobby topic"})
			rooms = append(rooms, roomID)
			// Room i gets i extra members, so the order is gamma, beta, alpha.
			for _, u := range []*mautrix.Client{bob, dave}[:i] {
				_, err := u.JoinRoomByID(ctx, roomID)
				must(t, "join", err)
			}
		}
		private := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Lobby secret"})
		query := func(body map[string]any) mautrix.RespPublicRooms {
			var resp mautrix.RespPublicRooms
			must(t, "publicRooms", raw(t, carol, http.MethodPost, body, &resp, "publicRooms"))
			return resp
		}
		filter := map[string]any{"generic_search_term": "LOBBY"}
		testkit.Eventually(t, 10*time.Second, func() error {
			resp := query(map[string]any{"filter": filter})
			if len(resp.Chunk) != 3 || resp.Chunk[0].NumJoinedMembers != 3 {
				return fmt.Errorf("directory not caught up: %+v", resp.Chunk)
			}
			return nil
		})
		first := query(map[string]any{"filter": filter, "limit": 2})
		if len(first.Chunk) != 2 || first.NextBatch == "" || first.PrevBatch != "" {
			t.Fatalf("first page %+v", first)
		}
		if first.Chunk[0].RoomID != rooms[2] || first.Chunk[1].RoomID != rooms[1] {
			t.Fatalf("order %v %v", first.Chunk[0].RoomID, first.Chunk[1].RoomID)
		}
		c := first.Chunk[0]
		if c.Name != "Lobby gamma" || c.Topic != "lobby topic" || c.JoinRule != "public" || c.WorldReadable || c.GuestCanJoin {
			t.Fatalf("entry %+v", c)
		}
		second := query(map[string]any{"filter": filter, "limit": 2, "since": first.NextBatch})
		if len(second.Chunk) != 1 || second.Chunk[0].RoomID != rooms[0] || second.NextBatch != "" || second.PrevBatch == "" {
			t.Fatalf("second page %+v", second)
		}
		back := query(map[string]any{"filter": filter, "limit": 2, "since": second.PrevBatch})
		if len(back.Chunk) != 2 || back.Chunk[0].RoomID != rooms[2] {
			t.Fatalf("previous page %+v", back)
		}
		for _, e := range query(map[string]any{"filter": map[string]any{"generic_search_term": "secret"}}).Chunk {
			if e.RoomID == private {
				t.Fatalf("private room listed")
			}
		}
		if n := len(query(map[string]any{"filter": map[string]any{"generic_search_term": "Lobby", "room_types": []any{"m.space"}}}).Chunk); n != 0 {
			t.Fatalf("room_types m.space matched %d rooms", n)
		}
		// GET, without authentication.
		anon, err := mautrix.NewClient(hs, "", "")
		must(t, "client", err)
		get, err := anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Limit: 1})
		must(t, "GET publicRooms", err)
		if len(get.Chunk) != 1 || get.NextBatch == "" {
			t.Fatalf("GET publicRooms %+v", get)
		}
		_, err = anon.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: "other.example"})
		wantErr(t, "another server's directory", err, mautrix.MInvalidParam)
		err = raw(t, carol, http.MethodPost, map[string]any{"since": "garbage"}, nil, "publicRooms")
		wantErr(t, "bad since token", err, mautrix.MInvalidParam)
	})

	t.Run("upgrade", func(t *testing.T) {
		old := createRoom(t, alice, map[string]any{
			"room_version": "10", "preset": "public_chat", "visibility": "public", "room_alias_name": "upgr",
			"name": "Before", "topic": "Upgrade me",
			"initial_state": []map[string]any{{"type": "org.example.private", "content": map[string]any{"x": 1}}},
		})
		_, err := bob.JoinRoomByID(ctx, old)
		must(t, "bob joins", err)
		upgrade := func(cli *mautrix.Client, room id.RoomID, body map[string]any) (id.RoomID, error) {
			var resp struct {
				ReplacementRoom id.RoomID `json:"replacement_room"`
			}
			err := raw(t, cli, http.MethodPost, body, &resp, "rooms", room, "upgrade")
			return resp.ReplacementRoom, err
		}
		_, err = upgrade(bob, old, map[string]any{"new_version": "11"})
		wantErr(t, "upgrade without power", err, mautrix.MForbidden)
		_, err = upgrade(dave, old, map[string]any{"new_version": "11"})
		wantErr(t, "upgrade by a non-member", err, mautrix.MForbidden)
		_, err = upgrade(alice, old, map[string]any{"new_version": "99"})
		wantErr(t, "upgrade to an unknown version", err, mautrix.MUnsupportedRoomVersion)
		_, err = upgrade(alice, old, map[string]any{})
		wantErr(t, "upgrade without new_version", err, mautrix.MBadJSON)

		newRoom, err := upgrade(alice, old, map[string]any{"new_version": "12", "additional_creators": []string{bob.UserID.String()}})
		must(t, "upgrade to 12", err)
		create := stateContent(t, alice, newRoom, "m.room.create", "")
		pred, _ := create["predecessor"].(map[string]any)
		if pred["room_id"] != old.String() || create["room_version"] != "12" {
			t.Fatalf("replacement create %v", create)
		}
		if ac, _ := create["additional_creators"].([]any); len(ac) != 1 || ac[0] != bob.UserID.String() {
			t.Fatalf("additional creators %v", create)
		}
		if name := stateContent(t, alice, newRoom, "m.room.name", ""); name["name"] != "Before" {
			t.Fatalf("name not transferred: %v", name)
		}
		if jr := stateContent(t, alice, newRoom, "m.room.join_rules", ""); jr["join_rule"] != "public" {
			t.Fatalf("join rules not transferred: %v", jr)
		}
		pl := stateContent(t, alice, newRoom, "m.room.power_levels", "")
		if users, _ := pl["users"].(map[string]any); users[alice.UserID.String()] != nil || users[bob.UserID.String()] != nil {
			t.Fatalf("creators listed in v12 power levels: %v", pl)
		}
		var none map[string]any
		err = alice.StateEvent(ctx, newRoom, event.NewEventType("org.example.private"), "", &none)
		wantErr(t, "custom state is not transferred", err, mautrix.MNotFound)

		resolved, err := dave.ResolveAlias(ctx, id.RoomAlias("#upgr:"+serverName))
		must(t, "resolve moved alias", err)
		if resolved.RoomID != newRoom {
			t.Fatalf("alias points to %s, want %s", resolved.RoomID, newRoom)
		}
		if ca := stateContent(t, alice, newRoom, "m.room.canonical_alias", ""); ca["alias"] != "#upgr:"+serverName {
			t.Fatalf("canonical alias in the new room %v", ca)
		}
		if ca := stateContent(t, alice, old, "m.room.canonical_alias", ""); len(ca) != 0 {
			t.Fatalf("canonical alias left in the old room %v", ca)
		}
		tomb := stateContent(t, bob, old, "m.room.tombstone", "")
		if tomb["replacement_room"] != newRoom.String() {
			t.Fatalf("tombstone %v", tomb)
		}
		oldPL := stateContent(t, alice, old, "m.room.power_levels", "")
		if oldPL["events_default"] != 50.0 || oldPL["invite"] != 50.0 {
			t.Fatalf("old room power levels not restricted: %v", oldPL)
		}
		_, err = bob.SendMessageEvent(ctx, old, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "hi"})
		wantErr(t, "talking in the old room", err, mautrix.MForbidden)
		var vis struct{ Visibility string }
		must(t, "new visibility", raw(t, dave, http.MethodGet, nil, &vis, "directory", "list", "room", newRoom))
		if vis.Visibility != "public" {
			t.Fatalf("replacement room visibility %q", vis.Visibility)
		}
		must(t, "old visibility", raw(t, dave, http.MethodGet, nil, &vis, "directory", "list", "room", old))
		if vis.Visibility != "private" {
			t.Fatalf("old room visibility %q", vis.Visibility)
		}

		// Back to 11: the creator of the 12 room needs an explicit level there.
		older, err := upgrade(alice, newRoom, map[string]any{"new_version": "11"})
		must(t, "upgrade 12 -> 11", err)
		pl = stateContent(t, alice, older, "m.room.power_levels", "")
		if users, _ := pl["users"].(map[string]any); users[alice.UserID.String()] != 100.0 {
			t.Fatalf("v11 replacement power levels %v", pl)
		}
		_, err = alice.SendStateEvent(ctx, older, event.StateTopic, "", &event.TopicEventContent{Topic: "still in charge"})
		must(t, "state in the replacement room", err)
	})

	t.Run("hierarchy", func(t *testing.T) {
		space := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Space", "creation_content": map[string]any{"type": "m.space"}})
		sub := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Subspace", "creation_content": map[string]any{"type": "m.space"}})
		first := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "First"})
		second := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Second"})
		secret := createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Secret"})
		deep := createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Deep"})
		child := func(parent, c id.RoomID, content map[string]any) {
			_, err := alice.SendStateEvent(ctx, parent, event.StateSpaceChild, c.String(), content)
			must(t, "space child", err)
		}
		via := []string{serverName}
		// Order: "a" (second) before "b" (sub), then unordered children.
		child(space, second, map[string]any{"via": via, "order": "a", "suggested": true})
		child(space, sub, map[string]any{"via": via, "order": "b"})
		child(space, secret, map[string]any{"via": via})
		child(space, first, map[string]any{}) // no via: not a child
		child(sub, deep, map[string]any{"via": via})

		var resp *mautrix.RespHierarchy
		testkit.Eventually(t, 10*time.Second, func() error {
			var err error
			resp, err = dave.Hierarchy(ctx, space, nil)
			if err != nil {
				return err
			}
			if len(resp.Rooms) != 4 {
				return fmt.Errorf("%d rooms so far", len(resp.Rooms))
			}
			return nil
		})
		var got []id.RoomID
		for _, r := range resp.Rooms {
			got = append(got, r.RoomID)
		}
		if want := []id.RoomID{space, second, sub, deep}; !slices.Equal(got, want) {
			t.Fatalf("hierarchy order %v, want %v", got, want)
		}
		if resp.Rooms[0].RoomType != "m.space" || len(resp.Rooms[0].ChildrenState) != 3 || resp.Rooms[0].Name != "Space" {
			t.Fatalf("space entry %+v", resp.Rooms[0])
		}
		// Alice is in the secret room, so she sees it.
		mine, err := alice.Hierarchy(ctx, space, nil)
		must(t, "alice's hierarchy", err)
		if len(mine.Rooms) != 5 {
			t.Fatalf("alice sees %d rooms", len(mine.Rooms))
		}
		zero := 0
		shallow, err := dave.Hierarchy(ctx, space, &mautrix.ReqHierarchy{MaxDepth: &zero})
		must(t, "max_depth 0", err)
		if len(shallow.Rooms) != 1 {
			t.Fatalf("max_depth 0 gave %d rooms", len(shallow.Rooms))
		}
		suggested, err := dave.Hierarchy(ctx, space, &mautrix.ReqHierarchy{SuggestedOnly: true})
		must(t, "suggested_only", err)
		if len(suggested.Rooms) != 2 || suggested.Rooms[1].RoomID != second {
			t.Fatalf("suggested_only gave %d rooms", len(suggested.Rooms))
		}
		page, err := dave.Hierarchy(ctx, space, &mautrix.ReqHierarchy{Limit: 3})
		must(t, "page 1", err)
		if len(page.Rooms) != 3 || page.NextBatch == "" {
			t.Fatalf("page 1: %d rooms, next %q", len(page.Rooms), page.NextBatch)
		}
		page2, err := dave.Hierarchy(ctx, space, &mautrix.ReqHierarchy{Limit: 3, From: page.NextBatch})
		must(t, "page 2", err)
		if len(page2.Rooms) != 1 || page2.Rooms[0].RoomID != deep || page2.NextBatch != "" {
			t.Fatalf("page 2 %+v", page2)
		}
		_, err = dave.Hierarchy(ctx, space, &mautrix.ReqHierarchy{From: page.NextBatch, SuggestedOnly: true})
		wantErr(t, "changing suggested_only while paginating", err, mautrix.MInvalidParam)
		_, err = dave.Hierarchy(ctx, secret, nil)
		wantErr(t, "hierarchy of a room the user cannot see", err, mautrix.MForbidden)
	})
}
