package rooms

// Invites of users of other servers. The invitee's server must sign the
// invite before it joins the room (the spec's /invite), so the event is
// built here on the room's current state (gomatrixserverlib's event
// builder: prev_events are the room's forward extremities, auth_events
// what the auth rules need), signed and sent by the federation sender
// (PerformInvite, with the room's stripped state), and the invite signed
// by both servers goes to the room-server as a new event.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// maxInvitePrevEvents bounds the prev_events of an invite built here.
const maxInvitePrevEvents = 10

// strippedStateTypes are the state events an invitee's server gets with an
// invite (the spec's recommended invite_room_state), with the inviter's
// membership.
var strippedStateTypes = []string{
	spec.MRoomCreate, spec.MRoomJoinRules, "m.room.name", "m.room.avatar", "m.room.canonical_alias",
	"m.room.encryption", "m.room.topic",
}

// inviteRemote is POST /rooms/{roomId}/invite of a user of another server.
func (s *Rooms) inviteRemote(r *http.Request, dev *httpapi.Device, roomID, invitee, reason string) error {
	raw, err := s.membershipContent(r, dev, roomID, invitee, store.MembershipInvite, reason)
	if err != nil {
		return err
	}
	return s.sendRemoteInvite(r.Context(), dev.UserID, roomID, invitee, raw)
}

// sendRemoteInvite invites a user of another server with the invite's
// content (JSON).
func (s *Rooms) sendRemoteInvite(ctx context.Context, inviter, roomID, invitee string, raw []byte) error {
	info, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: roomID})
	if err != nil {
		return s.fromGRPC(ctx, "QueryRoomInfo", err, nil)
	}
	if !info.GetRoomExists() || len(info.GetForwardExtremities()) == 0 {
		return matrixhttp.NotFound("Room not found")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion()))
	if err != nil {
		return httpapi.UnsupportedRoomVersion("Unknown room version " + info.GetRoomVersion())
	}
	prevs := info.GetForwardExtremities()
	if len(prevs) > maxInvitePrevEvents {
		prevs = prevs[:maxInvitePrevEvents]
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: inviter, RoomID: roomID, Type: spec.MRoomMember, StateKey: &invitee,
		Content: raw, PrevEvents: prevs, Depth: info.GetDepth() + 1, Version: verImpl,
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(pe)
	if err != nil {
		return matrixhttp.BadJSON(err.Error())
	}
	var filter []*roomserverv1.StateKeyTuple
	for _, tup := range needed.Tuples() {
		filter = append(filter, &roomserverv1.StateKeyTuple{Type: tup.EventType, StateKey: tup.StateKey})
	}
	for _, typ := range strippedStateTypes {
		filter = append(filter, &roomserverv1.StateKeyTuple{Type: typ})
	}
	filter = append(filter, &roomserverv1.StateKeyTuple{Type: spec.MRoomMember, StateKey: inviter})
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, Filter: filter})
	if err != nil {
		return s.fromGRPC(ctx, "QueryState", err, nil)
	}
	var pdus []gomatrixserverlib.PDU
	var inviteState [][]byte
	for _, ev := range st.GetState() {
		pdu, err := clientevent.ParsePDU(info.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return err
		}
		pdus = append(pdus, pdu)
		if stripped, ok := strippedFor(info.GetRoomVersion(), pdu, inviter); ok {
			inviteState = append(inviteState, stripped)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return err
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		return matrixhttp.Forbidden("Cannot invite: " + err.Error())
	}
	pe.AuthEvents = eb.AuthEvents
	proto, err := json.Marshal(pe)
	if err != nil {
		return err
	}
	if err := inviteAllowed(verImpl, pe, provider); err != nil {
		return err
	}
	resp, err := s.fed.PerformInvite(ctx, &fedsenderv1.PerformInviteRequest{
		RoomVersion: info.GetRoomVersion(), ProtoEvent: proto, InviteRoomState: inviteState,
	})
	if err != nil {
		return s.fromRemote(ctx, "PerformInvite", err)
	}
	in, err := s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{
		RoomVersion: info.GetRoomVersion(), EventJson: resp.GetEventJson(), Kind: roomserverv1.InputKind_INPUT_KIND_NEW,
	}}})
	if err != nil {
		return s.fromGRPC(ctx, "InputEvents", err, nil)
	}
	res := in.GetResults()
	if len(res) != 1 {
		return matrixhttp.Unknown("The room-server gave no verdict on the invite")
	}
	switch res[0].GetStatus() {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED:
		return s.notifier.AwaitStored(ctx, resp.GetEventId(), true)
	case roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE:
		return nil
	case roomserverv1.InputStatus_INPUT_STATUS_REJECTED, roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		return matrixhttp.Forbidden("The invite is not allowed: " + res[0].GetReason())
	}
	return matrixhttp.Unknown("The room-server did not take the invite: " + res[0].GetStatus().String() + " " + res[0].GetReason())
}

