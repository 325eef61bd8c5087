package fedsender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"maunium.net/go/mautrix/id"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// wantStatus checks a call's gRPC code and, when errcode is set, the
// remote's errcode in the ErrorInfo detail.
func wantStatus(t *testing.T, err error, code codes.Code, errcode string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("code %s (%v), want %s", st.Code(), err, code)
	}
	if errcode == "" {
		return
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == "matrix.remote" {
			if info.GetReason() != errcode {
				t.Fatalf("errcode %s, want %s", info.GetReason(), errcode)
			}
			return
		}
	}
	t.Fatalf("no ErrorInfo with the remote's errcode in %v", err)
}

// PerformJoin joins a remote room in each room version family: the
// room-server ends up with the room's state and the local user joined,
// and a message sent locally reaches the remote.
func TestPerformJoinEachRoomVersion(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}})
	ctx := context.Background()
	r1 := e.remotes["r1.test"]
	fs := e.senderClient()
	for _, version := range []string{"1", "2", "5", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			alice := e.user("alice" + version)
			rr := r1.newRoom(version, "public")
			resp, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rr.roomID, UserId: userIDOf(alice),
				ServerNames: []string{r1.name}, Content: []byte(`{"displayname":"Alice"}`)})
			if err != nil {
				t.Fatalf("PerformJoin: %v", err)
			}
			if resp.GetRoomVersion() != version || resp.GetServerName() != r1.name {
				t.Fatalf("joined %s through %s", resp.GetRoomVersion(), resp.GetServerName())
			}
			m, err := e.rs.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: rr.roomID, UserId: userIDOf(alice)})
			if err != nil || m.GetMembership() != "join" || m.GetEvent().GetEventId() != resp.GetEventId() {
				t.Fatalf("membership after the join: %v %v", err, m)
			}
			st, err := e.rs.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: rr.roomID,
				Filter: []*roomserverv1.StateKeyTuple{{Type: "m.room.name"}, {Type: "m.room.member", StateKey: rr.creator}}})
			if err != nil || len(st.GetState()) != 2 {
				t.Fatalf("the room's state: %v %v", err, st)
			}
			// The join's content came through.
			var join struct {
				Content map[string]any `json:"content"`
			}
			_ = json.Unmarshal(m.GetEvent().GetEventJson(), &join)
			if join.Content["displayname"] != "Alice" || join.Content["membership"] != "join" {
				t.Fatalf("join content %v", join.Content)
			}
			// A local message reaches the remote.
			msg := send(t, alice, id.RoomID(rr.roomID), 1, "hello remote")
			eventually(t, func() error {
				for _, p := range r1.received(rr.roomID) {
					if p.eventID == msg[0] {
						return nil
					}
				}
				return fmt.Errorf("r1 has not got the message")
			})
		})
	}
	if _, _, authFailures := r1.stats(); authFailures != 0 {
		t.Errorf("%d requests failed X-Matrix verification", authFailures)
	}
}

