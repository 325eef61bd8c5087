package fedreceiver

// Queries: /version, /openid/userinfo, /query/profile, /query/directory,
// /publicRooms, /hierarchy, and the end-to-end key endpoints /user/devices,
// /user/keys/query and /user/keys/claim.

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/roomdir"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// serveVersion is GET /version (no authentication).
func (s *Service) serveVersion(*http.Request) (any, error) {
	return map[string]any{"server": map[string]string{"name": "Myelin", "version": s.version}}, nil
}

// serveOpenIDUserInfo is GET /openid/userinfo: the user an OpenID token
// (from the client-API's /user/{userId}/openid/request_token) belongs to,
// checked by the client-API's ValidateOpenIDToken; 401 M_UNKNOWN_TOKEN
// for an unknown or expired one.
func (s *Service) serveOpenIDUserInfo(r *http.Request) (any, error) {
	token, err := queryParam(r, "access_token")
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, matrixhttp.MissingParam("access_token is required")
	}
	resp, err := s.users.ValidateOpenIDToken(r.Context(), &clientapiv1.ValidateOpenIDTokenRequest{Token: token})
	if status.Code(err) == codes.NotFound {
		return nil, matrixhttp.UnknownToken("Access token unknown or expired")
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"sub": resp.GetUserId()}, nil
}

// localUser reads a user ID of this server (404 for others' users).
func (s *Service) localUser(id string) (*spec.UserID, error) {
	u, err := spec.NewUserID(id, true)
	if err != nil {
		return nil, matrixhttp.InvalidParam("Invalid user ID")
	}
	if u.Domain() != s.server {
		return nil, matrixhttp.NotFound("Not a user of this server")
	}
	return u, nil
}

// serveQueryProfile is GET /query/profile?user_id=&field=.
func (s *Service) serveQueryProfile(r *http.Request) (any, error) {
	userID, err := queryParam(r, "user_id")
	if err != nil {
		return nil, err
	}
	if userID == "" {
		return nil, matrixhttp.MissingParam("user_id is required")
	}
	field, err := queryParam(r, "field")
	if err != nil {
		return nil, err
	}
	if field != "" && field != "displayname" && field != "avatar_url" {
		return nil, matrixhttp.InvalidParam("field must be displayname or avatar_url")
	}
	if _, err := s.localUser(userID); err != nil {
		return nil, err
	}
	p, err := s.users.QueryProfile(r.Context(), &clientapiv1.QueryProfileRequest{UserId: userID})
	if status.Code(err) == codes.NotFound {
		return nil, matrixhttp.NotFound("No such user")
	}
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	if p.Displayname != nil && field != "avatar_url" {
		out["displayname"] = p.GetDisplayname()
	}
	if p.AvatarUrl != nil && field != "displayname" {
		out["avatar_url"] = p.GetAvatarUrl()
	}
	if field != "" && len(out) == 0 {
		return nil, matrixhttp.NotFound("The user has no " + field)
	}
	return out, nil
}

// serveQueryDirectory is GET /query/directory?room_alias=.
func (s *Service) serveQueryDirectory(r *http.Request) (any, error) {
	alias, err := queryParam(r, "room_alias")
	if err != nil {
		return nil, err
	}
	if alias == "" {
		return nil, matrixhttp.MissingParam("room_alias is required")
	}
	resp, err := s.rooms.GetRoomAlias(r.Context(), &roomserverv1.GetRoomAliasRequest{Alias: alias})
	if err != nil {
		return nil, err
	}
	if resp.GetRoomId() == "" {
		return nil, matrixhttp.NotFound("Room alias not found")
	}
	if err := s.checkACL(r.Context(), resp.GetRoomId(), federation.Origin(r.Context())); err != nil {
		return nil, err
	}
	servers := resp.GetServers()
	if len(servers) == 0 {
		rs, err := s.rooms.QueryRoomServers(r.Context(), &roomserverv1.QueryRoomServersRequest{RoomId: resp.GetRoomId()})
		if err != nil {
			return nil, err
		}
		servers = rs.GetServerNames()
	}
	// This server first: it answered, so it is in the room.
	out := []string{string(s.server)}
	for _, sv := range servers {
		if sv != string(s.server) {
			out = append(out, sv)
		}
	}
	return map[string]any{"room_id": resp.GetRoomId(), "servers": out}, nil
}

