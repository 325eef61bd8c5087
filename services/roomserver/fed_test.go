package roomserver

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// TestJoinRemoteRoomWithSuppliedState joins a room of another server as
// send_join's answer is input (state and auth chain as outliers, the join
// with the state before it), then takes events from both sides, fills a
// gap with supplied state and backfills history.
func TestJoinRemoteRoomWithSuppliedState(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, nil, remote)
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			rr := remote.NewRoom(version, remote.User("ron"), "public")
			ron := remote.User("ron")
			hist := []gomatrixserverlib.PDU{
				rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "h1"}),
				rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "h2"}),
				rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "h3"}),
			}
			stateBeforeHist := rr.StateIDs()
			join := h.joinRemoteRoom(rr, alice)

			info := h.roomInfo(rr.RoomID)
			if !info.GetRoomExists() || info.GetRoomVersion() != version {
				t.Fatalf("room info %+v", info)
			}
			if !slices.Equal(info.GetForwardExtremities(), []string{join.EventID()}) {
				t.Fatalf("extremities %v, want the join", info.GetForwardExtremities())
			}
			if got := h.stateContent(rr.RoomID, "", false, spec.MRoomName, "", "name"); got != "remote room" {
				t.Fatalf("current name %q", got)
			}
			if m := h.membership(rr.RoomID, alice); m != "join" {
				t.Fatalf("alice's membership %q", m)
			}
			// Only the join is published, with the whole state added.
			msgs := h.waitPublished(rr.RoomID, 1)
			if o := msgs[0].out; o.GetEventId() != join.EventID() || o.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW ||
				len(o.GetAddedStateEvents()) != len(rr.State) {
				t.Fatalf("published %s kind %s with %d state events, want the join with %d", o.GetEventId(), o.GetKind(),
					len(o.GetAddedStateEvents()), len(rr.State))
			}

			// Events from both sides.
			m1 := rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "welcome"})
			h.inputOne(m1, accepted)
			mine := h.mustSend(rr.RoomID, alice, message(t, "thanks"))
			local := h.event(mine)
			pdu, err := rr.Version.NewEventFromTrustedJSONWithEventID(mine, local.GetEventJson(), false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pdu.PrevEventIDs(), []string{m1.EventID()}) {
				t.Fatalf("local event's prev_events %v, want the remote message", pdu.PrevEventIDs())
			}
			rr.Apply(pdu)
			reply := rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "reply"})
			h.inputOne(reply, accepted)

			// A gap: the remote sets a topic and sends a message; only the
			// message arrives. Its prev_events are missing, then its state
			// is supplied (the topic event fetched as an outlier).
			topic := rr.Add(ron, spec.MRoomTopic, ptr(""), map[string]any{"topic": "after the gap"})
			gap := rr.Add(ron, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "after the gap"})
			res := h.inputOne(gap, missing)
			if !slices.Equal(res.GetMissingEventIds(), []string{topic.EventID()}) {
				t.Fatalf("missing %v", res.GetMissingEventIds())
			}
			wantStatuses(t, h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUTLIER, topic)), accepted)
			req := inputReq(roomserverv1.InputKind_INPUT_KIND_NEW, gap)
			req.Events[0].HasState = true
			for _, ev := range rr.StateEvents() {
				req.Events[0].StateEventIds = append(req.Events[0].StateEventIds, ev.EventID())
			}
			wantStatuses(t, h.inputReq(req), accepted)
			if got := h.stateContent(rr.RoomID, gap.EventID(), false, spec.MRoomTopic, "", "topic"); got != "after the gap" {
				t.Fatalf("topic before the gap event %q", got)
			}
			if got := h.stateContent(rr.RoomID, "", false, spec.MRoomTopic, "", "topic"); got != "after the gap" {
				t.Fatalf("current topic %q", got)
			}
			// The reply stays an extremity: only the outlier topic event
			// refers to it.
			if ext := h.roomInfo(rr.RoomID).GetForwardExtremities(); !slices.Equal(sortedIDs(ext...), sortedIDs(gap.EventID(), reply.EventID())) {
				t.Fatalf("extremities after the gap %v", ext)
			}
			currentBefore := h.roomInfo(rr.RoomID)

			// Backfill the history before the join, newest first as
			// /backfill answers; h1's prev event is an outlier (state
			// only), so its state is supplied.
			bf := inputReq(roomserverv1.InputKind_INPUT_KIND_BACKFILL, hist[2], hist[1], hist[0])
			bf.Events[2].HasState, bf.Events[2].StateEventIds = true, stateBeforeHist
			// stateBeforeHist is the state after h3, the same as before h1
			// (messages change no state).
			wantStatuses(t, h.inputReq(bf), accepted)
			after := h.roomInfo(rr.RoomID)
			if !slices.Equal(after.GetForwardExtremities(), currentBefore.GetForwardExtremities()) || after.GetDepth() != currentBefore.GetDepth() {
				t.Fatalf("backfill moved the room: %+v, was %+v", after, currentBefore)
			}
			if got := h.stateContent(rr.RoomID, "", false, spec.MRoomTopic, "", "topic"); got != "after the gap" {
				t.Fatalf("current topic after backfill %q", got)
			}
			if got := h.stateContent(rr.RoomID, hist[1].EventID(), false, spec.MRoomName, "", "name"); got != "remote room" {
				t.Fatalf("state before a backfilled event: name %q", got)
			}
			msgs = h.waitPublished(rr.RoomID, 1+4+3)
			var tail []string
			for _, m := range msgs[5:] {
				if m.out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_BACKFILL || len(m.out.GetAddedStateEvents()) > 0 {
					t.Fatalf("backfilled %s published as %s with %d state events", m.out.GetEventId(), m.out.GetKind(),
						len(m.out.GetAddedStateEvents()))
				}
				tail = append(tail, m.out.GetEventId())
			}
			if want := []string{hist[2].EventID(), hist[1].EventID(), hist[0].EventID()}; !slices.Equal(tail, want) {
				t.Fatalf("backfill published %v, want newest first %v", tail, want)
			}
			for _, m := range msgs[1:5] {
				if m.out.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_NEW {
					t.Fatalf("%s published as %s", m.out.GetEventId(), m.out.GetKind())
				}
			}
			// Backfilling again changes nothing.
			wantStatuses(t, h.inputReq(bf), duplicate)
		})
	}
	// remote.test's signatures verified with the key its HTTPS endpoint
	// published, fetched by the key-server.
	if n := remote.KeyRequests.Load(); n == 0 {
		t.Fatal("remote.test's keys were never fetched")
	}
}

