package fedreceiver

// Remote memberships: make_join/send_join (v1, v2; restricted joins signed
// by the room-server's SignJoin), make_leave/send_leave (v1, v2),
// make_knock/send_knock, and invites of this server's users (v1, v2).
// Templates and the resident server's checks are the room-server's
// (MakeMembershipEvent, SignJoin); the request checks are
// gomatrixserverlib's where it has them (HandleSendJoin, HandleInvite).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// memberships serves the membership handshakes (make_*, send_*, invite),
// on the receiver's dependencies.
type memberships struct {
	*Service
}

// refusalError turns the room-server's refusal into the spec's error.
func refusalError(r roomserverv1.Refusal, reason, version string) error {
	switch r {
	case roomserverv1.Refusal_REFUSAL_NOT_IN_ROOM:
		return matrixhttp.NotFound(reason)
	case roomserverv1.Refusal_REFUSAL_INCOMPATIBLE_ROOM_VERSION:
		e := matrixhttp.Errorf(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "%s", reason)
		e.Extra = map[string]any{"room_version": version}
		return e
	case roomserverv1.Refusal_REFUSAL_UNABLE_TO_AUTHORISE_JOIN:
		return matrixhttp.Errorf(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN", "%s", reason)
	case roomserverv1.Refusal_REFUSAL_UNABLE_TO_GRANT_JOIN:
		return matrixhttp.Errorf(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN", "%s", reason)
	}
	return matrixhttp.Forbidden(reason)
}

// makeMembership answers make_join, make_leave and make_knock.
func (s *memberships) makeMembership(r *http.Request, membership string) (any, error) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		return nil, err
	}
	userID, err := pathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return nil, matrixhttp.InvalidParam("Invalid user ID")
	}
	if u.Domain() != origin {
		return nil, matrixhttp.Forbidden("The user is not of the requesting server")
	}
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return nil, err
	}
	resp, err := s.rooms.MakeMembershipEvent(ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: roomID, UserId: userID,
		Membership: membership, SupportedRoomVersions: r.URL.Query()["ver"], Origin: string(origin)})
	if err != nil {
		return nil, err
	}
	if resp.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		return nil, refusalError(resp.GetRefusal(), resp.GetReason(), resp.GetRoomVersion())
	}
	return map[string]any{"room_version": resp.GetRoomVersion(), "event": json.RawMessage(resp.GetEventTemplate())}, nil
}

func (s *memberships) serveMakeJoin(r *http.Request) (any, error) {
	return s.makeMembership(r, spec.Join)
}
func (s *memberships) serveMakeLeave(r *http.Request) (any, error) {
	return s.makeMembership(r, spec.Leave)
}
func (s *memberships) serveMakeKnock(r *http.Request) (any, error) {
	return s.makeMembership(r, spec.Knock)
}

// membershipRequest is a send_join/send_leave/send_knock/invite's path
// and room, checked.
type membershipRequest struct {
	origin  spec.ServerName
	roomID  string
	eventID string
	verImpl gomatrixserverlib.IRoomVersion
}

// residentRequest reads a send_* request for a room this server is in.
func (s *memberships) residentRequest(r *http.Request) (*membershipRequest, error) {
	ctx := r.Context()
	mr := &membershipRequest{origin: federation.Origin(ctx)}
	var err error
	if mr.roomID, err = pathParam(r, "roomId"); err != nil {
		return nil, err
	}
	if mr.eventID, err = pathParam(r, "eventId"); err != nil {
		return nil, err
	}
	if err := s.checkACL(ctx, mr.roomID, mr.origin); err != nil {
		return nil, err
	}
	info, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: mr.roomID})
	if err != nil {
		return nil, err
	}
	if !info.GetRoomExists() {
		return nil, matrixhttp.NotFound("This server is not in the room")
	}
	if mr.verImpl, err = gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion())); err != nil {
		return nil, matrixhttp.NotFound("Unknown room version")
	}
	return mr, nil
}

