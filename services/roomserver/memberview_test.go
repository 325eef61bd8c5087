package roomserver

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/memberview"
)

// TestMemberViewsMatchFullRebuild is a property test of the member views
// (memberview): random joins, leaves, invites, kicks, bans, join-rule,
// power-level and history-visibility changes by users of two servers, on
// forks as well as on the forward extremities (so state resolution runs,
// and resets memberships), go through InputEvents; after each, the views
// of the event's state before and after and of the room's current state,
// derived from other snapshots' views and deltas, must equal a view built
// from the whole state. Small caches and a short snapshot base interval
// make every path run: derivation over several deltas, from a base
// snapshot, from rows read back from PostgreSQL, and the full build.
func TestMemberViewsMatchFullRebuild(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, func(c *Config) {
		c.SnapshotBaseInterval = 5
		c.StateCacheSize = 6
		c.MemberViewCacheSize = 6
	}, remote)
	rv := gomatrixserverlib.MustGetRoomVersion("11")
	dave := "@dave:" + testServer
	ron, rita := remote.User("ron"), remote.User("rita")
	users := []string{alice, bob, carol, dave, ron, rita}

	// build signs as the sender's server, auth events from the state
	// after authFrom.
	build := func(roomID, sender, typ string, stateKey *string, content any, prevs []string, authFrom string) gomatrixserverlib.PDU {
		t.Helper()
		if !slices.Contains([]string{ron, rita}, sender) {
			return h.build(roomID, sender, typ, stateKey, content, prevs, authFrom)
		}
		var depth int64
		for _, p := range prevs {
			pdu, err := rv.NewEventFromTrustedJSONWithEventID(p, h.event(p).GetEventJson(), false)
			if err != nil {
				t.Fatal(err)
			}
			depth = max(depth, pdu.Depth())
		}
		pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey,
			PrevEvents: prevs, Depth: depth + 1, Content: mustJSON(t, content), Version: rv}
		st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: authFrom, After: true})
		if err != nil {
			t.Fatal(err)
		}
		var pdus []gomatrixserverlib.PDU
		for _, e := range st.GetState() {
			p, err := rv.NewEventFromTrustedJSONWithEventID(e.GetEventId(), e.GetEventJson(), false)
			if err != nil {
				t.Fatal(err)
			}
			pdus = append(pdus, p)
		}
		provider, _ := gomatrixserverlib.NewAuthEvents(pdus)
		eb := rv.NewEventBuilderFromProtoEvent(pe)
		if err := eb.AddAuthEvents(provider); err != nil {
			t.Fatal(err)
		}
		pe.AuthEvents = eb.AuthEvents
		return remote.Sign(rv, pe)
	}

	checks, removals := 0, 0
	check := func(what string, nid int64) {
		t.Helper()
		got, err := h.svc.memberViews.Get(h.ctx, nid)
		if err != nil {
			t.Fatalf("%s: view of snapshot %d: %v", what, nid, err)
		}
		want, err := h.svc.memberViews.Build(h.ctx, nid)
		if err != nil {
			t.Fatalf("%s: build of snapshot %d: %v", what, nid, err)
		}
		if !sameView(got, want) {
			t.Fatalf("%s: snapshot %d: derived view %v %q %v, built %v %q %v", what, nid,
				got.Memberships(), got.Visibility(), got.Servers(), want.Memberships(), want.Visibility(), want.Servers())
		}
		checks++
	}
	snapshots := func(roomID, eventID string) (before, after, current int64) {
		t.Helper()
		found, err := h.svc.eventsByID(h.ctx, h.svc.store.Queries, []string{eventID})
		if err != nil || found[eventID] == nil {
			t.Fatalf("event %s: %v", eventID, err)
		}
		room, err := h.svc.room(h.ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		e := found[eventID]
		if e.StateBefore == nil {
			return -1, -1, room.SnapshotNID
		}
		return *e.StateBefore, *e.StateAfter, room.SnapshotNID
	}

	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			h.t = t
			rng := rand.New(rand.NewPCG(seed, 20))
			roomID := h.createRoom("11", "public", map[string]int{alice: 100, bob: 50}).GetRoomId()
			x := h.mustSend(roomID, carol, member(t, carol, "join"))

			// A state reset first: dave joins on one branch and alice
			// changes three things after it; on a fork from before dave's
			// join alice makes the room invite-only. Resolving the two
			// drops dave's join from the current state, which is stored
			// as a delta on the first branch's state (the closest).
			daveJoin := build(roomID, dave, spec.MRoomMember, &dave, map[string]any{"membership": "join"}, []string{x}, x)
			h.inputOne(daveJoin, accepted)
			if m := viewOf(t, h, roomID).Memberships()[dave]; m != spec.Join {
				t.Fatalf("dave after his join: %q", m)
			}
			tip := daveJoin.EventID()
			for _, typ := range []string{spec.MRoomTopic, spec.MRoomName, "m.room.avatar"} {
				ev := build(roomID, alice, typ, ptr(""), map[string]any{"topic": "t", "name": "n", "url": "mxc://a/b"}, []string{tip}, tip)
				h.inputOne(ev, accepted)
				tip = ev.EventID()
			}
			if m := viewOf(t, h, roomID).Memberships()[dave]; m != spec.Join {
				t.Fatalf("dave after alice's changes: %q", m)
			}
			inviteOnly := build(roomID, alice, spec.MRoomJoinRules, ptr(""), map[string]any{"join_rule": "invite"}, []string{x}, x)
			h.inputOne(inviteOnly, accepted)
			if m, ok := viewOf(t, h, roomID).Memberships()[dave]; ok {
				t.Fatalf("dave after the state reset: %q, want no membership", m)
			}
			removals++
			b, a, c := snapshots(roomID, inviteOnly.EventID())
			check("reset", b)
			check("reset", a)
			check("reset", c)

			events := []string{x, daveJoin.EventID(), tip, inviteOnly.EventID()}
			for step := range 90 {
				prevs := h.roomInfo(roomID).GetForwardExtremities()
				if rng.IntN(4) == 0 { // a fork from an earlier event
					prevs = []string{events[len(events)-1-rng.IntN(min(len(events), 12))]}
				}
				authFrom := prevs[rng.IntN(len(prevs))]
				sender := users[rng.IntN(len(users))]
				target := users[rng.IntN(len(users))]
				var typ string
				var key *string
				var content any
				switch op := rng.IntN(10); op {
				case 0, 1:
					typ, key, content = spec.MRoomMember, &sender, map[string]any{"membership": "join"}
				case 2:
					typ, key, content = spec.MRoomMember, &sender, map[string]any{"membership": "leave"}
				case 3: // of a user of the sender's server (another's must sign the invite)
					if slices.Contains([]string{ron, rita}, sender) != slices.Contains([]string{ron, rita}, target) {
						target = sender
					}
					typ, key, content = spec.MRoomMember, &target, map[string]any{"membership": "invite"}
				case 4:
					sender = alice
					typ, key, content = spec.MRoomMember, &target, map[string]any{"membership": []string{"ban", "leave"}[rng.IntN(2)]}
				case 5:
					sender = alice
					typ, key, content = spec.MRoomJoinRules, ptr(""), map[string]any{"join_rule": []string{"public", "invite"}[rng.IntN(2)]}
				case 6:
					sender = alice
					typ, key, content = spec.MRoomHistoryVisibility, ptr(""),
						map[string]any{"history_visibility": []string{"shared", "joined", "invited", "world_readable", "bogus"}[rng.IntN(5)]}
				case 7:
					sender = []string{alice, bob}[rng.IntN(2)]
					level := []int{0, 50, 100}[rng.IntN(3)]
					if sender == alice {
						level = min(level, 99)
					}
					typ, key, content = spec.MRoomPowerLevels, ptr(""), plContent("11", map[string]int{alice: 100, bob: level, ron: 50})
				default:
					typ, content = "m.room.message", map[string]any{"msgtype": "m.text", "body": fmt.Sprint(step)}
				}
				ev := build(roomID, sender, typ, key, content, prevs, authFrom)
				res := h.input(roomserverv1.InputKind_INPUT_KIND_NEW, ev)[0]
				if res.GetStatus() != accepted && res.GetStatus() != rejected && res.GetStatus() != softFailed {
					t.Fatalf("step %d: %s: %s %s", step, typ, res.GetStatus(), res.GetReason())
				}
				events = append(events, ev.EventID())
				// Not every step: the next one then derives over several
				// deltas.
				if rng.IntN(3) == 0 {
					continue
				}
				b, a, c := snapshots(roomID, ev.EventID())
				if b >= 0 {
					check(fmt.Sprintf("step %d before", step), b)
					check(fmt.Sprintf("step %d after", step), a)
				}
				check(fmt.Sprintf("step %d current", step), c)
				if rng.IntN(4) == 0 { // an older snapshot
					old := events[rng.IntN(len(events))]
					if b, a, _ := snapshots(roomID, old); b >= 0 {
						check("older before", b)
						check("older after", a)
					}
				}
			}
		})
	}
	t.Logf("%d views compared, %d state resets checked", checks, removals)
}

