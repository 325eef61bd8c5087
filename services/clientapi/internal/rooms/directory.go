package rooms

// Aliases and the published room directory. The room-server owns both
// (alias table, room_directory table); the public room list's names,
// topics and member counts come from the client-API's own current_state
// copy, which is fed from JetStream.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/roomdir"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// deleteAlias is DELETE /directory/room/{roomAlias}. Allowed for the
// alias's creator and for users who may change the room's canonical alias
// (there are no server admins yet).
func (s *Directory) deleteAlias(r *http.Request, dev *httpapi.Device) (any, error) {
	alias, err := httpapi.PathParam(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	if _, _, err := parseAlias(alias); err != nil {
		return nil, err
	}
	ctx := r.Context()
	resp, err := s.rooms.GetRoomAlias(ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil {
		return nil, s.fromGRPC(ctx, "GetRoomAlias", err, nil)
	}
	if resp.GetRoomId() == "" {
		return nil, matrixhttp.NotFound("Room alias " + alias + " not found")
	}
	// The creator, server admins (as in Synapse; the spec allows extra
	// rules) and members with power over the canonical alias may delete.
	if resp.GetCreator() != dev.UserID && !dev.IsAdmin {
		allowed, err := s.mayManageRoomListing(r, dev, resp.GetRoomId())
		if err != nil {
			return nil, err
		}
		if !allowed {
			return nil, matrixhttp.Forbidden("You may not delete this alias")
		}
	}
	removed, err := s.rooms.RemoveRoomAlias(ctx, &roomserverv1.RemoveRoomAliasRequest{Alias: alias})
	if err != nil {
		return nil, s.fromGRPC(ctx, "RemoveRoomAlias", err, nil)
	}
	if !removed.GetRemoved() {
		return nil, matrixhttp.NotFound("Room alias " + alias + " not found")
	}
	s.dropFromCanonicalAlias(r, dev, resp.GetRoomId(), alias)
	return struct{}{}, nil
}

// dropFromCanonicalAlias removes a deleted alias from the room's
// m.room.canonical_alias (alias and alt_aliases), as Synapse does, so the
// room does not advertise an alias that no longer resolves. It is sent as
// the deleting user; when they lack the power, the event stays as it is.
func (s *Directory) dropFromCanonicalAlias(r *http.Request, dev *httpapi.Device, roomID, alias string) {
	// The room-server's current state, not the client-API's copy, which
	// may not have the latest canonical alias event yet.
	resp, err := s.rooms.QueryState(r.Context(), &roomserverv1.QueryStateRequest{
		RoomId: roomID,
		Filter: []*roomserverv1.StateKeyTuple{{Type: spec.MRoomCanonicalAlias, StateKey: ""}},
	})
	if err != nil || len(resp.GetState()) == 0 {
		return
	}
	pdu, err := clientevent.ParsePDU(resp.GetState()[0].GetRoomVersion(), resp.GetState()[0].GetEventJson())
	if err != nil || pdu.Type() != spec.MRoomCanonicalAlias {
		return
	}
	var content map[string]any
	if json.Unmarshal(pdu.Content(), &content) != nil || content == nil {
		return
	}
	changed := false
	if content["alias"] == alias {
		delete(content, "alias")
		changed = true
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		kept := slices.DeleteFunc(slices.Clone(alts), func(a any) bool { return a == alias })
		if len(kept) != len(alts) {
			content["alt_aliases"] = kept
			changed = true
		}
	}
	if !changed {
		return
	}
	if err := s.sendState(r, dev, roomID, spec.MRoomCanonicalAlias, content); err != nil {
		s.log.Info("deleted alias left in m.room.canonical_alias", zap.String("alias", alias), zap.Error(err))
	}
}

// mayManageRoomListing: the user is joined to the room and has the power
// to send m.room.canonical_alias. It guards alias deletion by non-creators
// and directory publication.
func (s *Directory) mayManageRoomListing(r *http.Request, dev *httpapi.Device, roomID string) (bool, error) {
	m, err := s.rooms.QueryMembership(r.Context(), &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: dev.UserID})
	if err != nil {
		return false, s.fromGRPC(r.Context(), "QueryMembership", err, nil)
	}
	if m.GetMembership() != store.MembershipJoin {
		return false, nil
	}
	p, exists, err := s.roomPowerOf(r.Context(), roomID)
	if err != nil || !exists {
		return false, err
	}
	return p.maySendState(dev.UserID, spec.MRoomCanonicalAlias), nil
}

// roomAliases is GET /rooms/{roomId}/aliases: for members, or anyone when
// the room's history is world_readable.
func (s *Directory) roomAliases(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	m, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: dev.UserID})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryMembership", err, nil)
	}
	if !m.GetRoomExists() {
		return nil, matrixhttp.Forbidden("You aren't a member of the room")
	}
	if m.GetMembership() != store.MembershipJoin {
		st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{
			RoomId: roomID, Filter: []*roomserverv1.StateKeyTuple{{Type: spec.MRoomHistoryVisibility}},
		})
		if err != nil {
			return nil, s.fromGRPC(ctx, "QueryState", err, nil)
		}
		if historyVisibility(st.GetState()) != "world_readable" {
			return nil, matrixhttp.Forbidden("You aren't a member of the room")
		}
	}
	list, err := s.rooms.ListRoomAliases(ctx, &roomserverv1.ListRoomAliasesRequest{RoomId: roomID})
	if err != nil {
		return nil, s.fromGRPC(ctx, "ListRoomAliases", err, nil)
	}
	aliases := list.GetAliases()
	if aliases == nil {
		aliases = []string{}
	}
	return map[string][]string{"aliases": aliases}, nil
}

