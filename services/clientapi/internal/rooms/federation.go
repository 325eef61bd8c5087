package rooms

// Membership through other servers: joins, knocks and leaves of rooms this
// server is not in go through the federation sender (make_join/send_join,
// make_knock/send_knock, make_leave/send_leave), which hands the event to
// the room-server; the client's request returns once the client-API's copy
// has it, as for a local membership. Remote aliases are asked of the
// alias's server.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Federation is the federation sender's API. Nil when federation is off:
// then only rooms, aliases and users of this server are reachable.
type Federation = fedsenderv1.FederationSenderServiceClient

// fromRemote converts a federation sender error (httpapi.FromRemote).
func (s *base) fromRemote(ctx context.Context, op string, err error) error {
	return httpapi.FromRemote(ctx, s.log, op, err)
}

// serverOf is the server name of a user, room or alias ID ("" when it has
// none, as room IDs of version 12).
func serverOf(id string) string {
	_, server, ok := strings.Cut(id, ":")
	if !ok {
		return ""
	}
	return server
}

// isRemote reports whether id (a user ID or alias) belongs to another server.
func (s *base) isRemote(id string) bool {
	server := serverOf(id)
	return server != "" && server != s.serverName
}

// lookupAlias resolves an alias to a room ID and servers in the room:
// this server's aliases from the room-server (or the application service
// whose namespace holds it), others' from their server (federation's
// directory query).
func (s *base) lookupAlias(ctx context.Context, alias string) (string, []string, error) {
	if _, _, err := parseAlias(alias); err != nil {
		return "", nil, err
	}
	if s.isRemote(alias) {
		if s.fed == nil {
			return "", nil, matrixhttp.NotFound("Room alias " + alias + " not found (federation is disabled)")
		}
		resp, err := s.fed.QueryDirectory(ctx, &fedsenderv1.QueryDirectoryRequest{RoomAlias: alias})
		if err != nil {
			return "", nil, s.fromRemote(ctx, "QueryDirectory", err)
		}
		return resp.GetRoomId(), resp.GetServers(), nil
	}
	resp, err := s.resolveAlias(ctx, alias) // appservices are asked about aliases in their namespaces
	if err != nil {
		return "", nil, err
	}
	if resp.GetRoomId() == "" {
		return "", nil, matrixhttp.NotFound("Room alias " + alias + " not found")
	}
	servers := resp.GetServers()
	if len(servers) == 0 {
		servers = []string{s.serverName}
	}
	return resp.GetRoomId(), servers, nil
}

// resolveTarget turns a {roomIdOrAlias} path parameter into a room ID and
// the servers to ask when this server is not in the room: the request's
// via (and the deprecated server_name) first, then the alias's servers,
// then the room ID's server.
func (s *base) resolveTarget(r *http.Request, target string) (string, []string, error) {
	q := r.URL.Query()
	servers := append(q["via"], q["server_name"]...)
	roomID := target
	switch {
	case strings.HasPrefix(target, "#"):
		id, aliasServers, err := s.lookupAlias(r.Context(), target)
		if err != nil {
			return "", nil, err
		}
		roomID = id
		servers = append(servers, aliasServers...)
	case strings.HasPrefix(target, "!"):
		if _, err := spec.NewRoomID(target); err != nil {
			return "", nil, matrixhttp.InvalidParam("Invalid room ID")
		}
	default:
		return "", nil, matrixhttp.InvalidParam("Expected a room ID or a room alias")
	}
	if server := serverOf(roomID); server != "" {
		servers = append(servers, server)
	}
	return roomID, s.otherServers(servers), nil
}

// otherServers keeps the valid server names other than this one, each once,
// in order.
func (s *base) otherServers(servers []string) []string {
	var out []string
	for _, name := range servers {
		if name == "" || name == s.serverName || slices.Contains(out, name) {
			continue
		}
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name)); !ok {
			continue
		}
		out = append(out, name)
	}
	return out
}

// inRoom reports whether this server is in the room: a local user is
// joined to it in the room-server's current state. A room this server only
// knows from an invite or a knock (an out-of-room membership) is not.
func (s *base) inRoom(ctx context.Context, roomID string) (bool, error) {
	resp, err := s.rooms.QueryRoomServers(ctx, &roomserverv1.QueryRoomServersRequest{RoomId: roomID})
	if err != nil {
		return false, s.fromGRPC(ctx, "QueryRoomServers", err, nil)
	}
	return resp.GetRoomExists() && slices.Contains(resp.GetServerNames(), s.serverName), nil
}

// throughRemote reports whether a local user's membership change of the
// room must go through another server: federation is on and this server is
// not in the room.
func (s *base) throughRemote(ctx context.Context, roomID string) (bool, error) {
	if s.fed == nil {
		return false, nil
	}
	in, err := s.inRoom(ctx, roomID)
	return !in, err
}

// remoteJoinTimeout bounds a join through other servers: make_join and
// send_join with each server in turn, and storing the room's state (tens
// of thousands of events in a large room).
const remoteJoinTimeout = 5 * time.Minute

