package rooms

// POST /rooms/{roomId}/upgrade, as the room upgrades module's server
// behaviour lists it: check the power to send m.room.tombstone, create the
// replacement room (create event with predecessor and the old room's type),
// copy the transferable state, move the local aliases (and the canonical
// alias), tombstone the old room, restrict its power levels and carry its
// directory listing over. Each step is an ordinary room-server call.

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// transferredState are the state events copied to the replacement room
// (the spec's recommended list; power levels are handled on their own).
var transferredState = []string{
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess,
	spec.MRoomName, "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.server_acl",
}

type upgradeRequest struct {
	NewVersion         string   `json:"new_version"`
	AdditionalCreators []string `json:"additional_creators"`
}

// upgradeRoom is POST /rooms/{roomId}/upgrade.
func (s *Rooms) upgradeRoom(r *http.Request, dev *httpapi.Device) (any, error) {
	oldRoom, err := httpapi.RoomIDParam(r)
	if err != nil {
		return nil, err
	}
	var req upgradeRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.NewVersion == "" {
		return nil, matrixhttp.BadJSON("new_version is required")
	}
	newImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(req.NewVersion))
	if err != nil || !newImpl.Stable() {
		return nil, httpapi.UnsupportedRoomVersion("Room version " + req.NewVersion + " is not supported")
	}
	for _, u := range req.AdditionalCreators {
		if _, err := spec.NewUserID(u, true); err != nil {
			return nil, matrixhttp.InvalidParam("Invalid user ID in additional_creators: " + u)
		}
	}
	ctx := r.Context()
	m, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: oldRoom, UserId: dev.UserID})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryMembership", err, nil)
	}
	if !m.GetRoomExists() {
		return nil, matrixhttp.NotFound("Room not found")
	}
	if m.GetMembership() != store.MembershipJoin {
		return nil, matrixhttp.Forbidden("You are not in the room")
	}
	power, _, err := s.roomPowerOf(ctx, oldRoom)
	if err != nil {
		return nil, err
	}
	if !power.maySendState(dev.UserID, "m.room.tombstone") {
		return nil, matrixhttp.Forbidden("You cannot upgrade this room")
	}

	// The old room's state and last event.
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: oldRoom})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryState", err, nil)
	}
	info, err := s.rooms.QueryRoomInfo(ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: oldRoom})
	if err != nil {
		return nil, s.fromGRPC(ctx, "QueryRoomInfo", err, nil)
	}
	contents := map[string]map[string]any{}
	for _, ev := range st.GetState() {
		pdu, err := clientevent.ParsePDU(ev.GetRoomVersion(), ev.GetEventJson())
		if err != nil {
			return nil, err
		}
		if !pdu.StateKeyEquals("") {
			continue
		}
		var c map[string]any
		if err := json.Unmarshal(pdu.Content(), &c); err != nil || c == nil {
			continue
		}
		contents[pdu.Type()] = c
	}

	// 2. The replacement room's create event.
	predecessor := map[string]any{"room_id": oldRoom}
	if ext := info.GetForwardExtremities(); len(ext) > 0 {
		predecessor["event_id"] = ext[0]
	}
	createContent := map[string]any{"predecessor": predecessor}
	if typ, ok := contents[spec.MRoomCreate]["type"]; ok {
		createContent["type"] = typ
	}
	privileged := newImpl.PrivilegedCreators()
	var extraCreators []string
	if privileged {
		for _, u := range req.AdditionalCreators {
			if u != dev.UserID && !slices.Contains(extraCreators, u) {
				extraCreators = append(extraCreators, u)
			}
		}
		if len(extraCreators) > 0 {
			createContent["additional_creators"] = extraCreators
		}
	}
	rawCreate, err := json.Marshal(createContent)
	if err != nil {
		return nil, err
	}

	// 3. Initial events: the upgrader's join, power levels, transferred state.
	finalPL, tempPL := upgradedPowerLevels(contents[spec.MRoomPowerLevels], dev.UserID, append(extraCreators, dev.UserID), power, privileged)
	var events []*roomserverv1.EventTemplate
	add := func(typ, stateKey string, content any) error {
		raw, err := json.Marshal(content)
		if err != nil {
			return err
		}
		events = append(events, &roomserverv1.EventTemplate{Type: typ, StateKey: &stateKey, Content: raw})
		return nil
	}
	if err := add(spec.MRoomMember, dev.UserID, map[string]any{"membership": "join"}); err != nil {
		return nil, err
	}
	if err := add(spec.MRoomPowerLevels, "", tempPL); err != nil {
		return nil, err
	}
	for _, typ := range transferredState {
		if c, ok := contents[typ]; ok {
			if err := add(typ, "", c); err != nil {
				return nil, err
			}
		}
	}
	if !maps.EqualFunc(finalPL, tempPL, func(a, b any) bool { return jsonEqual(a, b) }) {
		if err := add(spec.MRoomPowerLevels, "", finalPL); err != nil {
			return nil, err
		}
	}
	created, err := s.rooms.CreateRoom(ctx, &roomserverv1.CreateRoomRequest{
		Creator: dev.UserID, RoomVersion: req.NewVersion, CreateContent: rawCreate, InitialEvents: events,
	})
	if err != nil {
		return nil, s.fromGRPC(ctx, "CreateRoom", err, createRoomErrors)
	}
	newRoom := created.GetRoomId()
	log := s.log.With(logging.RoomID(oldRoom), zap.String("replacement_room", newRoom))

	// 4. Local aliases move, and the canonical alias with them.
	if err := s.moveAliases(r, oldRoom, newRoom); err != nil {
		return nil, err
	}
	if ca, ok := contents[spec.MRoomCanonicalAlias]; ok && len(ca) > 0 {
		if err := s.sendState(r, dev, newRoom, spec.MRoomCanonicalAlias, ca); err != nil {
			log.Warn("copying the canonical alias failed", zap.Error(err))
		}
		if err := s.sendState(r, dev, oldRoom, spec.MRoomCanonicalAlias, map[string]any{}); err != nil {
			log.Warn("clearing the old canonical alias failed", zap.Error(err))
		}
	}

	// 5. The tombstone.
	if err := s.sendState(r, dev, oldRoom, "m.room.tombstone", map[string]any{
		"body": "This room has been replaced", "replacement_room": newRoom,
	}); err != nil {
		return nil, err
	}

	// 6. Restrict the old room: nobody below max(50, users_default+1) may
	// talk or invite. The upgrader may lack the power for this; that is
	// not a failure of the upgrade.
	if old := contents[spec.MRoomPowerLevels]; old != nil {
		restricted := maps.Clone(old)
		level := max(int64(50), power.pl.UsersDefault+1)
		restricted["events_default"], restricted["invite"] = level, level
		if err := s.sendState(r, dev, oldRoom, spec.MRoomPowerLevels, restricted); err != nil {
			log.Info("restricting the old room's power levels failed", zap.Error(err))
		}
	}

	// The directory listing follows the room, and so do its listings in
	// application service network directories (the spec's upgrade steps
	// name only the server's directory; a bridge's listing of a room it
	// bridges is as much about the room).
	vis, err := s.rooms.GetRoomVisibility(ctx, &roomserverv1.GetRoomVisibilityRequest{RoomId: oldRoom})
	if err != nil {
		return nil, s.fromGRPC(ctx, "GetRoomVisibility", err, nil)
	}
	var moves []*roomserverv1.SetRoomVisibilityRequest
	if vis.GetVisibility() == "public" {
		moves = append(moves, &roomserverv1.SetRoomVisibilityRequest{RoomId: newRoom, Visibility: "public"},
			&roomserverv1.SetRoomVisibilityRequest{RoomId: oldRoom, Visibility: "private"})
	}
	for _, n := range vis.GetNetworks() {
		moves = append(moves,
			&roomserverv1.SetRoomVisibilityRequest{RoomId: newRoom, Visibility: "public", AppserviceId: n.GetAppserviceId(), NetworkId: n.GetNetworkId()},
			&roomserverv1.SetRoomVisibilityRequest{RoomId: oldRoom, Visibility: "private", AppserviceId: n.GetAppserviceId(), NetworkId: n.GetNetworkId()})
	}
	for _, m := range moves {
		if _, err := s.rooms.SetRoomVisibility(ctx, m); err != nil {
			return nil, s.fromGRPC(ctx, "SetRoomVisibility", err, nil)
		}
	}
	log.Info("room upgraded", logging.UserID(dev.UserID))
	return map[string]string{"replacement_room": newRoom}, nil
}