// roomState is a room's current state for pkg/roomdir.
func (s *Service) roomState(ctx context.Context, roomID string) ([]roomdir.StateEvent, bool, error) {
	st, err := s.rooms.QueryState(ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
	if err != nil {
		return nil, false, err
	}
	out := make([]roomdir.StateEvent, 0, len(st.GetState()))
	for _, e := range st.GetState() {
		var k struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
			Content  struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if json.Unmarshal(e.GetEventJson(), &k) != nil {
			continue
		}
		out = append(out, roomdir.StateEvent{Type: k.Type, StateKey: k.StateKey, JSON: e.GetEventJson(), Membership: k.Content.Membership})
	}
	return out, st.GetRoomExists(), nil
}

// servePublicRoomsGet is GET /publicRooms (limit, since,
// include_all_networks, third_party_instance_id).
func (s *Service) servePublicRoomsGet(r *http.Request) (any, error) {
	q := r.URL.Query()
	var req roomdir.Request
	if v := q.Get("limit"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, matrixhttp.InvalidParam("limit must be an integer")
		}
		req.Limit = &n
	}
	req.Since = q.Get("since")
	req.IncludeAllNetworks = q.Get("include_all_networks") == "true"
	req.ThirdPartyInstanceID = q.Get("third_party_instance_id")
	return s.publicRooms(r, req)
}

// servePublicRoomsPost is POST /publicRooms (with a filter).
func (s *Service) servePublicRoomsPost(r *http.Request) (any, error) {
	var req roomdir.Request
	if _, err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	return s.publicRooms(r, req)
}

// publicRooms lists this server's published rooms, as the client-API does
// (pkg/roomdir), from the room-server's state; rooms whose ACL denies the
// requesting server are left out.
func (s *Service) publicRooms(r *http.Request, req roomdir.Request) (any, error) {
	ctx := r.Context()
	if req.ThirdPartyInstanceID != "" {
		return nil, matrixhttp.InvalidParam("Unknown third_party_instance_id")
	}
	list, err := s.rooms.ListPublicRooms(ctx, &roomserverv1.ListPublicRoomsRequest{})
	if err != nil {
		return nil, err
	}
	origin := federation.Origin(ctx)
	entries := make([]roomdir.Entry, 0, len(list.GetRoomIds()))
	for _, roomID := range list.GetRoomIds() {
		if err := s.checkACL(ctx, roomID, origin); err != nil {
			if errorsIsACL(err) {
				continue
			}
			return nil, err
		}
		state, exists, err := s.roomState(ctx, roomID)
		if err != nil {
			return nil, err
		}
		if exists {
			entries = append(entries, roomdir.EntryOf(roomID, state))
		}
	}
	resp, err := roomdir.Page(entries, req)
	if err != nil {
		return nil, matrixhttp.InvalidParam("Invalid since token")
	}
	return resp, nil
}