// parseMembershipEvent reads a send_leave/send_knock body: the membership
// event of a user of the origin, of this room, with the path's event ID.
// Errors are the spec's M_INVALID_PARAM (M_BAD_JSON when unparseable).
func (s *memberships) parseMembershipEvent(mr *membershipRequest, body []byte, membership string) (gomatrixserverlib.PDU, error) {
	ev, err := parsePDU(mr.verImpl, body)
	if err != nil {
		return nil, matrixhttp.BadJSON("Invalid event: " + err.Error())
	}
	m, _ := ev.Membership()
	sender, serr := spec.NewUserID(string(ev.SenderID()), true)
	switch {
	case ev.Type() != spec.MRoomMember:
		return nil, matrixhttp.InvalidParam("The event is not an m.room.member event")
	case m != membership:
		return nil, matrixhttp.InvalidParam(fmt.Sprintf("The membership is %q, not %q", m, membership))
	case !ev.StateKeyEquals(string(ev.SenderID())):
		return nil, matrixhttp.InvalidParam("The state_key is not the sender")
	case serr != nil || sender.Domain() != mr.origin:
		return nil, matrixhttp.InvalidParam("The sender is not a user of the requesting server")
	case ev.RoomID().String() != mr.roomID:
		return nil, matrixhttp.InvalidParam("The event is not of the room in the path")
	case ev.EventID() != mr.eventID:
		return nil, matrixhttp.InvalidParam("The event ID is not the one in the path")
	}
	return ev, nil
}

// inputMembership inputs a membership event of the room graph and turns
// the outcome into the spec's errors.
func (s *memberships) inputMembership(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, raw []byte) error {
	res, err := s.inputNew(ctx, verImpl, raw, "", nil, false)
	if err != nil {
		return err
	}
	switch res.GetStatus() {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED, roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE:
		return nil
	case roomserverv1.InputStatus_INPUT_STATUS_REJECTED, roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		return matrixhttp.Forbidden("The event is not allowed: " + res.GetReason())
	case roomserverv1.InputStatus_INPUT_STATUS_MISSING_EVENTS:
		return matrixhttp.InvalidParam("The event refers to events this server does not have (build it from the template)")
	}
	return matrixhttp.InvalidParam("Invalid event: " + res.GetReason())
}

// sendJoin answers send_join (v1 and v2 differ only in the response's
// wrapping).
func (s *memberships) sendJoin(r *http.Request) (*fclient.RespSendJoin, error) {
	ctx := r.Context()
	mr, err := s.residentRequest(r)
	if err != nil {
		return nil, err
	}
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	id, err := s.client.Identity(ctx)
	if err != nil {
		return nil, err
	}
	roomID, err := spec.NewRoomID(mr.roomID)
	if err != nil {
		return nil, matrixhttp.InvalidParam("Invalid room ID")
	}
	// gomatrixserverlib's request checks: event format, state key and
	// sender, the sender's server is the origin, room and event IDs,
	// membership join, the origin's signature, an authorising user of
	// this server. Its signature is not the one kept: SignJoin signs
	// after the resident checks (bans, restricted rooms).
	_, err = gomatrixserverlib.HandleSendJoin(gomatrixserverlib.HandleSendJoinInput{
		Context: ctx, RoomID: *roomID, EventID: mr.eventID, JoinEvent: body, RoomVersion: mr.verImpl.Version(),
		RequestOrigin: mr.origin, LocalServerName: s.server, KeyID: id.KeyID, PrivateKey: id.PrivateKey,
		Verifier: s.verifier, MembershipQuerier: noMembership{}, UserIDQuerier: userIDForSender,
		StoreSenderIDFromPublicID: func(context.Context, spec.SenderID, string, spec.RoomID) error { return nil },
	})
	if err != nil {
		return nil, invalidParam(err)
	}
	if _, err := parsePDU(mr.verImpl, body); err != nil {
		return nil, matrixhttp.BadJSON("Invalid event: " + err.Error())
	}
	signed, err := s.rooms.SignJoin(ctx, &roomserverv1.SignJoinRequest{RoomId: mr.roomID, EventJson: body})
	if err != nil {
		return nil, err
	}
	if signed.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		return nil, refusalError(signed.GetRefusal(), signed.GetReason(), string(mr.verImpl.Version()))
	}
	if err := s.inputMembership(ctx, mr.verImpl, signed.GetEventJson()); err != nil {
		return nil, err
	}
	st, err := s.rooms.QueryStateAndAuthChain(ctx, &roomserverv1.QueryStateAndAuthChainRequest{RoomId: mr.roomID, EventId: signed.GetEventId()})
	if err != nil {
		return nil, err
	}
	resp := &fclient.RespSendJoin{Origin: s.server, Event: signed.GetEventJson()}
	for _, e := range st.GetState() {
		resp.StateEvents = append(resp.StateEvents, e.GetEventJson())
	}
	for _, e := range st.GetAuthChain() {
		resp.AuthEvents = append(resp.AuthEvents, e.GetEventJson())
	}
	return resp, nil
}