// upgradedPowerLevels returns the replacement room's power levels (final)
// and the ones to start with (temp). In versions with privileged creators
// the creators must not be listed in users. Otherwise the upgrader keeps
// their level (100 if they were a privileged creator of the old room), and
// starts with the highest level any action needs, so that they can send
// the copied state; final then lowers them again.
func upgradedPowerLevels(old map[string]any, upgrader string, creators []string, oldPower roomPower, privileged bool) (final, temp map[string]any) {
	final = maps.Clone(old)
	if final == nil {
		final = map[string]any{}
	}
	users := map[string]any{}
	if u, ok := final["users"].(map[string]any); ok {
		users = maps.Clone(u)
	}
	if privileged {
		for _, c := range creators {
			delete(users, c)
		}
	} else if level := oldPower.userLevel(upgrader); level > 100 {
		users[upgrader] = int64(100)
	}
	final["users"] = users
	if privileged {
		return final, final
	}
	needed := int64(100)
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case float64:
			needed = max(needed, int64(x))
		case int64:
			needed = max(needed, x)
		case map[string]any:
			for _, y := range x {
				walk(y)
			}
		}
	}
	walk(final)
	have := oldPower.pl.UsersDefault
	switch u := users[upgrader].(type) {
	case float64:
		have = int64(u)
	case int64:
		have = u
	}
	if have >= needed {
		return final, final
	}
	temp = maps.Clone(final)
	tempUsers := maps.Clone(users)
	tempUsers[upgrader] = needed
	temp["users"] = tempUsers
	return final, temp
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// sendState sends one state event with an empty state key as the user.
func (s *base) sendState(r *http.Request, dev *httpapi.Device, roomID, typ string, content any) error {
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	empty := ""
	_, err = s.rooms.SendEvent(r.Context(), &roomserverv1.SendEventRequest{
		RoomId: roomID, Sender: dev.UserID,
		Event: &roomserverv1.EventTemplate{Type: typ, StateKey: &empty, Content: raw},
	})
	return s.fromGRPC(r.Context(), "SendEvent", err, nil)
}