// PerformJoin tries the servers in order, falls back to send_join v1, and
// joins restricted rooms through a server that signs the join; failures
// become clear statuses.
func TestPerformJoinFailoverAndFailures(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test", "r3.test"}})
	ctx := context.Background()
	r1, r2, r3 := e.remotes["r1.test"], e.remotes["r2.test"], e.remotes["r3.test"]
	fs := e.senderClient()
	alice := e.user("alice")
	rr := r1.newRoom("10", "public")

	// r2 is down, r3 does not know the room: r1 is the third to ask.
	r2.down()
	resp, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rr.roomID, UserId: userIDOf(alice),
		ServerNames: []string{r2.name, r3.name, ourName, r1.name}})
	if err != nil || resp.GetServerName() != r1.name {
		t.Fatalf("PerformJoin with fail-over: %v %v", resp, err)
	}

	// send_join v2 unknown: v1.
	bob := e.user("bob")
	rv1 := r1.newRoom("11", "public")
	r1.mu.Lock()
	r1.noV2 = true
	r1.mu.Unlock()
	if _, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rv1.roomID, UserId: userIDOf(bob), ServerNames: []string{r1.name}}); err != nil {
		t.Fatalf("PerformJoin through send_join v1: %v", err)
	}
	if r1.called("/_matrix/federation/v1/send_join/{roomID}/{eventID}") != 1 {
		t.Fatal("send_join v1 was not used")
	}
	r1.mu.Lock()
	r1.noV2 = false
	r1.mu.Unlock()

	// A restricted room: r1 authorises the join (its signature is on it).
	carol := e.user("carol")
	allowed := r1.newRoom("10", "public")
	restricted := r1.newRoom("10", "restricted", allowed.roomID)
	if _, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: allowed.roomID, UserId: userIDOf(carol), ServerNames: []string{r1.name}}); err != nil {
		t.Fatal(err)
	}
	jr, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: restricted.roomID, UserId: userIDOf(carol), ServerNames: []string{r1.name}})
	if err != nil {
		t.Fatalf("restricted join: %v", err)
	}
	m, err := e.rs.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: restricted.roomID, UserId: userIDOf(carol)})
	if err != nil || m.GetMembership() != "join" || m.GetEvent().GetEventId() != jr.GetEventId() {
		t.Fatalf("restricted membership: %v %v", err, m)
	}
	if !signedByServer(m.GetEvent().GetEventJson(), r1.name) {
		t.Fatal("the restricted join does not carry the authorising server's signature")
	}

	// The room refuses: PermissionDenied with its errcode.
	dave := e.user("dave")
	closed := r1.newRoom("10", "invite")
	r1.mu.Lock()
	r1.refuse["/_matrix/federation/v1/make_join/"+closed.roomID] = refusal{http.StatusForbidden, "M_FORBIDDEN"}
	r1.mu.Unlock()
	_, err = fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: closed.roomID, UserId: userIDOf(dave), ServerNames: []string{r2.name, r1.name}})
	wantStatus(t, err, codes.PermissionDenied, "M_FORBIDDEN")

	// No server reachable: Unavailable.
	_, err = fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: closed.roomID, UserId: userIDOf(dave), ServerNames: []string{r2.name}})
	wantStatus(t, err, codes.Unavailable, "")
	// Not in the room anywhere: NotFound with M_NOT_FOUND.
	_, err = fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: "!nowhere:r3.test", UserId: userIDOf(dave), ServerNames: []string{r3.name}})
	wantStatus(t, err, codes.NotFound, "M_NOT_FOUND")
	// Bad requests.
	for _, req := range []*fedsenderv1.PerformJoinRequest{
		{RoomId: rr.roomID, UserId: "@someone:elsewhere.test", ServerNames: []string{r1.name}},
		{RoomId: "not a room", UserId: userIDOf(dave), ServerNames: []string{r1.name}},
		{RoomId: rr.roomID, UserId: userIDOf(dave), ServerNames: []string{ourName}},
		{RoomId: rr.roomID, UserId: userIDOf(dave), ServerNames: []string{r1.name}, Content: []byte(`[1]`)},
	} {
		_, err := fs.PerformJoin(ctx, req)
		wantStatus(t, err, codes.InvalidArgument, "")
	}
	// A server answering garbage: Unavailable, and the next one is asked.
	r3.mu.Lock()
	r3.garbage = append(r3.garbage, "/_matrix/federation/v1/make_join/")
	r3.mu.Unlock()
	if _, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rr.roomID, UserId: userIDOf(dave), ServerNames: []string{r3.name}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("join through a server with a bad answer: %v", err)
	}
	if resp, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: rr.roomID, UserId: userIDOf(dave), ServerNames: []string{r3.name, r1.name}}); err != nil || resp.GetServerName() != r1.name {
		t.Fatalf("fail-over after a bad answer: %v %v", resp, err)
	}
}

// signedByServer reports whether a PDU carries a signature of server.
func signedByServer(raw []byte, server string) bool {
	var ev struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	return json.Unmarshal(raw, &ev) == nil && len(ev.Signatures[server]) > 0
}

