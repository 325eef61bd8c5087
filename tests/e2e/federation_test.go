package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// TestFederationAllInOne runs two Myelin servers in `make run`'s shape,
// a.test and b.test, federating over HTTPS on loopback, and drives them
// with mautrix-go clients as users of either server would.
func TestFederationAllInOne(t *testing.T) {
	ca := testkit.NewCA(t)
	servers := federating(t, ca, allInOne, "a.test", "b.test")
	startFederating(t, servers)
	federationScenario(t, servers[0], servers[1])
}

// TestFederationSplit runs the same flows with both servers in the split
// shape (every service its own process, the edge holding the public
// federation listener).
func TestFederationSplit(t *testing.T) {
	ca := testkit.NewCA(t)
	servers := federating(t, ca, split, "a.test", "b.test")
	startFederating(t, servers)
	federationScenario(t, servers[0], servers[1])
}

// fedEventually polls fn until it returns nil, failing the test with its
// last error after a minute.
func fedEventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// roomSyncer follows one user's /sync and records, per room, the message
// bodies of the timeline in the order seen, the rooms they are invited to
// and the state events seen.
type roomSyncer struct {
	u      *user
	since  string
	bodies map[id.RoomID][]string
	invite map[id.RoomID]bool
	state  map[id.RoomID][]*event.Event
}

func newRoomSyncer(u *user) *roomSyncer {
	return &roomSyncer{u: u, bodies: map[id.RoomID][]string{}, invite: map[id.RoomID]bool{}, state: map[id.RoomID][]*event.Event{}}
}

// sync makes one /sync request (short timeout) and records what it gave.
func (s *roomSyncer) sync(ctx context.Context) error {
	resp, err := s.u.cli.SyncRequest(ctx, 500, s.since, timelineFilter, false, "")
	if err != nil {
		return err
	}
	s.since = resp.NextBatch
	for roomID, jr := range resp.Rooms.Join {
		s.state[roomID] = append(s.state[roomID], jr.State.Events...)
		for _, ev := range jr.Timeline.Events {
			if ev.StateKey != nil {
				s.state[roomID] = append(s.state[roomID], ev)
			}
			if ev.Type == event.EventMessage {
				s.bodies[roomID] = append(s.bodies[roomID], messageBody(ev))
			}
		}
		delete(s.invite, roomID)
	}
	for roomID := range resp.Rooms.Invite {
		s.invite[roomID] = true
	}
	for roomID := range resp.Rooms.Leave {
		delete(s.invite, roomID)
	}
	return nil
}

// waitBodies syncs until the room's messages with prefix are want.
func (s *roomSyncer) waitBodies(t *testing.T, room id.RoomID, prefix string, want []string) {
	t.Helper()
	fedEventually(t, fmt.Sprintf("%s sees %d messages %q in %s", s.u.cli.UserID, len(want), prefix, room), func() error {
		if err := s.sync(context.Background()); err != nil {
			return err
		}
		got := withPrefix(s.bodies[room], prefix)
		if len(got) < len(want) {
			return fmt.Errorf("saw %d of %d: %v", len(got), len(want), got)
		}
		return nil
	})
	assertExactly(t, string(s.u.cli.UserID), withPrefix(s.bodies[room], prefix), want)
}

func withPrefix(bodies []string, prefix string) []string {
	var out []string
	for _, b := range bodies {
		if strings.HasPrefix(b, prefix) {
			out = append(out, b)
		}
	}
	return out
}

// sendAll sends n messages "<prefix> i" and returns their bodies.
func sendAll(t *testing.T, u *user, room id.RoomID, prefix string, n int) []string {
	t.Helper()
	var bodies []string
	for i := range n {
		b := fmt.Sprintf("%s %d", prefix, i)
		if _, err := u.cli.SendText(context.Background(), room, b); err != nil {
			t.Fatalf("%s sends %q: %v", u.cli.UserID, b, err)
		}
		bodies = append(bodies, b)
	}
	return bodies
}

// membershipOf is user's membership of room as member's server sees it.
func membershipOf(ctx context.Context, cli *mautrix.Client, room id.RoomID, user id.UserID) (string, error) {
	var content event.MemberEventContent
	if err := cli.StateEvent(ctx, room, event.StateMember, string(user), &content); err != nil {
		return "", err
	}
	return string(content.Membership), nil
}