// serveSendJoinV1 answers with the v1 form [200, {...}].
func (s *memberships) serveSendJoinV1(r *http.Request) (any, error) {
	resp, err := s.sendJoin(r)
	if err != nil {
		return nil, err
	}
	return []any{200, resp}, nil
}

// serveSendJoinV2 answers with the full state (omit_members is an
// optional reduction this server does not make).
func (s *memberships) serveSendJoinV2(r *http.Request) (any, error) { return s.sendJoin(r) }

// noMembership lets HandleSendJoin's ban check pass: the room-server's
// SignJoin makes it against the current state (403).
type noMembership struct{}

func (noMembership) CurrentMembership(context.Context, spec.RoomID, spec.SenderID) (string, error) {
	return "", nil
}

// userIDForSender: sender IDs are user IDs in every supported version.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// invalidParam turns gomatrixserverlib's request errors into the spec's
// M_INVALID_PARAM (send_join: "servers SHOULD return M_INVALID_PARAM").
func invalidParam(err error) error {
	var me spec.MatrixError
	if errors.As(err, &me) {
		return matrixhttp.InvalidParam(me.Err)
	}
	var ie spec.InternalServerError
	if errors.As(err, &ie) {
		return err
	}
	return matrixhttp.InvalidParam(err.Error())
}

// sendLeaveOrKnock inputs a leave or knock from send_leave/send_knock.
func (s *memberships) sendLeaveOrKnock(r *http.Request, membership string) (*membershipRequest, error) {
	mr, err := s.residentRequest(r)
	if err != nil {
		return nil, err
	}
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	ev, err := s.parseMembershipEvent(mr, body, membership)
	if err != nil {
		return nil, err
	}
	return mr, s.inputMembership(r.Context(), mr.verImpl, ev.JSON())
}

// serveSendLeaveV1 answers [200, {}].
func (s *memberships) serveSendLeaveV1(r *http.Request) (any, error) {
	if _, err := s.sendLeaveOrKnock(r, spec.Leave); err != nil {
		return nil, err
	}
	return []any{200, struct{}{}}, nil
}

func (s *memberships) serveSendLeaveV2(r *http.Request) (any, error) {
	if _, err := s.sendLeaveOrKnock(r, spec.Leave); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// strippedTypes are the state events knock_room_state (and generated
// invite_room_state) carry: the spec's recommendation.
var strippedTypes = []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName, "m.room.avatar", spec.MRoomCanonicalAlias,
	"m.room.encryption", "m.room.topic"}

// serveSendKnock answers with the room's knock_room_state: full PDUs of
// those state events, as room versions from 12 on require.
func (s *memberships) serveSendKnock(r *http.Request) (any, error) {
	mr, err := s.sendLeaveOrKnock(r, spec.Knock)
	if err != nil {
		return nil, err
	}
	filter := make([]*roomserverv1.StateKeyTuple, len(strippedTypes))
	for i, t := range strippedTypes {
		filter[i] = &roomserverv1.StateKeyTuple{Type: t}
	}
	st, err := s.rooms.QueryState(r.Context(), &roomserverv1.QueryStateRequest{RoomId: mr.roomID, Filter: filter})
	if err != nil {
		return nil, err
	}
	return map[string]any{"knock_room_state": rawEvents(st.GetState())}, nil
}

// inviteBody is the v2 invite request.
type inviteBody struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