// TestFederationBadInput feeds events that must be refused, checking that
// nothing is stored wrongly.
func TestFederationBadInput(t *testing.T) {
	h := newHarness(t, nil)
	created := h.createRoom("11", "invite", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	x := h.roomInfo(roomID).GetForwardExtremities()[0]

	// carol joins an invite-only room: rejected; then an event naming the
	// rejected join in its auth events: rejected too, whatever it is.
	carolJoin := h.build(roomID, carol, spec.MRoomMember, ptr(carol), map[string]any{"membership": "join"}, []string{x}, x)
	h.inputOne(carolJoin, rejected)
	verImpl := gomatrixserverlib.MustGetRoomVersion("11")
	pe := &gomatrixserverlib.ProtoEvent{SenderID: carol, RoomID: roomID, Type: "m.room.message", PrevEvents: []string{x},
		Depth: 10, Content: mustJSON(t, map[string]any{"body": "x"}), Version: verImpl}
	st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, Filter: []*roomserverv1.StateKeyTuple{
		{Type: spec.MRoomCreate}, {Type: spec.MRoomPowerLevels}}})
	if err != nil {
		t.Fatal(err)
	}
	pe.AuthEvents = []string{carolJoin.EventID()}
	for _, e := range st.GetState() {
		pe.AuthEvents = append(pe.AuthEvents.([]string), e.GetEventId())
	}
	onRejected, err := h.svc.signer.Build(h.ctx, verImpl, pe)
	if err != nil {
		t.Fatal(err)
	}
	res := h.inputOne(onRejected, rejected)
	if res.GetReason() == "" {
		t.Fatal("no reason")
	}
	for _, id := range []string{carolJoin.EventID(), onRejected.EventID()} {
		if ev := h.event(id); ev == nil || !ev.GetRejected() {
			t.Fatalf("%s stored as %+v", id, ev)
		}
	}
	if ext := h.roomInfo(roomID).GetForwardExtremities(); !slices.Equal(ext, []string{x}) {
		t.Fatalf("extremities %v", ext)
	}
	if m := h.membership(roomID, carol); m != "" {
		t.Fatalf("carol's membership %q", m)
	}

	// A v11 event input as room version 1 (wrong format), and as 12.
	msg := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "fmt"}, []string{x}, x)
	for _, v := range []string{"1", "12", "99"} {
		r := h.inputReq(&roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{RoomVersion: v, EventJson: msg.JSON(),
			Kind: roomserverv1.InputKind_INPUT_KIND_NEW}}})[0]
		if r.GetStatus() != invalidSt {
			t.Fatalf("v11 event as version %s: %s", v, r.GetStatus())
		}
	}
	if h.event(msg.EventID()) != nil {
		t.Fatal("the wrongly versioned event was stored")
	}
	// The same event for a caller that checked it as another room's
	// (InputEvent.room_id: the federation-receiver's server ACL): refused,
	// alone and in a run.
	for _, n := range []int{1, 2} {
		req := &roomserverv1.InputEventsRequest{}
		for range n {
			req.Events = append(req.Events, &roomserverv1.InputEvent{RoomVersion: "11", EventJson: msg.JSON(),
				Kind: roomserverv1.InputKind_INPUT_KIND_NEW, RoomId: "!other:" + testServer})
		}
		for _, r := range h.inputReq(req) {
			if r.GetStatus() != invalidSt || !strings.Contains(r.GetReason(), "room ID mismatch") || r.GetEventId() != msg.EventID() {
				t.Fatalf("event checked as another room's: %s %s %s", r.GetStatus(), r.GetReason(), r.GetEventId())
			}
		}
	}
	if h.event(msg.EventID()) != nil {
		t.Fatal("the event checked as another room's was stored")
	}

	// An event of a room that does not exist.
	pe = &gomatrixserverlib.ProtoEvent{SenderID: alice, RoomID: "!nowhere:" + testServer, Type: "m.room.message",
		PrevEvents: []string{x}, AuthEvents: []string{x}, Depth: 3, Content: mustJSON(t, map[string]any{"body": "?"}), Version: verImpl}
	ghost, err := h.svc.signer.Build(h.ctx, verImpl, pe)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []roomserverv1.InputKind{roomserverv1.InputKind_INPUT_KIND_NEW, roomserverv1.InputKind_INPUT_KIND_OUTLIER,
		roomserverv1.InputKind_INPUT_KIND_BACKFILL} {
		r := h.inputReq(inputReq(kind, ghost))[0]
		if r.GetStatus() != missing || r.GetReason() != "unknown room" {
			t.Fatalf("%s event of an unknown room: %s %s", kind, r.GetStatus(), r.GetReason())
		}
	}
	if h.event(ghost.EventID()) != nil || h.roomInfo("!nowhere:"+testServer).GetRoomExists() {
		t.Fatal("an event of an unknown room was stored")
	}
	if n := h.countRows(`SELECT count(*) FROM rooms WHERE room_id = $1`, "!nowhere:"+testServer); n != 0 {
		t.Fatalf("%d room rows for the unknown room", n)
	}

	// Supplied state naming unknown events, or events of another room.
	other := h.createRoom("11", "public", map[string]int{alice: 100})
	next := h.build(roomID, alice, "m.room.message", nil, map[string]any{"body": "n"}, []string{"$unknownprev"}, x)
	req := inputReq(roomserverv1.InputKind_INPUT_KIND_NEW, next)
	req.Events[0].HasState, req.Events[0].StateEventIds = true, []string{"$unknownstate"}
	if r := h.inputReq(req)[0]; r.GetStatus() != missing || !slices.Equal(r.GetMissingEventIds(), []string{"$unknownstate"}) {
		t.Fatalf("unknown supplied state: %s %v", r.GetStatus(), r.GetMissingEventIds())
	}
	req.Events[0].StateEventIds = other.GetEventIds()
	if r := h.inputReq(req)[0]; r.GetStatus() != invalidSt {
		t.Fatalf("supplied state of another room: %s %s", r.GetStatus(), r.GetReason())
	}
	if h.event(next.EventID()) != nil {
		t.Fatal("event with bad supplied state stored")
	}
	// An unknown input kind.
	r := h.inputReq(&roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{RoomVersion: "11", EventJson: next.JSON(), Kind: 42}}})[0]
	if r.GetStatus() != invalidSt {
		t.Fatalf("unknown kind: %s", r.GetStatus())
	}
	// Only the room's own events were published.
	h.waitPublished(roomID, len(created.GetEventIds()))
}