// historyVisibility reads m.room.history_visibility from state events
// ("shared" when absent, as the spec says).
func historyVisibility(events []*roomserverv1.Event) string {
	for _, ev := range events {
		pdu, err := clientevent.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil || pdu.Type() != spec.MRoomHistoryVisibility {
			continue
		}
		var c struct {
			HistoryVisibility string `json:"history_visibility"`
		}
		if json.Unmarshal(pdu.Content(), &c) == nil && c.HistoryVisibility != "" {
			return c.HistoryVisibility
		}
	}
	return "shared"
}

// getVisibility is GET /directory/list/room/{roomId}.
func (s *Directory) getVisibility(r *http.Request, _ *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	resp, err := s.rooms.GetRoomVisibility(r.Context(), &roomserverv1.GetRoomVisibilityRequest{RoomId: roomID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "GetRoomVisibility", err, nil)
	}
	if !resp.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	return map[string]string{"visibility": resp.GetVisibility()}, nil
}

// putVisibility is PUT /directory/list/room/{roomId}: for joined users
// who may change the canonical alias (the spec leaves the check to us).
func (s *Directory) putVisibility(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Visibility *string `json:"visibility"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	visibility := "public"
	if req.Visibility != nil {
		visibility = *req.Visibility
	}
	if visibility != "public" && visibility != "private" {
		return nil, matrixhttp.InvalidParam("visibility must be public or private")
	}
	info, err := s.rooms.QueryRoomInfo(r.Context(), &roomserverv1.QueryRoomInfoRequest{RoomId: roomID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryRoomInfo", err, nil)
	}
	if !info.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	allowed, err := s.mayManageRoomListing(r, dev, roomID)
	if err != nil {
		return nil, err
	}
	if !allowed {
		return nil, matrixhttp.Forbidden("You may not change this room's directory visibility")
	}
	if _, err := s.rooms.SetRoomVisibility(r.Context(), &roomserverv1.SetRoomVisibilityRequest{RoomId: roomID, Visibility: visibility}); err != nil {
		return nil, s.fromGRPC(r.Context(), "SetRoomVisibility", err, nil)
	}
	return struct{}{}, nil
}

// publicRoomsRequest is the body of POST /publicRooms (GET takes limit
// and since as query parameters); publicRoom is one entry of the public
// room list. Both, and the list's order and pages, are pkg/roomdir's,
// which the federation-receiver shares.
type (
	publicRoomsRequest = roomdir.Request
	publicRoom         = roomdir.Entry
)

// publicRoomsGet is GET /publicRooms.
func (s *Directory) publicRoomsGet(r *http.Request, _ *httpapi.Device) (any, error) {
	var req publicRoomsRequest
	limit, err := httpapi.QueryInt(r, "limit", 0)
	if err != nil {
		return nil, err
	}
	if limit > 0 {
		req.Limit = &limit
	}
	req.Since = r.URL.Query().Get("since")
	// Not in the spec's GET, but as POST's (Synapse takes them too).
	req.ThirdPartyInstanceID = r.URL.Query().Get("third_party_instance_id")
	req.IncludeAllNetworks = r.URL.Query().Get("include_all_networks") == "true"
	return s.publicRooms(r, req)
}

// publicRoomsPost is POST /publicRooms.
func (s *Directory) publicRoomsPost(r *http.Request, _ *httpapi.Device) (any, error) {
	var req publicRoomsRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	return s.publicRooms(r, req)
}

// directoryStateTypes are the state types a directory entry is made of.
var directoryStateTypes = roomdir.StateTypes

// publicRooms lists the directory: rooms ordered by joined members (most
// first), then room ID, from the server's directory or an application
// service network's (publicRoomsList); since tokens are offsets into that order ("n<i>"
// next, "p<i>" previous, both meaning "start at i").
func (s *Directory) publicRooms(r *http.Request, req publicRoomsRequest) (any, error) {
	if server := r.URL.Query().Get("server"); server != "" && server != s.serverName {
		if s.fed == nil {
			return nil, matrixhttp.InvalidParam("Only this server's room directory can be listed (federation is disabled)")
		}
		return s.remotePublicRooms(r.Context(), server, req)
	}
	ctx := r.Context()
	list, err := s.publicRoomsList(ctx, req)
	if err != nil {
		return nil, err
	}
	state, err := s.store.Reader().CurrentStateRooms(ctx, list.GetRoomIds(), directoryStateTypes)
	if err != nil {
		return nil, err
	}
	rooms := make([]publicRoom, 0, len(list.GetRoomIds()))
	for _, roomID := range list.GetRoomIds() {
		rooms = append(rooms, directoryEntry(roomID, state[roomID]))
	}
	resp, err := roomdir.Page(rooms, req)
	if errors.Is(err, roomdir.ErrInvalidToken) {
		return nil, matrixhttp.InvalidParam("Invalid since token")
	}
	return resp, err
}

// directoryEntry builds a room's directory entry from the client-API's
// copy of its current state.
func directoryEntry(roomID string, state []store.CurrentStateEvent) publicRoom {
	return roomdir.EntryOf(roomID, roomdirState(state))
}

// roomdirState converts current state rows for pkg/roomdir.
func roomdirState(state []store.CurrentStateEvent) []roomdir.StateEvent {
	out := make([]roomdir.StateEvent, len(state))
	for i, e := range state {
		out[i] = roomdir.StateEvent{Type: e.Type, StateKey: e.StateKey, JSON: e.JSON, Membership: e.Membership}
	}
	return out
}

// checkCanonicalAlias validates m.room.canonical_alias content before it
// is sent: every alias must be well formed (M_INVALID_PARAM) and point to
// this room (M_BAD_ALIAS). Only this server's aliases can be resolved, so
// others are refused as well.
func (s *base) checkCanonicalAlias(r *http.Request, roomID string, content []byte) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return matrixhttp.BadJSON("m.room.canonical_alias: alias must be a string and alt_aliases a list of strings")
	}
	aliases := slices.Clone(c.AltAliases)
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	for _, alias := range aliases {
		if _, _, err := parseAlias(alias); err != nil {
			return matrixhttp.InvalidParam("Invalid alias " + alias + " in m.room.canonical_alias")
		}
	}
	for _, alias := range aliases {
		resp, err := s.rooms.GetRoomAlias(r.Context(), &roomserverv1.GetRoomAliasRequest{Alias: alias})
		if err != nil {
			return s.fromGRPC(r.Context(), "GetRoomAlias", err, nil)
		}
		if resp.GetRoomId() != roomID {
			return httpapi.BadAlias("The alias " + alias + " does not point to this room")
		}
	}
	return nil
}

// getAlias is GET /directory/room/{roomAlias}.
func (s *Directory) getAlias(r *http.Request, _ *httpapi.Device) (any, error) {
	alias, err := httpapi.PathParam(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	roomID, servers, err := s.lookupAlias(r.Context(), alias)
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": servers}, nil
}

// putAlias is PUT /directory/room/{roomAlias}.
func (s *Directory) putAlias(r *http.Request, dev *httpapi.Device) (any, error) {
	alias, err := httpapi.PathParam(r, "roomAlias")
	if err != nil {
		return nil, err
	}
	_, server, err := parseAlias(alias)
	if err != nil {
		return nil, err
	}
	var req struct {
		RoomID string `json:"room_id"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.RoomID == "" {
		return nil, matrixhttp.BadJSON("room_id is required")
	}
	if _, err := spec.NewRoomID(req.RoomID); err != nil {
		return nil, matrixhttp.InvalidParam("Invalid room ID")
	}
	if server != s.serverName {
		return nil, matrixhttp.InvalidParam("Room alias must be on this server")
	}
	if err := s.checkAliasNamespace(dev, alias); err != nil {
		return nil, err
	}
	info, err := s.rooms.QueryRoomInfo(r.Context(), &roomserverv1.QueryRoomInfoRequest{RoomId: req.RoomID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "QueryRoomInfo", err, nil)
	}
	if !info.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	set, err := s.rooms.SetRoomAlias(r.Context(), &roomserverv1.SetRoomAliasRequest{Alias: alias, RoomId: req.RoomID, Creator: dev.UserID})
	if err != nil {
		return nil, s.fromGRPC(r.Context(), "SetRoomAlias", err, nil)
	}
	if !set.GetCreated() {
		return nil, httpapi.UnknownError(http.StatusConflict, "Room alias "+alias+" already exists")
	}
	return struct{}{}, nil
}

// remotePublicRooms is /publicRooms?server= for another server: its
// answer, as it gave it (the federation sender checked its shape). A
// filter goes as the POST form, without one as the GET form.
func (s *Directory) remotePublicRooms(ctx context.Context, server string, req publicRoomsRequest) (any, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return nil, matrixhttp.InvalidParam("Invalid server name")
	}
	q := &fedsenderv1.QueryPublicRoomsRequest{ServerName: server, Since: req.Since,
		IncludeAllNetworks: req.IncludeAllNetworks, ThirdPartyInstanceId: req.ThirdPartyInstanceID}
	if req.Limit != nil {
		q.Limit = int32(min(max(*req.Limit, 0), roomdir.MaxLimit))
	}
	if req.Filter.GenericSearchTerm != "" || req.Filter.RoomTypes != nil {
		raw, err := json.Marshal(req.Filter)
		if err != nil {
			return nil, err
		}
		q.Filter = raw
	}
	resp, err := s.fed.QueryPublicRooms(ctx, q)
	if err != nil {
		return nil, s.fromRemote(ctx, "QueryPublicRooms", err)
	}
	return json.RawMessage(resp.GetResponse()), nil
}