// TestMemberViewsLongChains checks the member views of long runs of joins
// into one room against views built from the whole state: derived one
// after another (past the depth where a view copies the entries it
// shares), and after more joins than Get walks up without a cached view.
func TestMemberViewsLongChains(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, func(c *Config) {
		c.StateCacheSize = 2
		c.MemberViewCacheSize = 2
	}, remote)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	rv := gomatrixserverlib.MustGetRoomVersion("11")
	joins := 0
	join := func() {
		t.Helper()
		joins++
		if joins%3 != 0 {
			user := fmt.Sprintf("@u%d:%s", joins, testServer)
			h.mustSend(roomID, user, member(t, user, "join"))
			return
		}
		// Every third join is a remote user's.
		user := remote.User(fmt.Sprintf("r%d", joins))
		info := h.roomInfo(roomID)
		pe := &gomatrixserverlib.ProtoEvent{SenderID: user, RoomID: roomID, Type: spec.MRoomMember, StateKey: &user,
			PrevEvents: info.GetForwardExtremities(), Depth: info.GetDepth() + 1, Content: mustJSON(t, map[string]any{"membership": "join"})}
		st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
		if err != nil {
			t.Fatal(err)
		}
		var pdus []gomatrixserverlib.PDU
		for _, e := range st.GetState() {
			p, err := rv.NewEventFromTrustedJSONWithEventID(e.GetEventId(), e.GetEventJson(), false)
			if err != nil {
				t.Fatal(err)
			}
			pdus = append(pdus, p)
		}
		provider, _ := gomatrixserverlib.NewAuthEvents(pdus)
		pe.Version = rv
		eb := rv.NewEventBuilderFromProtoEvent(pe)
		if err := eb.AddAuthEvents(provider); err != nil {
			t.Fatal(err)
		}
		pe.AuthEvents = eb.AuthEvents
		h.inputOne(remote.Sign(rv, pe), accepted)
	}
	check := func() {
		t.Helper()
		room, err := h.svc.room(h.ctx, roomID)
		if err != nil {
			t.Fatal(err)
		}
		got := viewOf(t, h, roomID)
		want, err := h.svc.memberViews.Build(h.ctx, room.SnapshotNID)
		if err != nil {
			t.Fatal(err)
		}
		if !sameView(got, want) || got.Len() != joins+1 {
			t.Fatalf("after %d joins: derived %d members %v, built %d members %v", joins, got.Len(), got.Servers(), want.Len(), want.Servers())
		}
	}
	for range 80 {
		join()
		check()
	}
	for range 40 {
		join()
	}
	check()
}

func viewOf(t *testing.T, h *harness, roomID string) *memberview.View {
	t.Helper()
	room, err := h.svc.room(h.ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	v, err := h.svc.memberViews.Get(h.ctx, room.SnapshotNID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sameView(a, b *memberview.View) bool {
	if !maps.Equal(a.Memberships(), b.Memberships()) || a.Visibility() != b.Visibility() ||
		!slices.Equal(a.Servers(), b.Servers()) || a.Len() != b.Len() {
		return false
	}
	for _, srv := range []spec.ServerName{testServer, "remote.test", "other.test"} {
		if a.ServerMembership(srv) != b.ServerMembership(srv) {
			return false
		}
	}
	return true
}