// TestOutOfRoomInvite takes an invite of a local user into a room of
// another server, then its rejection, and checks the stub room they leave.
func TestOutOfRoomInvite(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, nil, remote)
	for _, version := range []string{"11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			h.t = t
			rr := remote.NewRoom(version, remote.User("ron"), "public")
			ron := remote.User("ron")
			pe := rr.Proto(ron, spec.MRoomMember, ptr(bob), map[string]any{"membership": "invite"})
			invite := remote.Sign(rr.Version, pe)
			// The invitee's server signs too (the federation-receiver's
			// part of /invite).
			invite, err := residentJoins{h.svc}.countersign(h.ctx, rr.Version, invite)
			if err != nil {
				t.Fatal(err)
			}
			var stripped [][]byte
			for _, k := range []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomJoinRules}, {EventType: spec.MRoomName}} {
				stripped = append(stripped, rr.State[k].JSON())
			}
			bad := inputReq(roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM, invite)
			bad.Events[0].StrippedState = stripped[1:]
			if version == "12" {
				// From v12 on the create event must be there.
				if r := h.inputReq(bad)[0]; r.GetStatus() != invalidSt {
					t.Fatalf("invite without the create event: %s", r.GetStatus())
				}
			}
			bad.Events[0].StrippedState = append([][]byte{[]byte(`{"type":"m.room.name","state_key":"","content":{"name":"forged"},"sender":"@x:y"}`)}, stripped...)
			if version == "12" {
				if r := h.inputReq(bad)[0]; r.GetStatus() != invalidSt {
					t.Fatalf("invite with a plain stripped event in v12: %s", r.GetStatus())
				}
			}
			if h.event(invite.EventID()) != nil {
				t.Fatal("refused invite stored")
			}
			req := inputReq(roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM, invite)
			req.Events[0].StrippedState = stripped
			wantStatuses(t, h.inputReq(req), accepted)
			wantStatuses(t, h.inputReq(req), duplicate)
			if info := h.roomInfo(rr.RoomID); info.GetRoomExists() {
				t.Fatalf("a room known only from an invite exists: %+v", info)
			}
			ev := h.event(invite.EventID())
			if ev == nil || !ev.GetOutlier() {
				t.Fatalf("invite stored as %+v", ev)
			}

			// The rejection: bob's leave, built on the remote's make_leave
			// template and signed here.
			leavePE := rr.Proto(bob, spec.MRoomMember, ptr(bob), map[string]any{"membership": "leave"})
			leavePE.PrevEvents = []string{invite.EventID()}
			leave, err := h.svc.signer.Build(h.ctx, rr.Version, leavePE)
			if err != nil {
				t.Fatal(err)
			}
			wantStatuses(t, h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM, leave)), accepted)

			msgs := h.waitPublished(rr.RoomID, 2)
			o := msgs[0].out
			if o.GetEventId() != invite.EventID() || o.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_OUT_OF_ROOM || len(o.GetStrippedState()) != 3 {
				t.Fatalf("invite published as %s kind %s with %d stripped events", o.GetEventId(), o.GetKind(), len(o.GetStrippedState()))
			}
			names := 0
			for _, raw := range o.GetStrippedState() {
				if c := contentOf(t, raw); c["name"] == "remote room" {
					names++
				}
			}
			if names != 1 {
				t.Fatal("the stripped state lacks the room name")
			}
			if o := msgs[1].out; o.GetEventId() != leave.EventID() || o.GetKind() != roomserverv1.OutputKind_OUTPUT_KIND_OUT_OF_ROOM {
				t.Fatalf("rejection published as %s %s", o.GetEventId(), o.GetKind())
			}

			// An out-of-room event of someone else's user, and a message.
			other := remote.Sign(rr.Version, rr.Proto(ron, spec.MRoomMember, ptr(remote.User("zed")), map[string]any{"membership": "invite"}))
			if r := h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM, other))[0]; r.GetStatus() != invalidSt {
				t.Fatalf("invite of a remote user taken: %s", r.GetStatus())
			}
			msg := remote.Sign(rr.Version, rr.Proto(ron, "m.room.message", nil, map[string]any{"body": "no"}))
			if r := h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM, msg))[0]; r.GetStatus() != invalidSt {
				t.Fatalf("message taken as out-of-room: %s", r.GetStatus())
			}

			// The room's create event fixes the stub: bob can now join
			// (send_join's answer).
			h.joinRemoteRoom(rr, alice)
			if info := h.roomInfo(rr.RoomID); !info.GetRoomExists() {
				t.Fatal("room does not exist after the join")
			}
		})
	}
}

