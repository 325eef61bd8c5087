package rooms

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Presets of /createRoom.
const (
	presetPrivateChat        = "private_chat"
	presetPublicChat         = "public_chat"
	presetTrustedPrivateChat = "trusted_private_chat"
)

// createRoomRequest is the body of POST /createRoom.
type createRoomRequest struct {
	Visibility                string              `json:"visibility"`
	RoomAliasName             string              `json:"room_alias_name"`
	Name                      *string             `json:"name"`
	Topic                     *string             `json:"topic"`
	Invite                    []string            `json:"invite"`
	RoomVersion               string              `json:"room_version"`
	CreationContent           json.RawMessage     `json:"creation_content"`
	InitialState              []initialStateEvent `json:"initial_state"`
	Preset                    string              `json:"preset"`
	IsDirect                  bool                `json:"is_direct"`
	PowerLevelContentOverride json.RawMessage     `json:"power_level_content_override"`
	// Third-party invites need an identity server; a non-empty list is refused.
	Invite3PID []json.RawMessage `json:"invite_3pid"`
}

type initialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// roomPlan is what /createRoom asks the room-server to do.
type roomPlan struct {
	Version       string
	CreateContent []byte
	Events        []*roomserverv1.EventTemplate
	// Alias is the full room alias to create, or empty.
	Alias string
}

// optionalObject decodes an optional JSON object field: absent or null
// gives an empty map; anything but an object is M_BAD_JSON.
func optionalObject(raw json.RawMessage, field string) (map[string]any, error) {
	out := map[string]any{}
	if len(raw) == 0 || string(raw) == "null" {
		return out, nil
	}
	if err := json.Unmarshal(raw, &out); err != nil || out == nil {
		return nil, matrixhttp.BadJSON(field + " must be a JSON object")
	}
	return out, nil
}

