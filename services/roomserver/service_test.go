package roomserver

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func TestCreateRoomSendAndPublish(t *testing.T) {
	h := newHarness(t, nil)
	for _, version := range []string{"", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			created := h.createRoom(version, "public", map[string]int{alice: 100})
			roomID := created.GetRoomId()
			wantVersion := version
			if wantVersion == "" {
				wantVersion = "11" // the default
			}
			if created.GetRoomVersion() != wantVersion {
				t.Fatalf("room version %s, want %s", created.GetRoomVersion(), wantVersion)
			}
			if len(created.GetEventIds()) != 5 {
				t.Fatalf("event IDs %v, want create + 4", created.GetEventIds())
			}
			createID := created.GetEventIds()[0]
			if wantVersion == "12" {
				if roomID != "!"+createID[1:] {
					t.Fatalf("v12 room ID %s is not derived from create event %s", roomID, createID)
				}
			} else if !strings.HasSuffix(roomID, ":"+testServer) {
				t.Fatalf("room ID %s lacks the server name", roomID)
			}

			// Every stored event is a real, signed PDU of the room version.
			createEv := h.event(createID)
			verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(wantVersion))
			pdu, err := verImpl.NewEventFromUntrustedJSON(createEv.GetEventJson())
			if err != nil {
				t.Fatal(err)
			}
			if pdu.EventID() != createID {
				t.Fatalf("reference hash %s != event ID %s", pdu.EventID(), createID)
			}
			var raw struct {
				Hashes     map[string]string            `json:"hashes"`
				Signatures map[string]map[string]string `json:"signatures"`
				Content    map[string]any               `json:"content"`
			}
			if err := json.Unmarshal(createEv.GetEventJson(), &raw); err != nil {
				t.Fatal(err)
			}
			if raw.Hashes["sha256"] == "" || len(raw.Signatures[testServer]) != 1 {
				t.Fatalf("create event lacks hash or server signature: %s", createEv.GetEventJson())
			}
			if len(raw.Signatures) != 1 {
				t.Fatalf("create event has signatures of other servers: %s", createEv.GetEventJson())
			}
			if raw.Content["room_version"] != wantVersion {
				t.Fatalf("create content %v", raw.Content)
			}

			// Messages and a state change.
			m1 := h.mustSend(roomID, alice, message(t, "hello"))
			name1 := h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomName, "", map[string]any{"name": "first"}))
			name2 := h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomName, "", map[string]any{"name": "second"}))
			resp, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, "with txn"),
				TransactionId: &roomserverv1.TransactionID{DeviceId: "DEV", TxnId: "t1"}})
			if err != nil {
				t.Fatal(err)
			}
			m2 := resp.GetEventId()

			info := h.roomInfo(roomID)
			if !info.GetRoomExists() || info.GetRoomVersion() != wantVersion || !slices.Equal(info.GetForwardExtremities(), []string{m2}) {
				t.Fatalf("room info %+v, want one extremity %s", info, m2)
			}
			if info.GetDepth() != 9 {
				t.Fatalf("depth %d, want 9", info.GetDepth())
			}
			if got := h.stateContent(roomID, "", false, spec.MRoomName, "", "name"); got != "second" {
				t.Fatalf("current name %q", got)
			}
			if got := h.stateContent(roomID, name2, false, spec.MRoomName, "", "name"); got != "first" {
				t.Fatalf("name before %s: %q", name2, got)
			}
			if got := h.stateContent(roomID, name2, true, spec.MRoomName, "", "name"); got != "second" {
				t.Fatalf("name after %s: %q", name2, got)
			}
			if got := h.stateContent(roomID, m1, true, spec.MRoomName, "", "name"); got != "" {
				t.Fatalf("name after %s: %q, want none", m1, got)
			}
			st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
			if err != nil {
				t.Fatal(err)
			}
			if len(st.GetState()) != 6 { // create, member, PL, join rules, history, name
				t.Fatalf("current state has %d events, want 6", len(st.GetState()))
			}

			// Published in commit order with the state changes.
			want := append(slices.Clone(created.GetEventIds()), m1, name1, name2, m2)
			msgs := h.waitPublished(roomID, len(want))
			var last int64
			for i, m := range msgs {
				if m.out.GetEventId() != want[i] || m.msgID != want[i] {
					t.Fatalf("message %d is %s (msg id %s), want %s", i, m.out.GetEventId(), m.msgID, want[i])
				}
				if m.out.GetStreamPosition() <= last {
					t.Fatalf("stream positions not increasing: %d after %d", m.out.GetStreamPosition(), last)
				}
				last = m.out.GetStreamPosition()
				if m.out.GetRoomId() != roomID || m.out.GetRoomVersion() != wantVersion || len(m.out.GetEventJson()) == 0 {
					t.Fatalf("message %d: %+v", i, m.out)
				}
			}
			byID := map[string]*roomserverv1.OutputRoomEvent{}
			for _, m := range msgs {
				byID[m.out.GetEventId()] = m.out
			}
			if o := byID[m1]; len(o.GetAddedStateEvents()) != 0 || len(o.GetRemovedStateEventIds()) != 0 {
				t.Fatalf("message changed state: %+v", o)
			}
			if o := byID[name1]; len(o.GetAddedStateEvents()) != 1 || len(o.GetRemovedStateEventIds()) != 0 {
				t.Fatalf("first name: %+v", o)
			}
			if o := byID[name2]; len(o.GetAddedStateEvents()) != 1 || !slices.Equal(o.GetRemovedStateEventIds(), []string{name1}) {
				t.Fatalf("second name: added %d removed %v", len(o.GetAddedStateEvents()), o.GetRemovedStateEventIds())
			}
			if o := byID[m2]; o.GetTransactionId().GetTxnId() != "t1" || o.GetTransactionId().GetDeviceId() != "DEV" {
				t.Fatalf("transaction ID not published: %+v", o.GetTransactionId())
			}
			if o := byID[createID]; len(o.GetAddedStateEvents()) != 1 {
				t.Fatalf("create event added %d state events", len(o.GetAddedStateEvents()))
			}
		})
	}
}