// serveHierarchy is GET /hierarchy/{roomId}?suggested_only=: the space and
// its children this server knows that the requesting server could peek
// or join (world-readable, public, knockable, restricted with the server
// in an allowed room, or the server in the room); children it could not
// are listed in inaccessible_children, rooms this server does not know
// are left out.
func (s *Service) serveHierarchy(r *http.Request) (any, error) {
	ctx := r.Context()
	origin := federation.Origin(ctx)
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		return nil, err
	}
	suggested := false
	if v := r.URL.Query().Get("suggested_only"); v != "" {
		if suggested, err = strconv.ParseBool(v); err != nil {
			return nil, matrixhttp.InvalidParam("suggested_only must be true or false")
		}
	}
	if err := s.checkACL(ctx, roomID, origin); err != nil {
		return nil, err
	}
	root, children, ok, err := s.hierarchyEntry(ctx, roomID, origin, suggested)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, matrixhttp.NotFound("Room not found or not accessible")
	}
	out := map[string]any{"room": root, "children": []roomdir.HierarchyEntry{}, "inaccessible_children": []string{}}
	var kids []roomdir.HierarchyEntry
	var inaccessible []string
	for _, c := range children {
		if s.checkACL(ctx, c.RoomID, origin) != nil {
			inaccessible = append(inaccessible, c.RoomID)
			continue
		}
		entry, _, ok, err := s.hierarchyEntry(ctx, c.RoomID, origin, false)
		if err != nil {
			return nil, err
		}
		switch {
		case entry == nil:
			// unknown here: left out
		case !ok:
			inaccessible = append(inaccessible, c.RoomID)
		default:
			kids = append(kids, *entry)
		}
	}
	if kids != nil {
		out["children"] = kids
	}
	if inaccessible != nil {
		out["inaccessible_children"] = inaccessible
	}
	return out, nil
}

// hierarchyEntry summarises a room for /hierarchy; entry is nil for a room
// this server does not know, ok says whether server may peek or join it.
func (s *Service) hierarchyEntry(ctx context.Context, roomID string, server spec.ServerName, suggested bool) (*roomdir.HierarchyEntry, []roomdir.Child, bool, error) {
	state, exists, err := s.roomState(ctx, roomID)
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, nil, false, nil
		}
		return nil, nil, false, err
	}
	if !exists || len(state) == 0 {
		return nil, nil, false, nil
	}
	entry, children, err := roomdir.Summarize(roomID, state, suggested)
	if err != nil {
		return nil, nil, false, err
	}
	ok, err := s.mayPeekOrJoin(ctx, roomID, entry, server)
	return &entry, children, ok, err
}

// mayPeekOrJoin is the hierarchy's rule for a server.
func (s *Service) mayPeekOrJoin(ctx context.Context, roomID string, entry roomdir.HierarchyEntry, server spec.ServerName) (bool, error) {
	if entry.WorldReadable || slices.Contains([]string{"public", "knock", "knock_restricted"}, entry.JoinRule) {
		return true, nil
	}
	in, err := s.serverInRoom(ctx, roomID, server)
	if err != nil || in {
		return in, err
	}
	if entry.JoinRule == "restricted" {
		for _, allowed := range entry.AllowedRoomIDs {
			if in, err := s.serverInRoom(ctx, allowed, server); err == nil && in {
				return true, nil
			}
		}
	}
	return false, nil
}

// serveUserDevices is GET /user/devices/{userId}: a local user's devices
// with identity keys.
func (s *Service) serveUserDevices(r *http.Request) (any, error) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	if _, err := s.localUser(userID); err != nil {
		return nil, err
	}
	l, err := s.e2e.LocalDeviceList(r.Context(), &keyserverv1.LocalDeviceListRequest{UserId: userID})
	if err != nil {
		return nil, err
	}
	type device struct {
		DeviceID    string          `json:"device_id"`
		Keys        json.RawMessage `json:"keys"`
		DisplayName string          `json:"device_display_name,omitempty"`
	}
	out := map[string]any{"user_id": userID, "stream_id": l.GetStreamId()}
	devices := []device{}
	for _, d := range l.GetDevices() {
		if len(d.GetKeys()) > 0 {
			devices = append(devices, device{DeviceID: d.GetDeviceId(), Keys: d.GetKeys(), DisplayName: d.GetDisplayName()})
		}
	}
	out["devices"] = devices
	if len(l.GetMasterKey()) > 0 {
		out["master_key"] = json.RawMessage(l.GetMasterKey())
	}
	if len(l.GetSelfSigningKey()) > 0 {
		out["self_signing_key"] = json.RawMessage(l.GetSelfSigningKey())
	}
	return out, nil
}

// maxKeyQueryUsers bounds /user/keys/query and /user/keys/claim.
const maxKeyQueryUsers = 1000