// strippedFor is an event's entry in invite_room_state: the stripped
// event (type, state_key, sender, content), or from room version 12 the
// whole PDU, for the types the invitee's server is told about and the
// inviter's membership.
func strippedFor(roomVersion string, pdu gomatrixserverlib.PDU, inviter string) ([]byte, bool) {
	keep := pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil && *pdu.StateKey() == inviter
	for _, typ := range strippedStateTypes {
		keep = keep || (pdu.Type() == typ && pdu.StateKeyEquals(""))
	}
	if !keep {
		return nil, false
	}
	if roomVersion == "12" {
		return pdu.JSON(), true
	}
	raw, err := json.Marshal(map[string]any{
		"type": pdu.Type(), "state_key": *pdu.StateKey(), "sender": string(pdu.SenderID()), "content": json.RawMessage(pdu.Content()),
	})
	return raw, err == nil
}

// takeRemoteInvites removes the invites of other servers' users from a
// new room's initial events (they need their server's signature, which a
// room being created cannot get) and returns them, to be sent once the
// room exists. Without federation they stay (the room-server's rules
// apply as before).
func (s *Rooms) takeRemoteInvites(plan *roomPlan) []*roomserverv1.EventTemplate {
	if s.fed == nil {
		return nil
	}
	var remote []*roomserverv1.EventTemplate
	kept := plan.Events[:0]
	for _, ev := range plan.Events {
		var c struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(ev.GetContent(), &c)
		if ev.GetType() == spec.MRoomMember && ev.StateKey != nil && s.isRemote(ev.GetStateKey()) && c.Membership == spec.Invite {
			remote = append(remote, ev)
			continue
		}
		kept = append(kept, ev)
	}
	plan.Events = kept
	return remote
}

// inviteAllowed runs the room version's auth rules on the invite before
// the invitee's server is asked to sign it (an invite the room-server
// would reject must not reach another server): the event is built on a
// copy of pe and signed with a throwaway key, as the auth rules read no
// signature.
func inviteAllowed(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent, provider gomatrixserverlib.AuthEventProvider) (err error) {
	_, probeKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	sender, err := spec.NewUserID(pe.SenderID, true)
	if err != nil {
		return matrixhttp.BadJSON("Invalid inviter")
	}
	probe := *pe
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&probe).Build(time.Now(), sender.Domain(), "ed25519:probe", probeKey)
	if err != nil {
		return matrixhttp.BadJSON("Cannot build the invite: " + err.Error())
	}
	defer func() {
		// gomatrixserverlib can panic on malformed content: a refusal too.
		if r := recover(); r != nil {
			err = matrixhttp.Forbidden(fmt.Sprintf("The invite is not allowed: %v", r))
		}
	}()
	if err := gomatrixserverlib.Allowed(ev, provider, func(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
		return senderID.ToUserID(), nil
	}); err != nil {
		return matrixhttp.Forbidden("The invite is not allowed: " + err.Error())
	}
	return nil
}
