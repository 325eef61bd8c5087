package rooms

// Membership endpoints beyond join/invite/leave (rooms.go): kick, ban,
// unban, knock and forget. Each writes one m.room.member event through the
// room-server, whose auth rules enforce join rules and power levels; a
// refusal comes back as PERMISSION_DENIED and reaches the client as
// M_FORBIDDEN (httpapi.FromGRPC).

import (
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// targetRequest reads the body of kick, ban and unban.
func targetRequest(r *http.Request) (membershipRequest, error) {
	var req membershipRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return req, err
	}
	if req.UserID == "" {
		return req, matrixhttp.BadJSON("user_id is required")
	}
	if _, err := spec.NewUserID(req.UserID, true); err != nil {
		return req, matrixhttp.InvalidParam("Invalid user ID")
	}
	return req, nil
}

// kick is POST /rooms/{roomId}/kick: the target's membership becomes leave.
// The spec refuses the kick of a user who is not currently in the room
// (joined, invited or knocking; kicking a knock rejects it) with 403,
// although the auth rules would allow the event.
func (s *Rooms) kick(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	req, err := targetRequest(r)
	if err != nil {
		return nil, err
	}
	m, err := s.rooms.QueryMembership(r.Context(), &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: req.UserID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryMembership", err, nil)
	}
	if !m.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	switch m.GetMembership() {
	case store.MembershipJoin, store.MembershipInvite, store.MembershipKnock:
	default:
		return nil, matrixhttp.Forbidden(req.UserID + " is not in the room")
	}
	return struct{}{}, s.setMembership(r, dev, roomID, req.UserID, store.MembershipLeave, req.Reason)
}

// ban is POST /rooms/{roomId}/ban.
func (s *Rooms) ban(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	req, err := targetRequest(r)
	if err != nil {
		return nil, err
	}
	return struct{}{}, s.setMembership(r, dev, roomID, req.UserID, store.MembershipBan, req.Reason)
}

// unban is POST /rooms/{roomId}/unban. An unban is a leave event for a
// banned user; for anyone else the same event would be a kick, so it is
// refused.
func (s *Rooms) unban(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	req, err := targetRequest(r)
	if err != nil {
		return nil, err
	}
	m, err := s.rooms.QueryMembership(r.Context(), &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: req.UserID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryMembership", err, nil)
	}
	if !m.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	if m.GetMembership() != store.MembershipBan {
		return nil, matrixhttp.Forbidden(req.UserID + " is not banned from the room")
	}
	return struct{}{}, s.setMembership(r, dev, roomID, req.UserID, store.MembershipLeave, req.Reason)
}

// resolveRoomIDOrAlias turns a {roomIdOrAlias} path parameter into a room
// ID (a remote alias is asked of its server).
func (s *Rooms) resolveRoomIDOrAlias(r *http.Request, target string) (string, error) {
	roomID, _, err := s.resolveTarget(r, target)
	return roomID, err
}

// knock is POST /knock/{roomIdOrAlias}: through the room-server when this
// server is in the room, otherwise through the via (server_name) servers,
// the alias's servers and the room ID's server. A room whose join rule is
// not knock (or knock_restricted) refuses the event: M_FORBIDDEN.
func (s *Rooms) knock(r *http.Request, dev *httpapi.Device) (any, error) {
	target, err := httpapi.PathParam(r, "roomIdOrAlias")
	if err != nil {
		return nil, err
	}
	var req membershipRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	roomID, servers, err := s.resolveTarget(r, target)
	if err != nil {
		return nil, err
	}
	remote, err := s.throughRemote(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	if remote {
		err = s.knockRemote(r, dev, roomID, servers, req.Reason)
	} else {
		err = s.setMembership(r, dev, roomID, dev.UserID, store.MembershipKnock, req.Reason)
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// forget is POST /rooms/{roomId}/forget. The user must have left (or been
// banned); the room then leaves their /sync and their history access. The
// forgotten membership event is recorded, so the client-API's copy, which
// may still be catching up with the leave, hides the room once it arrives,
// and a later membership change brings the room back.
func (s *Rooms) forget(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	m, err := s.rooms.QueryMembership(r.Context(), &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: dev.UserID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryMembership", err, nil)
	}
	switch m.GetMembership() {
	case store.MembershipJoin, store.MembershipInvite, store.MembershipKnock:
		return nil, httpapi.UnknownError(http.StatusBadRequest, "User "+dev.UserID+" is in room "+roomID)
	case "":
		// Never a member (or unknown room): nothing to forget.
		return struct{}{}, nil
	}
	if err := s.store.Forget(r.Context(), dev.UserID, roomID, m.GetEvent().GetEventId()); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