func waitMembership(t *testing.T, cli *mautrix.Client, room id.RoomID, user id.UserID, want string) {
	t.Helper()
	fedEventually(t, fmt.Sprintf("%s sees %s's membership %s in %s", cli.UserID, user, want, room), func() error {
		got, err := membershipOf(context.Background(), cli, room, user)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("membership %q", got)
		}
		return nil
	})
}

// federationScenario: users of a and b join each other's rooms (by alias,
// and by room ID with via), talk both ways, and see each other's messages
// in /sync once and in order.
func federationScenario(t *testing.T, a, b *fedServer) {
	ctx := context.Background()
	alice := register(t, a.url, "alice")
	bob := register(t, b.url, "bob")
	aliceSync, bobSync := newRoomSyncer(alice), newRoomSyncer(bob)

	// a's room, with history from before bob joins.
	lobby, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "lobby", Name: "Lobby"})
	if err != nil {
		t.Fatal(err)
	}
	before := sendAll(t, alice, lobby.RoomID, "before", 3)

	t.Run("remote alias", func(t *testing.T) {
		resp, err := bob.cli.ResolveAlias(ctx, id.RoomAlias("#lobby:a.test"))
		if err != nil {
			t.Fatalf("bob resolves #lobby:a.test: %v", err)
		}
		if resp.RoomID != lobby.RoomID || !slices.Contains(resp.Servers, "a.test") {
			t.Fatalf("#lobby:a.test on b: %+v, want %s on a.test", resp, lobby.RoomID)
		}
		if _, err := bob.cli.ResolveAlias(ctx, id.RoomAlias("#nothing:a.test")); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("an alias a.test does not have, asked on b: %v", err)
		}
	})

	t.Run("join by alias", func(t *testing.T) {
		resp, err := bob.cli.JoinRoom(ctx, "#lobby:a.test", nil)
		if err != nil {
			t.Fatalf("bob joins #lobby:a.test: %v", err)
		}
		if resp.RoomID != lobby.RoomID {
			t.Fatalf("joined %s, want %s", resp.RoomID, lobby.RoomID)
		}
		// The room is in bob's /sync with its state: its name, and both
		// members.
		fedEventually(t, "the joined room in bob's /sync", func() error {
			if err := bobSync.sync(ctx); err != nil {
				return err
			}
			var name string
			members := map[string]string{}
			for _, ev := range bobSync.state[lobby.RoomID] {
				switch ev.Type {
				case event.StateRoomName:
					name, _ = ev.Content.Raw["name"].(string)
				case event.StateMember:
					members[*ev.StateKey], _ = ev.Content.Raw["membership"].(string)
				}
			}
			if name != "Lobby" || members[string(alice.cli.UserID)] != "join" || members[string(bob.cli.UserID)] != "join" {
				return fmt.Errorf("state: name %q, members %v", name, members)
			}
			return nil
		})
		waitMembership(t, alice.cli, lobby.RoomID, bob.cli.UserID, "join")
		rooms, err := bob.cli.JoinedRooms(ctx)
		if err != nil || !slices.Contains(rooms.JoinedRooms, lobby.RoomID) {
			t.Fatalf("bob's joined rooms: %v %v", rooms, err)
		}
	})

	t.Run("messages both ways", func(t *testing.T) {
		if err := aliceSync.sync(ctx); err != nil {
			t.Fatal(err)
		}
		var want []string
		for round := range 3 {
			fromA := sendAll(t, alice, lobby.RoomID, fmt.Sprintf("m%d a", round), 4)
			want = append(want, fromA...)
			bobSync.waitBodies(t, lobby.RoomID, "m", want)
			fromB := sendAll(t, bob, lobby.RoomID, fmt.Sprintf("m%d b", round), 4)
			want = append(want, fromB...)
			aliceSync.waitBodies(t, lobby.RoomID, "m", want)
		}
		bobSync.waitBodies(t, lobby.RoomID, "m", want)
		// The history from before bob's join is fetched from a.test.
		assertExactly(t, "bob's /messages", withPrefix(history(t, bob.cli, lobby.RoomID), "before"), before)
	})

	// b's room, joined from a by room ID with via.
	t.Run("join by room ID with via", func(t *testing.T) {
		den, err := bob.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Den"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.cli.JoinRoom(ctx, den.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"b.test"}}); err != nil {
			t.Fatalf("alice joins b's room: %v", err)
		}
		waitMembership(t, bob.cli, den.RoomID, alice.cli.UserID, "join")
		fromB := sendAll(t, bob, den.RoomID, "den b", 3)
		aliceSync.waitBodies(t, den.RoomID, "den", fromB)
		fromA := sendAll(t, alice, den.RoomID, "den a", 3)
		bobSync.waitBodies(t, den.RoomID, "den", append(fromB, fromA...))
	})

	t.Run("remote profile", func(t *testing.T) {
		if err := alice.cli.SetDisplayName(ctx, "Alice of A"); err != nil {
			t.Fatal(err)
		}
		name, err := bob.cli.GetDisplayName(ctx, alice.cli.UserID)
		if err != nil || name.DisplayName != "Alice of A" {
			t.Fatalf("alice's display name asked on b: %+v %v", name, err)
		}
		prof, err := bob.cli.GetProfile(ctx, alice.cli.UserID)
		if err != nil || prof.DisplayName != "Alice of A" {
			t.Fatalf("alice's profile asked on b: %+v %v", prof, err)
		}
		if _, err := bob.cli.GetProfile(ctx, id.UserID("@nobody:a.test")); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("the profile of a user a.test does not have, asked on b: %v", err)
		}
	})

	t.Run("invite, reject and accept", func(t *testing.T) {
		carol := register(t, b.url, "carol")
		dave := register(t, b.url, "dave")
		carolSync, daveSync := newRoomSyncer(carol), newRoomSyncer(dave)
		secret, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret"})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []*user{carol, dave} {
			if _, err := alice.cli.InviteUser(ctx, secret.RoomID, &mautrix.ReqInviteUser{UserID: u.cli.UserID}); err != nil {
				t.Fatalf("alice invites %s: %v", u.cli.UserID, err)
			}
		}
		for _, s := range []*roomSyncer{carolSync, daveSync} {
			fedEventually(t, string(s.u.cli.UserID)+" sees the invite in /sync", func() error {
				if err := s.sync(ctx); err != nil {
					return err
				}
				if !s.invite[secret.RoomID] {
					return fmt.Errorf("no invite yet")
				}
				return nil
			})
		}
		// carol rejects (make_leave/send_leave through a.test).
		if _, err := carol.cli.LeaveRoom(ctx, secret.RoomID); err != nil {
			t.Fatalf("carol rejects the invite: %v", err)
		}
		waitMembership(t, alice.cli, secret.RoomID, carol.cli.UserID, "leave")
		if err := carolSync.sync(ctx); err != nil || carolSync.invite[secret.RoomID] {
			t.Fatalf("carol's /sync still shows the invite after rejecting it (%v)", err)
		}
		// dave accepts: a join by room ID through the inviter's server.
		if _, err := dave.cli.JoinRoomByID(ctx, secret.RoomID); err != nil {
			t.Fatalf("dave accepts the invite: %v", err)
		}
		waitMembership(t, alice.cli, secret.RoomID, dave.cli.UserID, "join")
		fromA := sendAll(t, alice, secret.RoomID, "secret a", 2)
		daveSync.waitBodies(t, secret.RoomID, "secret", fromA)
	})

	// Room versions 1 and 2 have the first event format (event IDs that
	// are not hashes, prev_events as pairs): an invite of another
	// server's user, the join after it, and messages both ways.
	t.Run("invite to a room of version 1", func(t *testing.T) {
		erin := register(t, b.url, "erin")
		erinSync := newRoomSyncer(erin)
		old, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Old", RoomVersion: "1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.cli.InviteUser(ctx, old.RoomID, &mautrix.ReqInviteUser{UserID: erin.cli.UserID}); err != nil {
			t.Fatalf("alice invites erin to a version 1 room: %v", err)
		}
		fedEventually(t, "erin sees the invite in /sync", func() error {
			if err := erinSync.sync(ctx); err != nil {
				return err
			}
			if !erinSync.invite[old.RoomID] {
				return fmt.Errorf("no invite yet")
			}
			return nil
		})
		if _, err := erin.cli.JoinRoomByID(ctx, old.RoomID); err != nil {
			t.Fatalf("erin accepts: %v", err)
		}
		waitMembership(t, alice.cli, old.RoomID, erin.cli.UserID, "join")
		fromA := sendAll(t, alice, old.RoomID, "old a", 2)
		erinSync.waitBodies(t, old.RoomID, "old a", fromA)
	})

	t.Run("leave", func(t *testing.T) {
		if _, err := bob.cli.LeaveRoom(ctx, lobby.RoomID); err != nil {
			t.Fatalf("bob leaves a's room: %v", err)
		}
		waitMembership(t, alice.cli, lobby.RoomID, bob.cli.UserID, "leave")
		rooms, err := bob.cli.JoinedRooms(ctx)
		if err != nil || slices.Contains(rooms.JoinedRooms, lobby.RoomID) {
			t.Fatalf("bob's joined rooms after leaving: %v %v", rooms, err)
		}
		// Messages after the leave do not reach bob.
		sendAll(t, alice, lobby.RoomID, "after leave", 1)
		if err := bobSync.sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := withPrefix(bobSync.bodies[lobby.RoomID], "after leave"); len(got) != 0 {
			t.Fatalf("bob saw %v after leaving", got)
		}
	})

	t.Run("backfill", func(t *testing.T) {
		archive, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Archive"})
		if err != nil {
			t.Fatal(err)
		}
		old := sendAll(t, alice, archive.RoomID, "old", 45)
		frank := register(t, b.url, "frank")
		if _, err := frank.cli.JoinRoom(ctx, archive.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
			t.Fatalf("frank joins: %v", err)
		}
		// b.test's copy of the room starts at frank's join: paging back
		// fetches the history from a.test, in pages, each message once
		// and in order, down to the room's creation.
		got := withPrefix(history(t, frank.cli, archive.RoomID), "old")
		if !equal(got, old) {
			t.Logf("frank got %v", got)
		}
		assertExactly(t, "frank's /messages", got, old)
		// Paging back ends (the room's state from before frank's join
		// came with send_join and is not part of the timeline on b.test).
		if first := earliestType(t, frank.cli, archive.RoomID); first == "" {
			t.Fatal("no events in frank's history")
		}
	})

	t.Run("remote public rooms", func(t *testing.T) {
		plaza, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Plaza"})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := bob.cli.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: "a.test"})
		if err != nil {
			t.Fatalf("a.test's directory asked on b: %v", err)
		}
		found := false
		for _, r := range resp.Chunk {
			found = found || (r.RoomID == plaza.RoomID && r.Name == "Plaza")
		}
		if !found {
			t.Fatalf("a.test's directory asked on b: %+v, want the Plaza", resp.Chunk)
		}
		// The POST form with a filter (mautrix has no call for it).
		status, body := do(t, "POST", b.url+"/_matrix/client/v3/publicRooms?server=a.test", bob.cli.AccessToken,
			[]byte(`{"filter":{"generic_search_term":"plaz"}}`))
		if status != 200 || !strings.Contains(string(body), plaza.RoomID.String()) || strings.Contains(string(body), lobby.RoomID.String()) {
			t.Fatalf("a.test's directory filtered, asked on b: %d %s", status, body)
		}
	})

	t.Run("join fails over to the next server", func(t *testing.T) {
		gina := register(t, b.url, "gina")
		// nowhere.test is not in the server-name map (and does not
		// resolve): the join goes through a.test, the next one.
		if _, err := gina.cli.JoinRoom(ctx, lobby.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"nowhere.test", "a.test"}}); err != nil {
			t.Fatalf("gina joins through nowhere.test, then a.test: %v", err)
		}
		waitMembership(t, alice.cli, lobby.RoomID, gina.cli.UserID, "join")
		// A room no reachable server knows: the spec's 404.
		if _, err := gina.cli.JoinRoom(ctx, "!nothing:a.test", nil); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("joining a room a.test does not know: %v", err)
		}
	})

	t.Run("knock and retract", func(t *testing.T) {
		door, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Door",
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Parsed: &event.JoinRulesEventContent{JoinRule: event.JoinRuleKnock}}}}})
		if err != nil {
			t.Fatal(err)
		}
		hank := register(t, b.url, "hank")
		if _, err := hank.cli.KnockRoom(ctx, door.RoomID.String(), &mautrix.ReqKnockRoom{Via: []string{"a.test"}, Reason: "let me in"}); err != nil {
			t.Fatalf("hank knocks on a's room: %v", err)
		}
		waitMembership(t, alice.cli, door.RoomID, hank.cli.UserID, "knock")
		// hank retracts the knock: a leave through a.test.
		if _, err := hank.cli.LeaveRoom(ctx, door.RoomID); err != nil {
			t.Fatalf("hank retracts his knock: %v", err)
		}
		waitMembership(t, alice.cli, door.RoomID, hank.cli.UserID, "leave")
	})

	t.Run("remote space hierarchy", func(t *testing.T) {
		space, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Space",
			CreationContent: map[string]any{"type": "m.space"}})
		if err != nil {
			t.Fatal(err)
		}
		child, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Child"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.cli.SendStateEvent(ctx, space.RoomID, event.StateSpaceChild, child.RoomID.String(),
			map[string]any{"via": []string{"a.test"}}); err != nil {
			t.Fatal(err)
		}
		// b.test is in neither room: it asks a.test.
		status, body := do(t, "GET", b.url+"/_matrix/client/v1/rooms/"+space.RoomID.String()+"/hierarchy?via=a.test", bob.cli.AccessToken, nil)
		if status != 200 || !strings.Contains(string(body), child.RoomID.String()) || !strings.Contains(string(body), `"Space"`) {
			t.Fatalf("a.test's space asked on b: %d %s", status, body)
		}

		// Deeper levels: the space gains a sub-space with a room of its
		// own, all on a.test. b.test's walk asks a.test once per space it
		// descends into, and max_depth still bounds it.
		sub, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Sub",
			CreationContent: map[string]any{"type": "m.space"}})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Leaf"})
		if err != nil {
			t.Fatal(err)
		}
		for _, link := range [][2]id.RoomID{{space.RoomID, sub.RoomID}, {sub.RoomID, leaf.RoomID}} {
			if _, err := alice.cli.SendStateEvent(ctx, link[0], event.StateSpaceChild, link[1].String(),
				map[string]any{"via": []string{"a.test"}, "order": "b"}); err != nil {
				t.Fatal(err)
			}
		}
		hierarchyIDs := func(query string) []string {
			t.Helper()
			status, body := do(t, "GET", b.url+"/_matrix/client/v1/rooms/"+space.RoomID.String()+"/hierarchy?via=a.test"+query, bob.cli.AccessToken, nil)
			if status != 200 {
				t.Fatalf("hierarchy%s on b: %d %s", query, status, body)
			}
			var resp struct {
				Rooms []struct {
					RoomID string `json:"room_id"`
				} `json:"rooms"`
			}
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range resp.Rooms {
				ids = append(ids, r.RoomID)
			}
			return ids
		}
		// Sub has order "b", Child none: ordered children come first.
		want := []string{space.RoomID.String(), sub.RoomID.String(), leaf.RoomID.String(), child.RoomID.String()}
		if got := hierarchyIDs(""); !slices.Equal(got, want) {
			t.Fatalf("remote hierarchy on b: %v, want %v", got, want)
		}
		want = []string{space.RoomID.String(), sub.RoomID.String(), child.RoomID.String()}
		if got := hierarchyIDs("&max_depth=1"); !slices.Equal(got, want) {
			t.Fatalf("remote hierarchy on b, max_depth 1: %v, want %v", got, want)
		}

		// A space of b.test's with a child only a.test knows: b fills the
		// child in over federation.
		home, err := bob.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Home",
			CreationContent: map[string]any{"type": "m.space"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bob.cli.SendStateEvent(ctx, home.RoomID, event.StateSpaceChild, sub.RoomID.String(),
			map[string]any{"via": []string{"a.test"}}); err != nil {
			t.Fatal(err)
		}
		status, body = do(t, "GET", b.url+"/_matrix/client/v1/rooms/"+home.RoomID.String()+"/hierarchy", bob.cli.AccessToken, nil)
		if status != 200 || !strings.Contains(string(body), `"Home"`) || !strings.Contains(string(body), `"Sub"`) || !strings.Contains(string(body), leaf.RoomID.String()) {
			t.Fatalf("b's space with a.test's sub-space: %d %s", status, body)
		}
	})
}

// earliestType pages /messages back to its end and returns the type of
// the last event.
func earliestType(t *testing.T, cli *mautrix.Client, room id.RoomID) string {
	t.Helper()
	from, last := "", ""
	for range 100 {
		resp, err := cli.Messages(context.Background(), room, from, "", mautrix.DirectionBackward, nil, 50)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(resp.Chunk); n > 0 {
			last = resp.Chunk[n-1].Type.Type
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	return last
}