// TestMakeMembershipTemplates checks make_join, make_leave and make_knock
// templates and refusals for remote users.
func TestMakeMembershipTemplates(t *testing.T) {
	h := newHarness(t, nil)
	remote := "remote.test"
	ron := "@ron:" + remote
	make1 := func(roomID, user, membership string, versions ...string) *roomserverv1.MakeMembershipEventResponse {
		t.Helper()
		resp, err := h.rs.MakeMembershipEvent(h.ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: roomID, UserId: user,
			Membership: membership, SupportedRoomVersions: versions, Origin: remote})
		if err != nil {
			t.Fatalf("MakeMembershipEvent: %v", err)
		}
		return resp
	}
	public := h.createRoom("11", "public", map[string]int{alice: 100})
	resp := make1(public.GetRoomId(), ron, "join", "10", "11")
	if resp.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE || resp.GetRoomVersion() != "11" {
		t.Fatalf("public room: %s %s", resp.GetRefusal(), resp.GetReason())
	}
	var tmpl struct {
		Type       string         `json:"type"`
		RoomID     string         `json:"room_id"`
		Sender     string         `json:"sender"`
		StateKey   string         `json:"state_key"`
		Content    map[string]any `json:"content"`
		PrevEvents []string       `json:"prev_events"`
		AuthEvents []string       `json:"auth_events"`
		Depth      int64          `json:"depth"`
		Origin     string         `json:"origin"`
		TS         int64          `json:"origin_server_ts"`
		Signatures any            `json:"signatures"`
	}
	if err := json.Unmarshal(resp.GetEventTemplate(), &tmpl); err != nil {
		t.Fatal(err)
	}
	info := h.roomInfo(public.GetRoomId())
	if tmpl.Type != spec.MRoomMember || tmpl.RoomID != public.GetRoomId() || tmpl.Sender != ron || tmpl.StateKey != ron ||
		tmpl.Content["membership"] != "join" || !slices.Equal(tmpl.PrevEvents, info.GetForwardExtremities()) ||
		tmpl.Depth != info.GetDepth()+1 || tmpl.Origin != testServer || tmpl.TS == 0 || tmpl.Signatures != nil {
		t.Fatalf("template %+v", tmpl)
	}
	// create, power levels, join rules (no member event for ron yet).
	if len(tmpl.AuthEvents) != 3 {
		t.Fatalf("auth events %v", tmpl.AuthEvents)
	}
	if r := make1(public.GetRoomId(), ron, "join"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_INCOMPATIBLE_ROOM_VERSION || r.GetRoomVersion() != "11" {
		t.Fatalf("no versions given (means [1]): %s", r.GetRefusal())
	}
	if r := make1(public.GetRoomId(), ron, "join", "1", "2"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_INCOMPATIBLE_ROOM_VERSION {
		t.Fatalf("incompatible: %s", r.GetRefusal())
	}
	if r := make1(public.GetRoomId(), ron, "leave"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("leave of a non-member: %s", r.GetRefusal())
	}
	if r := make1(public.GetRoomId(), ron, "knock", "11"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("knock on a public room: %s", r.GetRefusal())
	}
	if r := make1(public.GetRoomId(), "@ron:elsewhere.test", "join", "11"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("join asked for by another server: %s", r.GetRefusal())
	}
	if r := make1("!unknown:"+testServer, ron, "join", "11"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_NOT_IN_ROOM {
		t.Fatalf("unknown room: %s", r.GetRefusal())
	}
	_, err := h.rs.MakeMembershipEvent(h.ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: public.GetRoomId(), UserId: ron, Membership: "ban"})
	wantCode(t, err, codes.InvalidArgument)

	invite := h.createRoom("11", "invite", map[string]int{alice: 100})
	if r := make1(invite.GetRoomId(), ron, "join", "11"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("invite-only room: %s %s", r.GetRefusal(), r.GetReason())
	}
	knock := h.createRoom("11", "knock", map[string]int{alice: 100})
	if r := make1(knock.GetRoomId(), ron, "knock", "11"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		t.Fatalf("knock room: %s %s", r.GetRefusal(), r.GetReason())
	}

	// Restricted: this server is in none of the allowed rooms, or ron is
	// in none of those it is in.
	unknownAllowed := h.createRoom("10", "public", map[string]int{alice: 100}, stateTmpl(t, spec.MRoomJoinRules, "", map[string]any{
		"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": "!elsewhere:remote.test"}}}))
	if r := make1(unknownAllowed.GetRoomId(), ron, "join", "10"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_UNABLE_TO_AUTHORISE_JOIN {
		t.Fatalf("restricted, allowed room unknown: %s %s", r.GetRefusal(), r.GetReason())
	}
	knownAllowed := h.createRoom("10", "public", map[string]int{alice: 100}, stateTmpl(t, spec.MRoomJoinRules, "", map[string]any{
		"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": public.GetRoomId()}}}))
	if r := make1(knownAllowed.GetRoomId(), ron, "join", "10"); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("restricted, ron in no allowed room: %s %s", r.GetRefusal(), r.GetReason())
	}
}