func (s *memberships) serveInviteV1(r *http.Request) (any, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	// v1 is for rooms of versions 1 and 2, whose events carry their ID;
	// the invite_room_state is in the event's unsigned.
	var u struct {
		Unsigned struct {
			InviteRoomState []json.RawMessage `json:"invite_room_state"`
		} `json:"unsigned"`
	}
	_ = json.Unmarshal(body, &u)
	version := string(gomatrixserverlib.RoomVersionV1)
	roomID, _ := pathParam(r, "roomId")
	if info, err := s.rooms.QueryRoomInfo(r.Context(), &roomserverv1.QueryRoomInfoRequest{RoomId: roomID}); err == nil && info.GetRoomExists() {
		version = info.GetRoomVersion()
	}
	signed, err := s.invite(r, inviteBody{RoomVersion: version, Event: body, InviteRoomState: u.Unsigned.InviteRoomState})
	if err != nil {
		return nil, err
	}
	return []any{200, map[string]any{"event": signed}}, nil
}

func (s *memberships) serveInviteV2(r *http.Request) (any, error) {
	var body inviteBody
	if _, err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.RoomVersion == "" || len(body.Event) == 0 {
		return nil, matrixhttp.BadJSON("room_version and event are required")
	}
	signed, err := s.invite(r, body)
	if err != nil {
		return nil, err
	}
	return map[string]any{"event": signed}, nil
}

// invite checks an invite of a local user, signs it with this server's
// key (gomatrixserverlib's HandleInvite) and stores it through the
// room-server as an out-of-room membership (the user sees it in /sync
// with its stripped state).
func (s *memberships) invite(r *http.Request, body inviteBody) (json.RawMessage, error) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	roomIDStr, err := pathParam(r, "roomId")
	if err != nil {
		return nil, err
	}
	eventID, err := pathParam(r, "eventId")
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(body.RoomVersion))
	if err != nil {
		e := matrixhttp.Errorf(http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION", "Room version %q is not supported", body.RoomVersion)
		e.Extra = map[string]any{"room_version": body.RoomVersion}
		return nil, e
	}
	ev, err := parsePDU(verImpl, body.Event)
	if err != nil {
		return nil, matrixhttp.BadJSON("Invalid event: " + err.Error())
	}
	m, _ := ev.Membership()
	switch {
	case ev.Type() != spec.MRoomMember || m != spec.Invite || ev.StateKey() == nil:
		return nil, matrixhttp.InvalidParam("The event is not an invite")
	case ev.EventID() != eventID:
		return nil, matrixhttp.InvalidParam("The event ID is not the one in the path")
	case ev.RoomID().String() != roomIDStr:
		return nil, matrixhttp.InvalidParam("The event is not of the room in the path")
	}
	sender, err := spec.NewUserID(string(ev.SenderID()), true)
	if err != nil || sender.Domain() != origin {
		return nil, matrixhttp.Forbidden("The inviter is not a user of the requesting server")
	}
	invitee, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil || invitee.Domain() != s.server {
		return nil, matrixhttp.InvalidParam("The invitee is not a user of this server")
	}
	if _, err := s.users.QueryProfile(ctx, &clientapiv1.QueryProfileRequest{UserId: invitee.String()}); err != nil {
		return nil, err // NOT_FOUND: no such user
	}
	if err := s.checkACL(ctx, roomIDStr, origin); err != nil {
		return nil, err
	}
	if verImpl.Version() == gomatrixserverlib.RoomVersionV12 && !hasCreateEvent(body.InviteRoomState) {
		return nil, matrixhttp.MissingParam("invite_room_state must hold the room's m.room.create event")
	}
	for _, st := range body.InviteRoomState {
		if err := checkNoDuplicateKeys(st); err != nil {
			return nil, matrixhttp.BadJSON("invite_room_state: " + err.Error())
		}
	}
	id, err := s.client.Identity(ctx)
	if err != nil {
		return nil, err
	}
	roomID := ev.RoomID()
	// The stripped state goes to the room-server as given (it checks
	// each entry); HandleInvite needs it only to put it in unsigned.
	stripped := make([]gomatrixserverlib.InviteStrippedState, 0, len(body.InviteRoomState))
	for _, raw := range body.InviteRoomState {
		var st gomatrixserverlib.InviteStrippedState
		if json.Unmarshal(raw, &st) == nil {
			stripped = append(stripped, st)
		}
	}
	q := &roomQuerier{s: s.Service}
	signedEv, err := gomatrixserverlib.HandleInvite(ctx, gomatrixserverlib.HandleInviteInput{
		RoomID: roomID, RoomVersion: verImpl.Version(), InvitedUser: *invitee, InvitedSenderID: spec.SenderID(invitee.String()),
		InviteEvent: ev, StrippedState: stripped, KeyID: id.KeyID, PrivateKey: id.PrivateKey, Verifier: s.verifier,
		RoomQuerier: q, MembershipQuerier: q, StateQuerier: q, UserIDQuerier: userIDForSender,
	})
	if err != nil {
		return nil, err
	}
	res, err := s.rooms.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{
		RoomVersion: string(verImpl.Version()), EventJson: signedEv.JSON(), Kind: roomserverv1.InputKind_INPUT_KIND_OUT_OF_ROOM,
		StrippedState: rawBytes(body.InviteRoomState),
	}}})
	if err != nil {
		return nil, err
	}
	if len(res.GetResults()) != 1 {
		return nil, fmt.Errorf("InputEvents: %d results", len(res.GetResults()))
	}
	switch rr := res.GetResults()[0]; rr.GetStatus() {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED, roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE:
	case roomserverv1.InputStatus_INPUT_STATUS_REJECTED, roomserverv1.InputStatus_INPUT_STATUS_SOFT_FAILED:
		return nil, matrixhttp.Forbidden("The invite is not allowed: " + rr.GetReason())
	default:
		return nil, matrixhttp.InvalidParam("Invalid invite: " + rr.GetReason())
	}
	return signedEv.JSON(), nil
}