// serveUserKeysQuery is POST /user/keys/query for this server's users.
func (s *Service) serveUserKeysQuery(r *http.Request) (any, error) {
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if _, err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.DeviceKeys == nil {
		return nil, matrixhttp.MissingParam("device_keys is required")
	}
	if len(body.DeviceKeys) > maxKeyQueryUsers {
		return nil, matrixhttp.InvalidParam("Too many users")
	}
	req := &keyserverv1.QueryKeysRequest{}
	for userID, devices := range body.DeviceKeys {
		if u, err := spec.NewUserID(userID, true); err == nil && u.Domain() == s.server {
			req.Users = append(req.Users, &keyserverv1.UserDevices{UserId: userID, DeviceIds: devices})
		}
	}
	deviceKeys := map[string]map[string]json.RawMessage{}
	master := map[string]json.RawMessage{}
	selfSigning := map[string]json.RawMessage{}
	if len(req.Users) > 0 {
		resp, err := s.e2e.QueryKeys(r.Context(), req)
		if err != nil {
			return nil, err
		}
		for userID, uk := range resp.GetUsers() {
			devs := map[string]json.RawMessage{}
			for id, d := range uk.GetDevices() {
				devs[id] = withDisplayName(d.GetKeys(), d.GetDisplayName())
			}
			deviceKeys[userID] = devs
			if len(uk.GetMasterKey()) > 0 {
				master[userID] = uk.GetMasterKey()
			}
			if len(uk.GetSelfSigningKey()) > 0 {
				selfSigning[userID] = uk.GetSelfSigningKey()
			}
		}
	}
	return map[string]any{"device_keys": deviceKeys, "master_keys": master, "self_signing_keys": selfSigning}, nil
}

// withDisplayName adds unsigned.device_display_name to a device's keys.
func withDisplayName(keys []byte, name string) json.RawMessage {
	if name == "" {
		return keys
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(keys, &obj) != nil {
		return keys
	}
	unsigned := map[string]json.RawMessage{}
	if raw, ok := obj["unsigned"]; ok {
		_ = json.Unmarshal(raw, &unsigned)
	}
	n, _ := json.Marshal(name)
	unsigned["device_display_name"] = n
	obj["unsigned"], _ = json.Marshal(unsigned)
	out, err := json.Marshal(obj)
	if err != nil {
		return keys
	}
	return out
}

// serveUserKeysClaim is POST /user/keys/claim for this server's users.
func (s *Service) serveUserKeysClaim(r *http.Request) (any, error) {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if _, err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.OneTimeKeys == nil {
		return nil, matrixhttp.MissingParam("one_time_keys is required")
	}
	req := &keyserverv1.ClaimKeysRequest{}
	for userID, devices := range body.OneTimeKeys {
		if u, err := spec.NewUserID(userID, true); err != nil || u.Domain() != s.server {
			continue
		}
		for device, algorithm := range devices {
			req.Claims = append(req.Claims, &keyserverv1.ClaimKey{UserId: userID, DeviceId: device, Algorithm: algorithm})
		}
	}
	if len(req.Claims) > maxKeyQueryUsers*10 {
		return nil, matrixhttp.InvalidParam("Too many keys claimed")
	}
	out := map[string]map[string]map[string]json.RawMessage{}
	if len(req.Claims) > 0 {
		resp, err := s.e2e.ClaimKeys(r.Context(), req)
		if err != nil {
			return nil, err
		}
		for _, k := range resp.GetKeys() {
			if out[k.GetUserId()] == nil {
				out[k.GetUserId()] = map[string]map[string]json.RawMessage{}
			}
			if out[k.GetUserId()][k.GetDeviceId()] == nil {
				out[k.GetUserId()][k.GetDeviceId()] = map[string]json.RawMessage{}
			}
			out[k.GetUserId()][k.GetDeviceId()][k.GetKeyId()] = k.GetKey()
		}
	}
	return map[string]any{"one_time_keys": out}, nil
}
