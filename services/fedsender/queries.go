package fedsender

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
)

// Queries of other servers on behalf of local users.

func (s *Service) queryProfile(ctx context.Context, req *fedsenderv1.QueryProfileRequest) (*fedsenderv1.QueryProfileResponse, error) {
	user, err := spec.NewUserID(req.GetUserId(), true)
	if err != nil || user.Domain() == s.serverName {
		return nil, fmt.Errorf("%w: %q is not a user of another server", ErrBadRequest, req.GetUserId())
	}
	switch req.GetField() {
	case "", "displayname", "avatar_url":
	default:
		return nil, fmt.Errorf("%w: field %q", ErrBadRequest, req.GetField())
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	q := url.Values{"user_id": {user.String()}}
	if req.GetField() != "" {
		q.Set("field", req.GetField())
	}
	var out map[string]json.RawMessage
	if err := s.query(ctx, fc, id, user.Domain(), http.MethodGet, "/_matrix/federation/v1/query/profile?"+q.Encode(), nil, &out); err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(out)
	return &fedsenderv1.QueryProfileResponse{Profile: raw}, nil
}

func (s *Service) queryDirectory(ctx context.Context, req *fedsenderv1.QueryDirectoryRequest) (*fedsenderv1.QueryDirectoryResponse, error) {
	alias := req.GetRoomAlias()
	_, server, err := gomatrixserverlib.SplitID('#', alias)
	if err != nil || server == s.serverName {
		return nil, fmt.Errorf("%w: %q is not an alias of another server", ErrBadRequest, alias)
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var out fclient.RespDirectory
	if err := s.query(ctx, fc, id, server, http.MethodGet, "/_matrix/federation/v1/query/directory?"+url.Values{"room_alias": {alias}}.Encode(), nil, &out); err != nil {
		return nil, err
	}
	if _, err := spec.NewRoomID(out.RoomID); err != nil {
		return nil, badResponse(string(server), "room_id %q", out.RoomID)
	}
	resp := &fedsenderv1.QueryDirectoryResponse{RoomId: out.RoomID}
	for _, srv := range out.Servers {
		resp.Servers = append(resp.Servers, string(srv))
	}
	return resp, nil
}

func (s *Service) queryPublicRooms(ctx context.Context, req *fedsenderv1.QueryPublicRoomsRequest) (*fedsenderv1.QueryPublicRoomsResponse, error) {
	server := req.GetServerName()
	if len(s.serverList([]string{server})) != 1 {
		return nil, fmt.Errorf("%w: %q is not another server", ErrBadRequest, server)
	}
	if req.GetLimit() < 0 {
		return nil, fmt.Errorf("%w: negative limit", ErrBadRequest)
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var out fclient.RespPublicRooms
	path := "/_matrix/federation/v1/publicRooms"
	if len(req.GetFilter()) == 0 && !req.GetIncludeAllNetworks() && req.GetThirdPartyInstanceId() == "" {
		q := url.Values{}
		if req.GetLimit() > 0 {
			q.Set("limit", strconv.Itoa(int(req.GetLimit())))
		}
		if req.GetSince() != "" {
			q.Set("since", req.GetSince())
		}
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		err = s.query(ctx, fc, id, spec.ServerName(server), http.MethodGet, path, nil, &out)
	} else {
		body := map[string]any{}
		if len(req.GetFilter()) > 0 {
			var filter map[string]any
			if json.Unmarshal(req.GetFilter(), &filter) != nil || filter == nil {
				return nil, fmt.Errorf("%w: filter is not a JSON object", ErrBadRequest)
			}
			body["filter"] = filter
		}
		if req.GetLimit() > 0 {
			body["limit"] = req.GetLimit()
		}
		if req.GetSince() != "" {
			body["since"] = req.GetSince()
		}
		if req.GetIncludeAllNetworks() {
			body["include_all_networks"] = true
		}
		if req.GetThirdPartyInstanceId() != "" {
			body["third_party_instance_id"] = req.GetThirdPartyInstanceId()
		}
		err = s.query(ctx, fc, id, spec.ServerName(server), http.MethodPost, path, body, &out)
	}
	if err != nil {
		return nil, err
	}
	if out.Chunk == nil {
		out.Chunk = []fclient.PublicRoom{}
	}
	raw, _ := json.Marshal(out)
	return &fedsenderv1.QueryPublicRoomsResponse{Response: raw}, nil
}

func (s *Service) queryHierarchy(ctx context.Context, req *fedsenderv1.QueryHierarchyRequest) (*fedsenderv1.QueryHierarchyResponse, error) {
	roomID, err := spec.NewRoomID(req.GetRoomId())
	if err != nil {
		return nil, fmt.Errorf("%w: room ID %q", ErrBadRequest, req.GetRoomId())
	}
	servers := s.serverList(req.GetServerNames())
	if len(servers) == 0 {
		return nil, fmt.Errorf("%w: no server to ask", ErrBadRequest)
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID.String())
	if req.GetSuggestedOnly() {
		path += "?suggested_only=true"
	}
	var errs []error
	for _, server := range servers {
		var out fclient.RoomHierarchyResponse
		err := s.query(ctx, fc, id, spec.ServerName(server), http.MethodGet, path, nil, &out)
		if err == nil && out.Room.RoomID != roomID.String() {
			err = badResponse(server, "the hierarchy of %q, not %q", out.Room.RoomID, roomID)
		}
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		raw, _ := json.Marshal(out)
		return &fedsenderv1.QueryHierarchyResponse{Response: raw, ServerName: server}, nil
	}
	return nil, bestError(errs)
}

func (s *Service) queryUserDevices(ctx context.Context, req *fedsenderv1.QueryUserDevicesRequest) (*fedsenderv1.QueryUserDevicesResponse, error) {
	user, err := spec.NewUserID(req.GetUserId(), true)
	if err != nil || user.Domain() == s.serverName {
		return nil, fmt.Errorf("%w: %q is not a user of another server", ErrBadRequest, req.GetUserId())
	}
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	var out fclient.RespUserDevices
	if err := s.query(ctx, fc, id, user.Domain(), http.MethodGet, "/_matrix/federation/v1/user/devices/"+url.PathEscape(user.String()), nil, &out); err != nil {
		return nil, err
	}
	if out.UserID != user.String() {
		return nil, badResponse(string(user.Domain()), "the devices of %q, not %q", out.UserID, user)
	}
	if out.Devices == nil {
		out.Devices = []fclient.RespUserDevice{}
	}
	raw, _ := json.Marshal(out)
	return &fedsenderv1.QueryUserDevicesResponse{Response: raw}, nil
}

// query makes one request of a server and classifies its failure; an
// answer resets the destination's backoff.
func (s *Service) query(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName,
	method, path string, body, out any) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := signedRequest(rctx, fc, id, method, server, path, body, out); err != nil {
		return remoteErr(ctx, string(server), err)
	}
	s.sender.answered(string(server))
	return nil
}

// End-to-end keys of remote users: each server asked in parallel, its
// failure reported per server as /keys/query and /keys/claim do.

const defaultKeysTimeout = 10 * time.Second

func (s *Service) queryKeys(ctx context.Context, req *fedsenderv1.QueryKeysRequest) (*fedsenderv1.QueryKeysResponse, error) {
	var want map[string][]string
	if err := json.Unmarshal(req.GetDeviceKeys(), &want); err != nil || want == nil {
		return nil, fmt.Errorf("%w: device_keys is not a JSON object of user IDs to device ID lists", ErrBadRequest)
	}
	byServer := map[spec.ServerName]map[string][]string{}
	for user, devices := range want {
		u, err := spec.NewUserID(user, true)
		if err != nil || u.Domain() == s.serverName {
			return nil, fmt.Errorf("%w: %q is not a user of another server", ErrBadRequest, user)
		}
		if byServer[u.Domain()] == nil {
			byServer[u.Domain()] = map[string][]string{}
		}
		if devices == nil {
			devices = []string{}
		}
		byServer[u.Domain()][user] = devices
	}
	merged := fclient.RespQueryKeys{DeviceKeys: map[string]map[string]fclient.DeviceKeys{},
		MasterKeys: map[string]fclient.CrossSigningKey{}, SelfSigningKeys: map[string]fclient.CrossSigningKey{}}
	failures, err := perServer(s, ctx, req.GetTimeoutMs(), byServer, func(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName, users map[string][]string, mu *sync.Mutex) error {
		var out fclient.RespQueryKeys
		if err := s.query(ctx, fc, id, server, http.MethodPost, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": users}, &out); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		// Only the asked server's own users are taken from its answer.
		for user, devices := range out.DeviceKeys {
			if _, asked := users[user]; asked {
				merged.DeviceKeys[user] = devices
			}
		}
		for user, k := range out.MasterKeys {
			if _, asked := users[user]; asked {
				merged.MasterKeys[user] = k
			}
		}
		for user, k := range out.SelfSigningKeys {
			if _, asked := users[user]; asked {
				merged.SelfSigningKeys[user] = k
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(merged)
	return &fedsenderv1.QueryKeysResponse{Response: raw, Failures: failures}, nil
}

func (s *Service) claimKeys(ctx context.Context, req *fedsenderv1.ClaimKeysRequest) (*fedsenderv1.ClaimKeysResponse, error) {
	var want map[string]map[string]string
	if err := json.Unmarshal(req.GetOneTimeKeys(), &want); err != nil || want == nil {
		return nil, fmt.Errorf("%w: one_time_keys is not a JSON object of user IDs to device IDs to algorithms", ErrBadRequest)
	}
	byServer := map[spec.ServerName]map[string]map[string]string{}
	for user, devices := range want {
		u, err := spec.NewUserID(user, true)
		if err != nil || u.Domain() == s.serverName {
			return nil, fmt.Errorf("%w: %q is not a user of another server", ErrBadRequest, user)
		}
		if byServer[u.Domain()] == nil {
			byServer[u.Domain()] = map[string]map[string]string{}
		}
		byServer[u.Domain()][user] = devices
	}
	merged := map[string]map[string]map[string]json.RawMessage{}
	failures, err := perServer(s, ctx, req.GetTimeoutMs(), byServer, func(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName, users map[string]map[string]string, mu *sync.Mutex) error {
		var out fclient.RespClaimKeys
		if err := s.query(ctx, fc, id, server, http.MethodPost, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": users}, &out); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for user, devices := range out.OneTimeKeys {
			if _, asked := users[user]; asked {
				merged[user] = devices
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(map[string]any{"one_time_keys": merged})
	return &fedsenderv1.ClaimKeysResponse{Response: raw, Failures: failures}, nil
}

// perServer runs ask for every server in parallel, each bounded by
// timeoutMs (0: 10 s), and returns the failures as /keys/query's
// failures map: server name → JSON error object.
func perServer[T any](s *Service, ctx context.Context, timeoutMs int64, byServer map[spec.ServerName]T,
	ask func(ctx context.Context, fc fclient.FederationClient, id *fclient.SigningIdentity, server spec.ServerName, v T, mu *sync.Mutex) error) (map[string][]byte, error) {
	fc, id, err := s.clients(ctx)
	if err != nil {
		return nil, err
	}
	timeout := defaultKeysTimeout
	if timeoutMs > 0 {
		timeout = time.Duration(timeoutMs) * time.Millisecond
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	failures := map[string][]byte{}
	servers := make([]spec.ServerName, 0, len(byServer))
	for server := range byServer {
		servers = append(servers, server)
	}
	slices.Sort(servers)
	for _, server := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := ask(sctx, fc, id, server, byServer[server], &mu); err != nil {
				body, _ := json.Marshal(failureObject(err))
				mu.Lock()
				failures[string(server)] = body
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return failures, nil
}