func TestMembershipAndAuthFailures(t *testing.T) {
	h := newHarness(t, nil)
	for _, version := range []string{"11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			roomID := h.createRoom(version, "invite", map[string]int{alice: 100}).GetRoomId()
			eventsInRoom := func() int64 {
				return h.countRows(`SELECT count(*) FROM events e JOIN rooms r USING (room_nid) WHERE r.room_id = $1`, roomID)
			}
			before := h.roomInfo(roomID)
			stored := eventsInRoom()

			// Refusals answer PERMISSION_DENIED and store nothing.
			for _, c := range []struct {
				name   string
				sender string
				tmpl   *roomserverv1.EventTemplate
			}{
				{"non-member message", bob, message(t, "hi")},
				{"join invite-only room without invite", bob, member(t, bob, "join")},
				{"non-member invites", bob, member(t, carol, "invite")},
				{"non-member sets name", carol, stateTmpl(t, spec.MRoomName, "", map[string]any{"name": "x"})},
			} {
				_, err := h.send(roomID, c.sender, c.tmpl)
				if c.name == "" || err == nil {
					t.Fatalf("%s: accepted", c.name)
				}
				wantCode(t, err, codes.PermissionDenied)
			}
			if after := h.roomInfo(roomID); after.GetDepth() != before.GetDepth() ||
				!slices.Equal(after.GetForwardExtremities(), before.GetForwardExtremities()) {
				t.Fatalf("refused events changed the room: %+v -> %+v", before, after)
			}
			if n := eventsInRoom(); n != stored {
				t.Fatalf("refused events were stored: %d -> %d rows", stored, n)
			}

			// Invite, join, talk, leave.
			h.mustSend(roomID, alice, member(t, bob, "invite"))
			if got := h.membership(roomID, bob); got != "invite" {
				t.Fatalf("bob is %q, want invite", got)
			}
			h.mustSend(roomID, bob, member(t, bob, "join"))
			if got := h.membership(roomID, bob); got != "join" {
				t.Fatalf("bob is %q, want join", got)
			}
			h.mustSend(roomID, bob, message(t, "hello from bob"))
			// bob has power 0; inviting needs 50.
			_, err := h.send(roomID, bob, member(t, carol, "invite"))
			wantCode(t, err, codes.PermissionDenied)
			h.mustSend(roomID, bob, member(t, bob, "leave"))
			if got := h.membership(roomID, bob); got != "leave" {
				t.Fatalf("bob is %q, want leave", got)
			}
			_, err = h.send(roomID, bob, message(t, "after leaving"))
			wantCode(t, err, codes.PermissionDenied)
			// Ban, then the banned user cannot come back even when invited.
			h.mustSend(roomID, alice, member(t, carol, "ban"))
			if got := h.membership(roomID, carol); got != "ban" {
				t.Fatalf("carol is %q, want ban", got)
			}
			_, err = h.send(roomID, alice, member(t, carol, "invite"))
			wantCode(t, err, codes.PermissionDenied)
			if got := h.membership(roomID, "@nobody:"+testServer); got != "" {
				t.Fatalf("never-member is %q", got)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	cases := []struct {
		name string
		req  *roomserverv1.SendEventRequest
		code codes.Code
	}{
		{"unknown room", &roomserverv1.SendEventRequest{RoomId: "!nope:" + testServer, Sender: alice, Event: message(t, "x")}, codes.NotFound},
		{"bad room ID", &roomserverv1.SendEventRequest{RoomId: "nope", Sender: alice, Event: message(t, "x")}, codes.InvalidArgument},
		{"content not an object", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice,
			Event: &roomserverv1.EventTemplate{Type: "m.room.message", Content: []byte(`[1]`)}}, codes.InvalidArgument},
		{"content not JSON", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice,
			Event: &roomserverv1.EventTemplate{Type: "m.room.message", Content: []byte(`{`)}}, codes.InvalidArgument},
		{"member state key not a user", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice,
			Event: stateTmpl(t, spec.MRoomMember, "bob", map[string]any{"membership": "invite"})}, codes.InvalidArgument},
		{"member without membership", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice,
			Event: stateTmpl(t, spec.MRoomMember, bob, map[string]any{})}, codes.InvalidArgument},
		{"bad power levels", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice,
			Event: stateTmpl(t, spec.MRoomPowerLevels, "", map[string]any{"ban": "fifty"})}, codes.InvalidArgument},
		{"remote sender", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: "@eve:elsewhere.test", Event: message(t, "x")}, codes.InvalidArgument},
		{"empty type", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: &roomserverv1.EventTemplate{}}, codes.InvalidArgument},
		{"second create event", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: stateTmpl(t, spec.MRoomCreate, "", map[string]any{})}, codes.InvalidArgument},
		{"too large", &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, strings.Repeat("x", 70000))}, codes.OutOfRange},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := h.rs.SendEvent(h.ctx, c.req)
			wantCode(t, err, c.code)
		})
	}
	_, err := h.rs.CreateRoom(h.ctx, &roomserverv1.CreateRoomRequest{Creator: alice, RoomVersion: "org.matrix.msc4014"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.rs.CreateRoom(h.ctx, &roomserverv1.CreateRoomRequest{Creator: alice, RoomVersion: "99"})
	wantCode(t, err, codes.InvalidArgument)
	// A refused initial event fails the whole CreateRoom and stores nothing.
	rooms := h.countRows(`SELECT count(*) FROM rooms`)
	_, err = h.rs.CreateRoom(h.ctx, &roomserverv1.CreateRoomRequest{Creator: alice, InitialEvents: []*roomserverv1.EventTemplate{
		member(t, alice, "join"), member(t, bob, "join"),
	}})
	wantCode(t, err, codes.PermissionDenied)
	if n := h.countRows(`SELECT count(*) FROM rooms`); n != rooms {
		t.Fatalf("failed CreateRoom left a room behind")
	}
	resp, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: "!unknown:" + testServer})
	if err != nil || resp.GetRoomExists() {
		t.Fatalf("QueryState unknown room: %v %+v", err, resp)
	}
	_, err = h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: "$missing"})
	wantCode(t, err, codes.NotFound)
}