// moveAliases points every local alias of oldRoom at newRoom, keeping
// each alias's creator.
func (s *Rooms) moveAliases(r *http.Request, oldRoom, newRoom string) error {
	ctx := r.Context()
	list, err := s.rooms.ListRoomAliases(ctx, &roomserverv1.ListRoomAliasesRequest{RoomId: oldRoom})
	if err != nil {
		return s.fromGRPC(ctx, "ListRoomAliases", err, nil)
	}
	for _, alias := range list.GetAliases() {
		got, err := s.rooms.GetRoomAlias(ctx, &roomserverv1.GetRoomAliasRequest{Alias: alias})
		if err != nil {
			return s.fromGRPC(ctx, "GetRoomAlias", err, nil)
		}
		if got.GetRoomId() != oldRoom {
			continue
		}
		if _, err := s.rooms.RemoveRoomAlias(ctx, &roomserverv1.RemoveRoomAliasRequest{Alias: alias}); err != nil {
			return s.fromGRPC(ctx, "RemoveRoomAlias", err, nil)
		}
		if _, err := s.rooms.SetRoomAlias(ctx, &roomserverv1.SetRoomAliasRequest{Alias: alias, RoomId: newRoom, Creator: got.GetCreator()}); err != nil {
			return s.fromGRPC(ctx, "SetRoomAlias", err, nil)
		}
	}
	return nil
}