// validAliasLocalpart checks a room alias localpart: any Unicode except
// ':' and NUL per the spec; whitespace is refused as well.
func validAliasLocalpart(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == ':' || r == 0 || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// parseAlias validates a full room alias (#localpart:server).
func parseAlias(alias string) (localpart, server string, err error) {
	body, ok := strings.CutPrefix(alias, "#")
	if !ok || len(alias) > 255 {
		return "", "", matrixhttp.InvalidParam("Room alias must have the form #localpart:server")
	}
	localpart, server, ok = strings.Cut(body, ":")
	if !ok || !validAliasLocalpart(localpart) {
		return "", "", matrixhttp.InvalidParam("Room alias must have the form #localpart:server")
	}
	if _, _, valid := spec.ParseAndValidateServerName(spec.ServerName(server)); !valid {
		return "", "", matrixhttp.InvalidParam("Room alias has an invalid server name")
	}
	return localpart, server, nil
}

// planRoom computes the create content and the ordered initial events of
// /createRoom, as the spec lists them: the creator's join, power levels,
// canonical alias, the preset's join rules / history visibility / guest
// access, initial_state, name and topic, then invites. It does no I/O.
func planRoom(req createRoomRequest, creator, serverName, defaultVersion string) (roomPlan, error) {
	plan := roomPlan{Version: req.RoomVersion}
	if plan.Version == "" {
		plan.Version = defaultVersion
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(plan.Version))
	if err != nil || !verImpl.Stable() {
		return roomPlan{}, httpapi.UnsupportedRoomVersion("Room version " + plan.Version + " is not supported")
	}
	privilegedCreators := verImpl.PrivilegedCreators()

	switch req.Visibility {
	case "", "private", "public":
	default:
		return roomPlan{}, matrixhttp.InvalidParam("visibility must be public or private")
	}
	preset := req.Preset
	switch preset {
	case "":
		preset = presetPrivateChat
		if req.Visibility == "public" {
			preset = presetPublicChat
		}
	case presetPrivateChat, presetPublicChat, presetTrustedPrivateChat:
	default:
		return roomPlan{}, matrixhttp.InvalidParam("Unknown preset " + preset)
	}

	if req.RoomAliasName != "" {
		if !validAliasLocalpart(req.RoomAliasName) {
			return roomPlan{}, matrixhttp.InvalidParam("Invalid characters in room alias")
		}
		plan.Alias = "#" + req.RoomAliasName + ":" + serverName
		if len(plan.Alias) > 255 {
			return roomPlan{}, matrixhttp.InvalidParam("Room alias too long")
		}
	}

	var invites []string
	for _, u := range req.Invite {
		if _, err := spec.NewUserID(u, true); err != nil {
			return roomPlan{}, matrixhttp.InvalidParam("Invalid user ID to invite: " + u)
		}
		if u != creator && !slices.Contains(invites, u) {
			invites = append(invites, u)
		}
	}

	initial := make([]initialStateEvent, 0, len(req.InitialState))
	var plContent json.RawMessage
	for _, ev := range req.InitialState {
		if ev.Type == "" {
			return roomPlan{}, matrixhttp.BadJSON("initial_state events need a type")
		}
		if !clientevent.IsObject(ev.Content) {
			return roomPlan{}, matrixhttp.BadJSON("initial_state content must be a JSON object")
		}
		switch {
		case ev.Type == "m.room.power_levels" && ev.StateKey == "":
			plContent = ev.Content
			continue
		case ev.Type == "m.room.name" && ev.StateKey == "" && req.Name != nil,
			ev.Type == "m.room.topic" && ev.StateKey == "" && req.Topic != nil:
			continue
		}
		initial = append(initial, ev)
	}
	inInitial := func(typ string) bool {
		return slices.ContainsFunc(initial, func(e initialStateEvent) bool { return e.Type == typ && e.StateKey == "" })
	}

	createContent, err := optionalObject(req.CreationContent, "creation_content")
	if err != nil {
		return roomPlan{}, err
	}
	delete(createContent, "creator")
	delete(createContent, "room_version")
	if privilegedCreators && preset == presetTrustedPrivateChat && len(invites) > 0 {
		var extra []string
		if raw, ok := createContent["additional_creators"]; ok {
			list, ok := raw.([]any)
			if !ok {
				return roomPlan{}, matrixhttp.BadJSON("additional_creators must be a list of user IDs")
			}
			for _, v := range list {
				u, ok := v.(string)
				if !ok {
					return roomPlan{}, matrixhttp.BadJSON("additional_creators must be a list of user IDs")
				}
				extra = append(extra, u)
			}
		}
		for _, u := range invites {
			if !slices.Contains(extra, u) {
				extra = append(extra, u)
			}
		}
		createContent["additional_creators"] = extra
	}
	if plan.CreateContent, err = json.Marshal(createContent); err != nil {
		return roomPlan{}, err
	}

	add := func(typ string, stateKey string, content any) error {
		raw, ok := content.(json.RawMessage)
		if !ok {
			var err error
			if raw, err = json.Marshal(content); err != nil {
				return err
			}
		}
		key := stateKey
		plan.Events = append(plan.Events, &roomserverv1.EventTemplate{Type: typ, StateKey: &key, Content: raw})
		return nil
	}

	// 2. The creator joins.
	if err := add("m.room.member", creator, map[string]any{"membership": "join"}); err != nil {
		return roomPlan{}, err
	}
	// 3. Power levels: initial_state's own event, or the defaults with the override on top.
	if plContent != nil {
		if err := add("m.room.power_levels", "", plContent); err != nil {
			return roomPlan{}, err
		}
	} else {
		pl := defaultPowerLevels(creator, preset, invites, privilegedCreators)
		override, err := optionalObject(req.PowerLevelContentOverride, "power_level_content_override")
		if err != nil {
			return roomPlan{}, err
		}
		for k, v := range override {
			pl[k] = v
		}
		if err := add("m.room.power_levels", "", pl); err != nil {
			return roomPlan{}, err
		}
	}
	// 4. Canonical alias.
	if plan.Alias != "" {
		if err := add("m.room.canonical_alias", "", map[string]any{"alias": plan.Alias}); err != nil {
			return roomPlan{}, err
		}
	}
	// 5. The preset's events, unless initial_state sets them.
	joinRule, guestAccess := "invite", "can_join"
	if preset == presetPublicChat {
		joinRule, guestAccess = "public", "forbidden"
	}
	presetEvents := []struct {
		typ     string
		content map[string]any
	}{
		{"m.room.join_rules", map[string]any{"join_rule": joinRule}},
		{"m.room.history_visibility", map[string]any{"history_visibility": "shared"}},
		{"m.room.guest_access", map[string]any{"guest_access": guestAccess}},
	}
	for _, pe := range presetEvents {
		if inInitial(pe.typ) {
			continue
		}
		if err := add(pe.typ, "", pe.content); err != nil {
			return roomPlan{}, err
		}
	}
	// 6. initial_state, in order.
	for _, ev := range initial {
		if err := add(ev.Type, ev.StateKey, ev.Content); err != nil {
			return roomPlan{}, err
		}
	}
	// 7. Name and topic.
	if req.Name != nil {
		if err := add("m.room.name", "", map[string]any{"name": *req.Name}); err != nil {
			return roomPlan{}, err
		}
	}
	if req.Topic != nil {
		topic := map[string]any{
			"topic":   *req.Topic,
			"m.topic": map[string]any{"m.text": []map[string]any{{"body": *req.Topic, "mimetype": "text/plain"}}},
		}
		if err := add("m.room.topic", "", topic); err != nil {
			return roomPlan{}, err
		}
	}
	// 8. Invites.
	for _, u := range invites {
		content := map[string]any{"membership": "invite"}
		if req.IsDirect {
			content["is_direct"] = true
		}
		if err := add("m.room.member", u, content); err != nil {
			return roomPlan{}, err
		}
	}
	return plan, nil
}

// defaultPowerLevels is the m.room.power_levels content of a new room. In
// room versions with privileged creators (12+) the creators have infinite
// power and must not be listed in users; tombstones then need more than
// state_default.
func defaultPowerLevels(creator, preset string, invites []string, privilegedCreators bool) map[string]any {
	users := map[string]any{}
	tombstone := 100
	if privilegedCreators {
		tombstone = 150
	} else {
		users[creator] = 100
		if preset == presetTrustedPrivateChat {
			for _, u := range invites {
				users[u] = 100
			}
		}
	}
	invite := 50
	if preset != presetPublicChat {
		invite = 0
	}
	return map[string]any{
		"users":         users,
		"users_default": 0,
		"events": map[string]any{
			"m.room.name":               50,
			"m.room.power_levels":       100,
			"m.room.history_visibility": 100,
			"m.room.canonical_alias":    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          tombstone,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         invite,
		"notifications":  map[string]any{"room": 50},
	}
}

// createRoom is POST /createRoom.
func (s *Rooms) createRoom(r *http.Request, dev *httpapi.Device) (any, error) {
	var req createRoomRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	if len(req.Invite3PID) > 0 {
		return nil, matrixhttp.InvalidParam("Third-party invites (invite_3pid) are not supported")
	}
	plan, err := planRoom(req, dev.UserID, s.serverName, s.cfg.DefaultRoomVersion)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	remoteInvites := s.takeRemoteInvites(&plan)
	if err := s.users.Profiles.AddProfileToCreatorJoin(ctx, dev.UserID, plan.Events); err != nil {
		return nil, err
	}
	if plan.Alias != "" {
		if err := s.checkAliasNamespace(dev, plan.Alias); err != nil {
			return nil, err
		}
		existing, err := s.rooms.GetRoomAlias(ctx, &roomserverv1.GetRoomAliasRequest{Alias: plan.Alias})
		if err != nil {
			return nil, s.fromGRPC(ctx, "GetRoomAlias", err, nil)
		}
		if existing.GetRoomId() != "" {
			return nil, httpapi.RoomInUse("Room alias already taken")
		}
	}
	resp, err := s.rooms.CreateRoom(ctx, &roomserverv1.CreateRoomRequest{
		Creator:       dev.UserID,
		RoomVersion:   plan.Version,
		CreateContent: plan.CreateContent,
		InitialEvents: plan.Events,
	})
	if err != nil {
		return nil, s.fromGRPC(ctx, "CreateRoom", err, createRoomErrors)
	}
	if plan.Alias != "" {
		set, err := s.rooms.SetRoomAlias(ctx, &roomserverv1.SetRoomAliasRequest{Alias: plan.Alias, RoomId: resp.GetRoomId(), Creator: dev.UserID})
		if err != nil {
			return nil, s.fromGRPC(ctx, "SetRoomAlias", err, nil)
		}
		if !set.GetCreated() {
			s.log.Warn("room alias taken while the room was created", zap.String("alias", plan.Alias), logging.RoomID(resp.GetRoomId()))
			return nil, httpapi.RoomInUse("Room alias already taken")
		}
	}
	if req.Visibility == "public" {
		_, err := s.rooms.SetRoomVisibility(ctx, &roomserverv1.SetRoomVisibilityRequest{RoomId: resp.GetRoomId(), Visibility: "public"})
		if err != nil {
			return nil, s.fromGRPC(ctx, "SetRoomVisibility", err, nil)
		}
	}
	if ids := resp.GetEventIds(); len(ids) > 0 {
		if err := s.notifier.AwaitStored(ctx, ids[len(ids)-1], true); err != nil {
			return nil, err
		}
	}
	// Users of other servers are invited once the room exists, each
	// through their server; one that fails does not undo the room (as
	// Synapse and Dendrite do), it is logged.
	for _, ev := range remoteInvites {
		if err := s.sendRemoteInvite(ctx, dev.UserID, resp.GetRoomId(), ev.GetStateKey(), ev.GetContent()); err != nil {
			s.log.Warn("invite of a remote user at room creation failed", logging.RoomID(resp.GetRoomId()),
				zap.String("invitee", ev.GetStateKey()), zap.Error(err))
		}
	}
	return map[string]string{"room_id": resp.GetRoomId()}, nil
}

// membershipRequest is the body of join, leave and invite.
type membershipRequest struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
}

// setMembership sends an m.room.member event for target.
func (s *Rooms) setMembership(r *http.Request, dev *httpapi.Device, roomID, target, membership, reason string) error {
	raw, err := s.membershipContent(r, dev, roomID, target, membership, reason)
	if err != nil {
		return err
	}
	_, err = s.sendOwnEvent(r.Context(), &roomserverv1.SendEventRequest{
		RoomId: roomID,
		Sender: dev.UserID,
		Event:  &roomserverv1.EventTemplate{Type: "m.room.member", StateKey: &target, Content: raw},
	})
	return err
}

// joinRoomIDOrAlias is POST /join/{roomIdOrAlias}: a room of this server,
// or of others through the via (server_name) servers, the alias's
// servers and the room ID's server, in that order.
func (s *Rooms) joinRoomIDOrAlias(r *http.Request, dev *httpapi.Device) (any, error) {
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
	if err := s.join(r, dev, roomID, servers, req.Reason); err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// joinRoom is POST /rooms/{roomId}/join (through the room ID's server
// when this server is not in the room).
func (s *Rooms) joinRoom(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	var req membershipRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	if err := s.join(r, dev, roomID, s.otherServers([]string{serverOf(roomID)}), req.Reason); err != nil {
		return nil, err
	}
	return map[string]string{"room_id": roomID}, nil
}

// invite is POST /rooms/{roomId}/invite.
func (s *Rooms) invite(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	var req membershipRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.UserID == "" {
		return nil, matrixhttp.BadJSON("user_id is required")
	}
	if _, err := spec.NewUserID(req.UserID, true); err != nil {
		return nil, matrixhttp.InvalidParam("Invalid user ID")
	}
	if s.fed != nil && s.isRemote(req.UserID) {
		return struct{}{}, s.inviteRemote(r, dev, roomID, req.UserID, req.Reason)
	}
	if err := s.setMembership(r, dev, roomID, req.UserID, store.MembershipInvite, req.Reason); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// leave is POST /rooms/{roomId}/leave.
func (s *Rooms) leave(r *http.Request, dev *httpapi.Device) (any, error) {
	roomID, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	var req membershipRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	remote, err := s.throughRemote(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	if remote {
		return struct{}{}, s.leaveRemote(r, dev, roomID, req.Reason)
	}
	if err := s.setMembership(r, dev, roomID, dev.UserID, store.MembershipLeave, req.Reason); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// joinedRooms is GET /joined_rooms.
func (s *Rooms) joinedRooms(r *http.Request, dev *httpapi.Device) (any, error) {
	rooms, err := s.store.Reader().JoinedRooms(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	if rooms == nil {
		rooms = []string{}
	}
	return map[string][]string{"joined_rooms": rooms}, nil
}

// createRoomErrors: the room-server refusing an initial event means the
// initial state the request implies is invalid.
var createRoomErrors = httpapi.GRPCOverrides{
	codes.PermissionDenied: httpapi.InvalidRoomState,
	codes.InvalidArgument:  httpapi.InvalidRoomState,
}