// TestWalksAndServerVisibility checks get_missing_events and backfill on a
// hand-built graph with forks, and what a server that left may see.
func TestWalksAndServerVisibility(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, nil, remote)
	created := h.createRoom("11", "public", map[string]int{alice: 100})
	roomID := created.GetRoomId()
	x := h.mustSend(roomID, alice, message(t, "x"))
	depthOf := func(id string) int64 {
		t.Helper()
		ev := h.event(id)
		pdu, err := gomatrixserverlib.MustGetRoomVersion("11").NewEventFromTrustedJSONWithEventID(id, ev.GetEventJson(), false)
		if err != nil {
			t.Fatal(err)
		}
		return pdu.Depth()
	}
	msg := func(body string, prevs ...string) string {
		ev := h.build(roomID, alice, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body}, prevs, x)
		h.inputOne(ev, accepted)
		return ev.EventID()
	}
	a1 := msg("a1", x)
	a2 := msg("a2", a1)
	a3 := msg("a3", a2)
	b1 := msg("b1", x)
	b2 := msg("b2", b1)
	m := msg("merge", a3, b2)

	missingEvents := func(earliest, latest []string, limit int32, minDepth int64) []string {
		t.Helper()
		resp, err := h.rs.GetMissingEvents(h.ctx, &roomserverv1.GetMissingEventsRequest{RoomId: roomID, EarliestEvents: earliest,
			LatestEvents: latest, Limit: limit, MinDepth: minDepth})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		var last int64
		for _, e := range resp.GetEvents() {
			ids = append(ids, e.GetEventId())
			if d := depthOf(e.GetEventId()); d < last {
				t.Fatalf("get_missing_events not oldest first: %v", ids)
			} else {
				last = d
			}
		}
		return ids
	}
	// Breadth-first from the merge, not past a1: level 1 a3 b2, level 2
	// a2 b1, then x.
	if got := missingEvents([]string{a1}, []string{m}, 4, 0); !slices.Equal(sortedIDs(got...), sortedIDs(a3, b2, a2, b1)) {
		t.Fatalf("get_missing_events limit 4: %v", got)
	}
	if got := missingEvents([]string{a1}, []string{m}, 2, 0); !slices.Equal(sortedIDs(got...), sortedIDs(a3, b2)) {
		t.Fatalf("get_missing_events limit 2: %v", got)
	}
	// min_depth stops at b1's depth: x and earlier are not returned.
	if got := missingEvents([]string{a1}, []string{m}, 10, depthOf(b1)); !slices.Equal(sortedIDs(got...), sortedIDs(a3, b2, a2, b1)) {
		t.Fatalf("get_missing_events min_depth: %v", got)
	}
	// Without min_depth the walk goes on into the room's first events.
	if got := missingEvents([]string{a1}, []string{m}, 10, 0); len(got) != 10 || !slices.Contains(got, x) {
		t.Fatalf("get_missing_events limit 10: %v", got)
	}
	if got := missingEvents([]string{b2, a3}, []string{m}, 10, 0); len(got) != 0 {
		t.Fatalf("nothing is missing: %v", got)
	}

	backfill := func(from []string, limit int32, server string) []*roomserverv1.Event {
		t.Helper()
		resp, err := h.rs.Backfill(h.ctx, &roomserverv1.BackfillRequest{RoomId: roomID, EventIds: from, Limit: limit, ServerName: server})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetEvents()
	}
	ids := func(evs []*roomserverv1.Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.GetEventId())
		}
		return out
	}
	got := ids(backfill([]string{m}, 4, ""))
	if len(got) != 4 || got[0] != m || got[1] != a3 || !slices.Equal(sortedIDs(got[2:]...), sortedIDs(a2, b2)) {
		t.Fatalf("backfill limit 4: %v", got)
	}
	got = ids(backfill([]string{m}, 7, ""))
	if len(got) != 7 || !slices.Equal(sortedIDs(got[4:6]...), sortedIDs(a1, b1)) || got[6] != x {
		t.Fatalf("backfill limit 7: %v", got)
	}
	for i := 1; i < len(got); i++ {
		if depthOf(got[i]) > depthOf(got[i-1]) {
			t.Fatalf("backfill not highest depth first: %v", got)
		}
	}

	// Visibility for a server: ron of remote.test joins, a message, ron
	// leaves, another message; history is "shared" but remote.test has
	// nobody in the room any more.
	rv := gomatrixserverlib.MustGetRoomVersion("11")
	ron := remote.User("ron")
	remoteEvent := func(typ string, stateKey *string, content any) gomatrixserverlib.PDU {
		t.Helper()
		info := h.roomInfo(roomID)
		pe := &gomatrixserverlib.ProtoEvent{SenderID: ron, RoomID: roomID, Type: typ, StateKey: stateKey,
			PrevEvents: info.GetForwardExtremities(), Depth: info.GetDepth() + 1, Content: mustJSON(t, content)}
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
		return remote.Sign(rv, pe)
	}
	ronJoin := remoteEvent(spec.MRoomMember, &ron, map[string]any{"membership": "join"})
	h.inputOne(ronJoin, accepted)
	seen := h.mustSend(roomID, alice, message(t, "while ron is here"))
	servers, err := h.rs.QueryRoomServers(h.ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID})
	if err != nil || !slices.Equal(servers.GetServerNames(), []string{"remote.test", testServer}) {
		t.Fatalf("servers in the room: %v %v", servers.GetServerNames(), err)
	}
	ronLeave := remoteEvent(spec.MRoomMember, &ron, map[string]any{"membership": "leave"})
	h.inputOne(ronLeave, accepted)
	unseen := h.mustSend(roomID, alice, message(t, "after ron left"))
	servers, _ = h.rs.QueryRoomServers(h.ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID})
	if !slices.Equal(servers.GetServerNames(), []string{testServer}) {
		t.Fatalf("servers after ron left: %v", servers.GetServerNames())
	}
	servers, _ = h.rs.QueryRoomServers(h.ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID, EventId: ronLeave.EventID()})
	if !slices.Equal(servers.GetServerNames(), []string{"remote.test", testServer}) {
		t.Fatalf("servers at ron's leave: %v", servers.GetServerNames())
	}
	h.mustSend(roomID, alice, stateTmpl(t, spec.MRoomHistoryVisibility, "", map[string]any{"history_visibility": "world_readable"}))
	public := h.mustSend(roomID, alice, message(t, "world readable"))

	filtered, err := h.rs.FilterEventsForServer(h.ctx, &roomserverv1.FilterEventsForServerRequest{ServerName: "remote.test",
		EventIds: []string{seen, unseen, ronLeave.EventID(), public, "$unknown"}})
	if err != nil {
		t.Fatal(err)
	}
	redacted := map[string]bool{}
	for _, e := range filtered.GetEvents() {
		redacted[e.GetEventId()] = e.GetRedactedForServer()
		body, _ := contentOf(t, e.GetEventJson())["body"].(string)
		if e.GetRedactedForServer() != (body == "") && e.GetEventId() != ronLeave.EventID() {
			t.Fatalf("%s: redacted %v but body %q", e.GetEventId(), e.GetRedactedForServer(), body)
		}
	}
	want := map[string]bool{seen: false, unseen: true, ronLeave.EventID(): false, public: false}
	if len(redacted) != len(want) {
		t.Fatalf("filtered %v", redacted)
	}
	for id, r := range want {
		if redacted[id] != r {
			t.Fatalf("%s redacted for remote.test: %v, want %v", id, redacted[id], r)
		}
	}
	// The walks filter the same way.
	for _, e := range backfill([]string{unseen}, 3, "remote.test") {
		if e.GetRedactedForServer() != (e.GetEventId() == unseen) {
			t.Fatalf("backfill for remote.test: %s redacted %v", e.GetEventId(), e.GetRedactedForServer())
		}
	}
	// The server itself sees everything whole.
	for _, e := range backfill([]string{public}, 10, testServer) {
		if e.GetRedactedForServer() {
			t.Fatalf("%s redacted for the room's own server", e.GetEventId())
		}
	}
}