func TestTransactionIdempotency(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	send := func(device, txn string) *roomserverv1.SendEventResponse {
		t.Helper()
		resp, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, "once"),
			TransactionId: &roomserverv1.TransactionID{DeviceId: device, TxnId: txn}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := send("D1", "txn")
	if first.GetDeduplicated() {
		t.Fatal("first send deduplicated")
	}
	again := send("D1", "txn")
	if !again.GetDeduplicated() || again.GetEventId() != first.GetEventId() {
		t.Fatalf("repeat: %+v, want dedup of %s", again, first.GetEventId())
	}
	other := send("D2", "txn")
	if other.GetDeduplicated() || other.GetEventId() == first.GetEventId() {
		t.Fatalf("other device deduplicated: %+v", other)
	}

	// Concurrent repeats of one transaction produce one event; concurrent
	// distinct sends all land on a linear graph.
	var wg sync.WaitGroup
	ids := make([]string, 20)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			txn := "c" + fmt.Sprint(i%2)
			resp, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: alice, Event: message(t, "c"),
				TransactionId: &roomserverv1.TransactionID{DeviceId: "D3", TxnId: txn}})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = resp.GetEventId()
		}()
	}
	wg.Wait()
	distinct := map[string]bool{}
	for _, id := range ids {
		distinct[id] = true
	}
	if len(distinct) != 2 {
		t.Fatalf("20 sends of 2 transactions made %d events", len(distinct))
	}
	if ext := h.roomInfo(roomID).GetForwardExtremities(); len(ext) != 1 {
		t.Fatalf("extremities %v", ext)
	}
	// create + 4 initial + first + other + 2
	h.waitPublished(roomID, 9)
}