// join makes the device's user join the room: through the room-server
// when this server is in the room, otherwise through the given servers
// (PerformJoin, which tries each in turn).
func (s *Rooms) join(r *http.Request, dev *httpapi.Device, roomID string, servers []string, reason string) error {
	remote, err := s.throughRemote(r.Context(), roomID)
	if err != nil {
		return err
	}
	if !remote || len(servers) == 0 {
		// This server is in the room, or there is no other server to
		// ask (a room of this server every member left): the
		// room-server decides (404 for a room it does not know).
		return s.setMembership(r, dev, roomID, dev.UserID, store.MembershipJoin, reason)
	}
	content, err := s.ownMembershipContent(r, dev, roomID, store.MembershipJoin, reason)
	if err != nil {
		return err
	}
	// A large room's state takes a while to fetch, check and store: more
	// than a gRPC call's default deadline.
	ctx, cancel := context.WithTimeout(r.Context(), remoteJoinTimeout)
	defer cancel()
	resp, err := s.fed.PerformJoin(ctx, &fedsenderv1.PerformJoinRequest{RoomId: roomID, UserId: dev.UserID, ServerNames: servers, Content: content})
	if err != nil {
		return s.fromRemote(r.Context(), "PerformJoin", err)
	}
	return s.notifier.AwaitStored(r.Context(), resp.GetEventId(), true)
}

// ownMembershipContent is the content of the user's own membership event
// (with their profile on a join), as JSON.
func (s *Rooms) ownMembershipContent(r *http.Request, dev *httpapi.Device, roomID, membership, reason string) ([]byte, error) {
	return s.membershipContent(r, dev, roomID, dev.UserID, membership, reason)
}

// membershipContent is the content of target's membership event sent by
// the device's user (with the user's profile on their own join), as JSON.
func (s *Rooms) membershipContent(r *http.Request, dev *httpapi.Device, roomID, target, membership, reason string) ([]byte, error) {
	content := map[string]any{"membership": membership}
	if reason != "" {
		content["reason"] = reason
	}
	if err := s.users.Profiles.BeforeOwnMembership(r.Context(), dev, roomID, target, membership, content); err != nil {
		return nil, err
	}
	return json.Marshal(content)
}

// knockRemote knocks on a room of other servers (PerformKnock); with no
// other server to ask, the room-server decides.
func (s *Rooms) knockRemote(r *http.Request, dev *httpapi.Device, roomID string, servers []string, reason string) error {
	if len(servers) == 0 {
		return s.setMembership(r, dev, roomID, dev.UserID, store.MembershipKnock, reason)
	}
	content, err := s.ownMembershipContent(r, dev, roomID, store.MembershipKnock, reason)
	if err != nil {
		return err
	}
	resp, err := s.fed.PerformKnock(r.Context(), &fedsenderv1.PerformKnockRequest{RoomId: roomID, UserId: dev.UserID, ServerNames: servers, Content: content})
	if err != nil {
		return s.fromRemote(r.Context(), "PerformKnock", err)
	}
	return s.awaitMembership(r.Context(), resp.GetEventId(), resp.GetInputStatus())
}

// leaveRemote makes the user leave a room this server is not in: rejecting
// an invite or retracting a knock, through the server of the user who
// invited (or the room's servers the knock went through) and the room ID's
// server (PerformLeave). A user with no membership has nothing to leave.
func (s *Rooms) leaveRemote(r *http.Request, dev *httpapi.Device, roomID, reason string) error {
	// The room-server holds an invite or knock of a room this server is
	// not in as an outlier, outside any room state: the client-API's copy
	// has the user's membership.
	m, err := s.store.Reader().Membership(r.Context(), dev.UserID, roomID)
	if errors.Is(err, store.ErrNotFound) {
		return matrixhttp.Forbidden(dev.UserID + " is not in room " + roomID)
	}
	if err != nil {
		return err
	}
	switch m.Membership {
	case store.MembershipInvite, store.MembershipKnock:
	case store.MembershipJoin:
		// Joined, yet no local user is in the room's current state: the
		// room-server's own view decides (it refuses or applies).
		return s.setMembership(r, dev, roomID, dev.UserID, store.MembershipLeave, reason)
	default:
		return matrixhttp.Forbidden(dev.UserID + " is not in room " + roomID)
	}
	var servers []string
	evs, err := s.rooms.QueryEvents(r.Context(), &roomserverv1.QueryEventsRequest{EventIds: []string{m.EventID}})
	if err != nil {
		return s.fromGRPC(r.Context(), "QueryEvents", err, nil)
	}
	for _, ev := range evs.GetEvents() {
		var e struct {
			Sender string `json:"sender"`
			Origin string `json:"origin"`
		}
		if json.Unmarshal(ev.GetEventJson(), &e) == nil {
			servers = append(servers, serverOf(e.Sender), e.Origin)
		}
	}
	servers = s.otherServers(append(append(servers, r.URL.Query()["via"]...), serverOf(roomID)))
	if len(servers) == 0 {
		return matrixhttp.NotFound("No known servers to leave " + roomID + " through")
	}
	content, err := s.ownMembershipContent(r, dev, roomID, store.MembershipLeave, reason)
	if err != nil {
		return err
	}
	resp, err := s.fed.PerformLeave(r.Context(), &fedsenderv1.PerformLeaveRequest{RoomId: roomID, UserId: dev.UserID, ServerNames: servers, Content: content})
	if err != nil {
		return s.fromRemote(r.Context(), "PerformLeave", err)
	}
	return s.awaitMembership(r.Context(), resp.GetEventId(), resp.GetInputStatus())
}

// awaitMembership waits until the client-API's copy has a membership
// event the federation sender handed to the room-server, when the
// room-server took it (published it); a duplicate is not waited for.
func (s *Rooms) awaitMembership(ctx context.Context, eventID, inputStatus string) error {
	switch inputStatus {
	case roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED.String():
		return s.notifier.AwaitStored(ctx, eventID, true)
	case roomserverv1.InputStatus_INPUT_STATUS_DUPLICATE.String():
		return nil
	}
	s.log.Warn("membership through another server not taken by the room-server", zap.String("event_id", eventID), zap.String("status", inputStatus))
	return httpapi.UnknownError(http.StatusBadGateway, "The room-server did not take the membership event ("+inputStatus+")")
}