// TestAuthChainAndStateQueries checks /event_auth's, /state's and
// /state_ids' answers.
func TestAuthChainAndStateQueries(t *testing.T) {
	h := newHarness(t, nil)
	created := h.createRoom("11", "public", map[string]int{alice: 100, bob: 50})
	roomID := created.GetRoomId()
	join := h.mustSend(roomID, bob, member(t, bob, "join"))
	topic := h.mustSend(roomID, bob, stateTmpl(t, spec.MRoomTopic, "", map[string]any{"topic": "t"}))

	chain, err := h.rs.QueryAuthChain(h.ctx, &roomserverv1.QueryAuthChainRequest{RoomId: roomID, EventIds: []string{topic}, IdsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	// create, alice's join, power levels, join rules (of bob's join), bob's join.
	ids := chain.GetAuthChainIds()
	if len(ids) != 5 || !slices.Contains(ids, join) || !slices.Contains(ids, created.GetEventIds()[0]) || slices.Contains(ids, topic) {
		t.Fatalf("auth chain of the topic: %v", ids)
	}
	full, err := h.rs.QueryAuthChain(h.ctx, &roomserverv1.QueryAuthChainRequest{RoomId: roomID, EventIds: []string{topic}})
	if err != nil || len(full.GetAuthChain()) != 5 {
		t.Fatalf("auth chain events: %d %v", len(full.GetAuthChain()), err)
	}
	_, err = h.rs.QueryAuthChain(h.ctx, &roomserverv1.QueryAuthChainRequest{RoomId: roomID, EventIds: []string{"$unknown"}})
	wantCode(t, err, codes.NotFound)

	// The state at the topic event is the state before it.
	st, err := h.rs.QueryStateAndAuthChain(h.ctx, &roomserverv1.QueryStateAndAuthChainRequest{RoomId: roomID, EventId: topic, IdsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(st.GetStateIds(), topic) || !slices.Contains(st.GetStateIds(), join) || len(st.GetStateIds()) != 6 {
		t.Fatalf("state before the topic: %v", st.GetStateIds())
	}
	for _, id := range st.GetAuthChainIds() {
		if id == topic {
			t.Fatal("the topic is in the auth chain of the state before it")
		}
	}
	cur, err := h.rs.QueryStateAndAuthChain(h.ctx, &roomserverv1.QueryStateAndAuthChainRequest{RoomId: roomID})
	if err != nil || len(cur.GetState()) != 7 || len(cur.GetAuthChain()) == 0 || cur.GetRoomVersion() != "11" {
		t.Fatalf("current state: %d events, %d in the chain, %v", len(cur.GetState()), len(cur.GetAuthChain()), err)
	}
	_, err = h.rs.QueryStateAndAuthChain(h.ctx, &roomserverv1.QueryStateAndAuthChainRequest{RoomId: "!nope:" + testServer})
	wantCode(t, err, codes.NotFound)
}

// TestRestrictedJoinThroughThisServer has a remote user join a restricted
// room through this server: the template names an authorising local user,
// SignJoin countersigns, and the join is accepted; the spec's refusals
// when no local user may invite.
func TestRestrictedJoinThroughThisServer(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, nil, remote)
	rv := gomatrixserverlib.MustGetRoomVersion("10")
	ron := remote.User("ron")
	allowed := h.createRoom("10", "public", map[string]int{alice: 100})
	restrictedRules := func(invite int) []*roomserverv1.EventTemplate {
		return []*roomserverv1.EventTemplate{
			stateTmpl(t, spec.MRoomPowerLevels, "", map[string]any{"users": map[string]int{alice: 100}, "invite": invite,
				"state_default": 50, "events_default": 0, "ban": 50, "kick": 50, "redact": 50}),
			stateTmpl(t, spec.MRoomJoinRules, "", map[string]any{"join_rule": "restricted",
				"allow": []any{map[string]any{"type": "m.room_membership", "room_id": allowed.GetRoomId()}}}),
		}
	}
	room := h.createRoom("10", "public", map[string]int{alice: 100}, restrictedRules(50)...)
	// alice gives up her power: no local user may invite.
	noInviter := h.createRoom("10", "public", map[string]int{alice: 100}, append(restrictedRules(50),
		stateTmpl(t, spec.MRoomPowerLevels, "", map[string]any{"users": map[string]int{alice: 40}, "invite": 50,
			"state_default": 50, "events_default": 0, "ban": 50, "kick": 50, "redact": 50}))...)

	makeJoin := func(roomID string) *roomserverv1.MakeMembershipEventResponse {
		t.Helper()
		resp, err := h.rs.MakeMembershipEvent(h.ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: roomID, UserId: ron,
			Membership: "join", SupportedRoomVersions: []string{"10"}, Origin: "remote.test"})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// ron is in no allowed room yet.
	if r := makeJoin(room.GetRoomId()); r.GetRefusal() != roomserverv1.Refusal_REFUSAL_FORBIDDEN {
		t.Fatalf("before joining the allowed room: %s %s", r.GetRefusal(), r.GetReason())
	}
	// ron joins the allowed (public) room through this server.
	fromTemplate := func(resp *roomserverv1.MakeMembershipEventResponse, content map[string]any) gomatrixserverlib.PDU {
		t.Helper()
		var tmpl struct {
			RoomID     string         `json:"room_id"`
			Content    map[string]any `json:"content"`
			PrevEvents []string       `json:"prev_events"`
			AuthEvents []string       `json:"auth_events"`
			Depth      int64          `json:"depth"`
		}
		if err := json.Unmarshal(resp.GetEventTemplate(), &tmpl); err != nil {
			t.Fatal(err)
		}
		if content == nil {
			content = tmpl.Content
		}
		return remote.Sign(rv, &gomatrixserverlib.ProtoEvent{SenderID: ron, RoomID: tmpl.RoomID, Type: spec.MRoomMember,
			StateKey: &ron, PrevEvents: tmpl.PrevEvents, AuthEvents: tmpl.AuthEvents, Depth: tmpl.Depth, Content: mustJSON(t, content)})
	}
	signAndInput := func(roomID string, ev gomatrixserverlib.PDU) *roomserverv1.SignJoinResponse {
		t.Helper()
		signed, err := h.rs.SignJoin(h.ctx, &roomserverv1.SignJoinRequest{RoomId: roomID, EventJson: ev.JSON()})
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}
	resp := makeJoin(allowed.GetRoomId())
	if resp.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		t.Fatalf("public room: %s", resp.GetRefusal())
	}
	s := signAndInput(allowed.GetRoomId(), fromTemplate(resp, nil))
	joined, err := rv.NewEventFromUntrustedJSON(s.GetEventJson())
	if err != nil {
		t.Fatal(err)
	}
	h.inputOne(joined, accepted)

	// Now the restricted room: alice authorises.
	resp = makeJoin(room.GetRoomId())
	if resp.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		t.Fatalf("restricted room: %s %s", resp.GetRefusal(), resp.GetReason())
	}
	if c := contentOf(t, resp.GetEventTemplate()); c["join_authorised_via_users_server"] != alice {
		t.Fatalf("template content %v, want alice as the authorising user", c)
	}
	join := fromTemplate(resp, nil)
	// Without this server's signature the join does not verify.
	h.inputOne(join, invalidSt)
	s = signAndInput(room.GetRoomId(), join)
	if s.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE || s.GetEventId() != join.EventID() {
		t.Fatalf("SignJoin: %s %s (%s)", s.GetRefusal(), s.GetReason(), s.GetEventId())
	}
	signed, err := rv.NewEventFromUntrustedJSON(s.GetEventJson())
	if err != nil {
		t.Fatal(err)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(h.ctx, signed, h.svc.verifier, userIDForSender); err != nil {
		t.Fatalf("signed join does not verify: %v", err)
	}
	h.inputOne(signed, accepted)
	if m := h.membership(room.GetRoomId(), ron); m != "join" {
		t.Fatalf("ron's membership %q", m)
	}

	// Naming bob (not joined) as the authoriser: refused.
	resp = makeJoin(noInviter.GetRoomId())
	if resp.GetRefusal() != roomserverv1.Refusal_REFUSAL_UNABLE_TO_GRANT_JOIN {
		t.Fatalf("no local user may invite: %s %s", resp.GetRefusal(), resp.GetReason())
	}
	info := h.roomInfo(noInviter.GetRoomId())
	forged := remote.Sign(rv, &gomatrixserverlib.ProtoEvent{SenderID: ron, RoomID: noInviter.GetRoomId(), Type: spec.MRoomMember,
		StateKey: &ron, PrevEvents: info.GetForwardExtremities(), AuthEvents: []string{}, Depth: info.GetDepth() + 1,
		Content: mustJSON(t, map[string]any{"membership": "join", "join_authorised_via_users_server": bob})})
	if s := signAndInput(noInviter.GetRoomId(), forged); s.GetRefusal() != roomserverv1.Refusal_REFUSAL_UNABLE_TO_GRANT_JOIN {
		t.Fatalf("SignJoin naming bob: %s %s", s.GetRefusal(), s.GetReason())
	}
	// Not a join at all.
	leave := remote.Sign(rv, &gomatrixserverlib.ProtoEvent{SenderID: ron, RoomID: room.GetRoomId(), Type: spec.MRoomMember,
		StateKey: &ron, PrevEvents: info.GetForwardExtremities(), AuthEvents: []string{}, Depth: 5,
		Content: mustJSON(t, map[string]any{"membership": "leave"})})
	_, err = h.rs.SignJoin(h.ctx, &roomserverv1.SignJoinRequest{RoomId: room.GetRoomId(), EventJson: leave.JSON()})
	wantCode(t, err, codes.InvalidArgument)
}

// TestOutlierRun: a run of outliers is looked up once and stored in one
// transaction; each event still gets its own result: an event stored
// before is a duplicate, as is the same event twice in the run, an event
// its auth events refuse is rejected, and so is an event whose auth
// events include it, while the others are accepted.
func TestOutlierRun(t *testing.T) {
	remote := newRemote(t, "remote.test")
	h := newHarness(t, nil, remote)
	rr := remote.NewRoom("11", remote.User("ron"), "public")
	ron, rita := remote.User("ron"), remote.User("rita")
	empty := ""
	early := slices.Clone(rr.Applied) // create, ron's join, power levels, join rules, history, name
	wantStatuses(t, h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUTLIER, early...)), accepted)

	join := rr.Add(rita, spec.MRoomMember, &rita, map[string]any{"membership": "join"})
	// Rita (power 0) may not change the power levels.
	refused := remote.Sign(rr.Version, rr.Proto(rita, spec.MRoomPowerLevels, &empty, map[string]any{"users": map[string]any{rita: 100}}))
	// A topic by ron that names the refused power levels as its auth event.
	pe := rr.Proto(ron, spec.MRoomTopic, &empty, map[string]any{"topic": "on refused power"})
	pe.AuthEvents = []string{early[0].EventID(), early[1].EventID(), refused.EventID()}
	onRefused := remote.Sign(rr.Version, pe)
	topic := rr.Add(ron, spec.MRoomTopic, &empty, map[string]any{"topic": "fine"})

	run := []gomatrixserverlib.PDU{onRefused, early[1], join, topic, refused, join}
	res := h.inputReq(inputReq(roomserverv1.InputKind_INPUT_KIND_OUTLIER, run...))
	want := map[string]roomserverv1.InputStatus{
		early[1].EventID():  roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE,
		join.EventID():      roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED,
		topic.EventID():     roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED,
		refused.EventID():   roomserverv1.InputStatus_INPUT_STATUS_REJECTED,
		onRefused.EventID(): roomserverv1.InputStatus_INPUT_STATUS_REJECTED,
	}
	if len(res) != len(run) {
		t.Fatalf("%d results for %d events", len(res), len(run))
	}
	for i, r := range res {
		if i == 2 || i == 5 {
			continue // the join twice: below
		}
		if w := want[run[i].EventID()]; r.GetStatus() != w {
			t.Errorf("event %d (%s): %s %s, want %s", i, run[i].Type(), r.GetStatus(), r.GetReason(), w)
		}
	}
	// The join given twice: stored once (whichever comes first in
	// dependency order), the other a duplicate.
	joins := []roomserverv1.InputStatus{res[2].GetStatus(), res[5].GetStatus()}
	slices.Sort(joins)
	if want := []roomserverv1.InputStatus{roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED, roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE}; !slices.Equal(joins, want) {
		t.Errorf("the join given twice: %v, want one accepted, one duplicate", joins)
	}
	// The run's events are stored, as outliers, with their verdicts.
	for id, st := range want {
		ev := h.event(id)
		if ev == nil || !ev.GetOutlier() || ev.GetRejected() != (st == roomserverv1.InputStatus_INPUT_STATUS_REJECTED) {
			t.Errorf("%s stored as %+v", id, ev)
		}
	}
}