func TestAliases(t *testing.T) {
	h := newHarness(t, nil)
	roomID := h.createRoom("11", "public", map[string]int{alice: 100}).GetRoomId()
	alias := "#room:" + testServer
	set, err := h.rs.SetRoomAlias(h.ctx, &roomserverv1.SetRoomAliasRequest{Alias: alias, RoomId: roomID, Creator: alice})
	if err != nil || !set.GetCreated() {
		t.Fatalf("set: %v %+v", err, set)
	}
	set, err = h.rs.SetRoomAlias(h.ctx, &roomserverv1.SetRoomAliasRequest{Alias: alias, RoomId: roomID, Creator: alice})
	if err != nil || set.GetCreated() {
		t.Fatalf("set again: %v %+v", err, set)
	}
	got, err := h.rs.GetRoomAlias(h.ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil || got.GetRoomId() != roomID || !slices.Equal(got.GetServers(), []string{testServer}) {
		t.Fatalf("get: %v %+v", err, got)
	}
	_, err = h.rs.SetRoomAlias(h.ctx, &roomserverv1.SetRoomAliasRequest{Alias: "room", RoomId: roomID})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.rs.SetRoomAlias(h.ctx, &roomserverv1.SetRoomAliasRequest{Alias: "#x:" + testServer, RoomId: "!nope:" + testServer})
	wantCode(t, err, codes.NotFound)
	rm, err := h.rs.RemoveRoomAlias(h.ctx, &roomserverv1.RemoveRoomAliasRequest{Alias: alias})
	if err != nil || !rm.GetRemoved() {
		t.Fatalf("remove: %v %+v", err, rm)
	}
	rm, err = h.rs.RemoveRoomAlias(h.ctx, &roomserverv1.RemoveRoomAliasRequest{Alias: alias})
	if err != nil || rm.GetRemoved() {
		t.Fatalf("remove again: %v %+v", err, rm)
	}
	got, err = h.rs.GetRoomAlias(h.ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil || got.GetRoomId() != "" {
		t.Fatalf("get removed: %v %+v", err, got)
	}
}

// TestAllStableVersions: every stable room version gomatrixserverlib knows
// can be created, joined and talked in.
func TestAllStableVersions(t *testing.T) {
	h := newHarness(t, nil)
	for v := range gomatrixserverlib.StableRoomVersions() {
		t.Run("v"+string(v), func(t *testing.T) {
			h.t = t
			roomID := h.createRoom(string(v), "public", map[string]int{alice: 100}).GetRoomId()
			h.mustSend(roomID, bob, member(t, bob, "join"))
			h.mustSend(roomID, bob, message(t, "hi"))
			_, err := h.send(roomID, carol, message(t, "not joined"))
			wantCode(t, err, codes.PermissionDenied)
			if got := h.membership(roomID, bob); got != "join" {
				t.Fatalf("bob is %q", got)
			}
			h.waitPublished(roomID, 7)
		})
	}
}