func rawBytes(list []json.RawMessage) [][]byte {
	out := make([][]byte, len(list))
	for i, r := range list {
		out[i] = r
	}
	return out
}

// hasCreateEvent: one of the stripped state entries is m.room.create.
func hasCreateEvent(list []json.RawMessage) bool {
	for _, raw := range list {
		var e struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Type == spec.MRoomCreate {
			return true
		}
	}
	return false
}

// roomQuerier answers HandleInvite's questions from the room-server.
type roomQuerier struct{ s *Service }

func (q *roomQuerier) IsKnownRoom(ctx context.Context, roomID spec.RoomID) (bool, error) {
	info, err := q.s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: roomID.String()})
	if err != nil {
		return false, err
	}
	return info.GetRoomExists(), nil
}

func (q *roomQuerier) CurrentMembership(ctx context.Context, roomID spec.RoomID, senderID spec.SenderID) (string, error) {
	m, err := q.s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID.String(), UserId: string(senderID)})
	if err != nil {
		return "", err
	}
	return m.GetMembership(), nil
}

func (q *roomQuerier) GetAuthEvents(context.Context, gomatrixserverlib.PDU) (gomatrixserverlib.AuthEventProvider, error) {
	return nil, errors.New("not used for invites")
}

// GetState returns the current state events of the wanted keys (the
// invite's stripped state when the inviting server sent none).
func (q *roomQuerier) GetState(ctx context.Context, roomID spec.RoomID, want []gomatrixserverlib.StateKeyTuple) ([]gomatrixserverlib.PDU, error) {
	filter := make([]*roomserverv1.StateKeyTuple, len(want))
	for i, t := range want {
		filter[i] = &roomserverv1.StateKeyTuple{Type: t.EventType, StateKey: t.StateKey}
	}
	st, err := q.s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID.String(), Filter: filter})
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(st.GetRoomVersion()))
	if err != nil {
		return nil, nil
	}
	var out []gomatrixserverlib.PDU
	for _, e := range st.GetState() {
		if ev, err := verImpl.NewEventFromTrustedJSONWithEventID(e.GetEventId(), e.GetEventJson(), false); err == nil {
			out = append(out, ev)
		}
	}
	return out, nil
}