// PerformInvite signs the invite here, has the invitee's server sign it
// and returns it with both signatures; the room-server takes it.
func TestPerformInvite(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test", "r2.test"}})
	ctx := context.Background()
	r1, r2 := e.remotes["r1.test"], e.remotes["r2.test"]
	fs := e.senderClient()
	alice := e.user("alice")
	room := e.room(alice)
	invitee := r1.user("rita")

	pe, version := e.inviteTemplate(room, userIDOf(alice), invitee)
	resp, err := fs.PerformInvite(ctx, &fedsenderv1.PerformInviteRequest{RoomVersion: version, ProtoEvent: pe,
		InviteRoomState: [][]byte{[]byte(`{"type":"m.room.name","state_key":"","sender":"` + userIDOf(alice) + `","content":{"name":"x"}}`)}})
	if err != nil {
		t.Fatalf("PerformInvite: %v", err)
	}
	if !signedByServer(resp.GetEventJson(), ourName) || !signedByServer(resp.GetEventJson(), r1.name) {
		t.Fatalf("invite signatures: %s", resp.GetEventJson())
	}
	if r1.called("invite_room_state") != 1 {
		t.Fatal("the invite_room_state did not reach the invitee's server")
	}
	in, err := e.rs.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{RoomVersion: version,
		EventJson: resp.GetEventJson(), Kind: roomserverv1.InputKind_INPUT_KIND_NEW}}})
	if err != nil || in.GetResults()[0].GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED {
		t.Fatalf("input the invite: %v %v", err, in.GetResults())
	}
	m, err := e.rs.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: room.String(), UserId: invitee})
	if err != nil || m.GetMembership() != "invite" {
		t.Fatalf("invitee's membership: %v %v", err, m)
	}

	// The invitee's server refuses: PermissionDenied with its errcode.
	r2.mu.Lock()
	r2.refuse["/_matrix/federation/v2/invite/"] = refusal{http.StatusForbidden, "M_FORBIDDEN"}
	r2.mu.Unlock()
	pe2, _ := e.inviteTemplate(room, userIDOf(alice), r2.user("rob"))
	_, err = fs.PerformInvite(ctx, &fedsenderv1.PerformInviteRequest{RoomVersion: version, ProtoEvent: pe2})
	wantStatus(t, err, codes.PermissionDenied, "M_FORBIDDEN")

	// It changes the invite: refused as a bad answer.
	r1.mu.Lock()
	r1.tamperInvites = true
	r1.mu.Unlock()
	pe3, _ := e.inviteTemplate(room, userIDOf(alice), r1.user("ron"))
	_, err = fs.PerformInvite(ctx, &fedsenderv1.PerformInviteRequest{RoomVersion: version, ProtoEvent: pe3})
	wantStatus(t, err, codes.Unavailable, "")

	// Bad requests: a local invitee, not an invite, both or no event.
	bob := e.user("bob")
	local, _ := e.inviteTemplate(room, userIDOf(alice), userIDOf(bob))
	for _, req := range []*fedsenderv1.PerformInviteRequest{
		{RoomVersion: version, ProtoEvent: local},
		{RoomVersion: version},
		{RoomVersion: version, ProtoEvent: pe2, EventJson: resp.GetEventJson()},
		{RoomVersion: "99", ProtoEvent: pe2},
		{RoomVersion: version, ProtoEvent: []byte(`{"type":"m.room.message"`)},
	} {
		_, err := fs.PerformInvite(ctx, req)
		wantStatus(t, err, codes.InvalidArgument, "")
	}
}

// inviteTemplate is the proto-event of an invite in a local room, as the
// client-API will build it: on the room's forward extremities with the
// auth events the rules need.
func (e *env) inviteTemplate(room id.RoomID, sender, invitee string) ([]byte, string) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	info, err := e.rs.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: room.String()})
	if err != nil {
		t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion()))
	st, err := e.rs.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: room.String()})
	if err != nil {
		t.Fatal(err)
	}
	var state []gomatrixserverlib.PDU
	for _, ev := range st.GetState() {
		pdu, err := verImpl.NewEventFromTrustedJSON(ev.GetEventJson(), false)
		if err != nil {
			t.Fatal(err)
		}
		state = append(state, pdu)
	}
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: room.String(), Type: spec.MRoomMember, StateKey: &invitee,
		PrevEvents: info.GetForwardExtremities(), Depth: info.GetDepth() + 1, Content: []byte(`{"membership":"invite"}`)}
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	pe.AuthEvents = eb.AuthEvents
	raw, err := json.Marshal(pe)
	if err != nil {
		t.Fatal(err)
	}
	return raw, info.GetRoomVersion()
}

// PerformLeave rejects an invite to a room this server is not in
// (OUT_OF_ROOM) and leaves a room it is in (NEW); PerformKnock knocks and
// keeps the knock_room_state; refusals keep their errcodes.
func TestPerformLeaveAndKnock(t *testing.T) {
	e := newEnv(t, envOpts{remotes: []string{"r1.test"}})
	ctx := context.Background()
	r1 := e.remotes["r1.test"]
	fs := e.senderClient()
	alice := e.user("alice")

	// Rejecting an invite: alice is invited to a room of r1's.
	invited := r1.newRoom("10", "invite")
	aliceID := userIDOf(alice)
	r1.send(invited, invited.creator, spec.MRoomMember, &aliceID, map[string]any{"membership": "invite"})
	lr, err := fs.PerformLeave(ctx, &fedsenderv1.PerformLeaveRequest{RoomId: invited.roomID, UserId: aliceID, ServerNames: []string{r1.name}})
	if err != nil {
		t.Fatalf("PerformLeave: %v", err)
	}
	if lr.GetInputStatus() != roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED.String() {
		t.Fatalf("the rejection's input: %s", lr.GetInputStatus())
	}
	if last := invited.last; last.EventID() != lr.GetEventId() {
		t.Fatalf("r1 did not take the leave")
	}

	// Leaving a joined room through r1: the leave joins the graph here.
	joined := r1.newRoom("11", "public")
	if _, err := fs.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: joined.roomID, UserId: aliceID, ServerNames: []string{r1.name}}); err != nil {
		t.Fatal(err)
	}
	lr, err = fs.PerformLeave(ctx, &fedsenderv1.PerformLeaveRequest{RoomId: joined.roomID, UserId: aliceID, ServerNames: []string{r1.name},
		Content: []byte(`{"reason":"bye"}`)})
	if err != nil {
		t.Fatalf("PerformLeave of a joined room: %v", err)
	}
	m, err := e.rs.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: joined.roomID, UserId: aliceID})
	if err != nil || m.GetMembership() != "leave" || m.GetEvent().GetEventId() != lr.GetEventId() {
		t.Fatalf("membership after leaving: %v %v (%s)", err, m, lr.GetInputStatus())
	}

	// Knocking, in versions 7+ with the knock join rule.
	for _, version := range []string{"7", "12"} {
		knockable := r1.newRoom(version, "knock")
		bob := e.user("bob" + version)
		kr, err := fs.PerformKnock(ctx, &fedsenderv1.PerformKnockRequest{RoomId: knockable.roomID, UserId: userIDOf(bob),
			ServerNames: []string{r1.name}, Content: []byte(`{"reason":"let me in"}`)})
		if err != nil {
			t.Fatalf("v%s PerformKnock: %v", version, err)
		}
		if kr.GetInputStatus() != roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED.String() || len(kr.GetKnockRoomState()) < 2 || kr.GetRoomVersion() != version {
			t.Fatalf("v%s knock: %v", version, kr)
		}
		if knockable.last.EventID() != kr.GetEventId() {
			t.Fatalf("v%s: r1 did not take the knock", version)
		}
	}
	// A room version without knocking: the remote's errcode.
	old := r1.newRoom("6", "invite")
	_, err = fs.PerformKnock(ctx, &fedsenderv1.PerformKnockRequest{RoomId: old.roomID, UserId: aliceID, ServerNames: []string{r1.name}})
	wantStatus(t, err, codes.FailedPrecondition, "M_INCOMPATIBLE_ROOM_VERSION")
	// make_leave refused.
	r1.mu.Lock()
	r1.refuse["/_matrix/federation/v1/make_leave/"] = refusal{http.StatusForbidden, "M_FORBIDDEN"}
	r1.mu.Unlock()
	_, err = fs.PerformLeave(ctx, &fedsenderv1.PerformLeaveRequest{RoomId: old.roomID, UserId: aliceID, ServerNames: []string{r1.name}})
	wantStatus(t, err, codes.PermissionDenied, "M_FORBIDDEN")
	_, err = fs.PerformLeave(ctx, &fedsenderv1.PerformLeaveRequest{RoomId: old.roomID, UserId: "@x:r1.test", ServerNames: []string{r1.name}})
	wantStatus(t, err, codes.InvalidArgument, "")
	_, err = fs.PerformKnock(ctx, &fedsenderv1.PerformKnockRequest{RoomId: old.roomID, UserId: aliceID})
	wantStatus(t, err, codes.InvalidArgument, "")
}
