package keys

// End-to-end encryption keys (client-server API, "End-to-End Encryption",
// key management and cross-signing), for local users: POST /keys/upload,
// /keys/query, /keys/claim, GET /keys/changes, POST
// /keys/device_signing/upload and /keys/signatures/upload, and the /sync
// extensions (device_lists, device_one_time_keys_count,
// device_unused_fallback_key_types; internal/syncapi/keys.go).
//
// The keys live in the key-server (E2EKeyService): these handlers parse
// the request, call it and render its answer; the key-server checks and
// stores. What stays here is what needs memberships, which the client-API
// owns: who shares a room with whom, for /keys/changes and device_lists.
// Other servers' users' keys are asked of their servers through the
// federation sender (remote.go); without federation they are reported
// under failures.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func (s *Service) keyRoutes() []httpapi.Route {
	return []httpapi.Route{
		{Method: http.MethodPost, Path: "/keys/upload", Auth: true, Serve: s.needKeys(s.keysUpload)},
		{Method: http.MethodPost, Path: "/keys/query", Auth: true, Serve: s.needKeys(s.keysQuery)},
		{Method: http.MethodPost, Path: "/keys/claim", Auth: true, Serve: s.needKeys(s.keysClaim)},
		{Method: http.MethodGet, Path: "/keys/changes", Auth: true, Serve: s.needKeys(s.keysChanges)},
		{Method: http.MethodPost, Path: "/keys/device_signing/upload", Auth: true, Serve: s.needKeys(s.uploadCrossSigning)},
		{Method: http.MethodPost, Path: "/keys/signatures/upload", Auth: true, Serve: s.needKeys(s.uploadSignatures)},
	}
}

// defaultKeyAlgorithm is always reported in one-time key counts, as
// Synapse does: clients read its count to decide how many keys to upload.
const defaultKeyAlgorithm = "signed_curve25519"

func WithDefaultCount(counts map[string]int64) map[string]int64 {
	if counts == nil {
		counts = map[string]int64{}
	}
	if _, ok := counts[defaultKeyAlgorithm]; !ok {
		counts[defaultKeyAlgorithm] = 0
	}
	return counts
}

// e2eErrors is the one table that turns the key-server's E2EKeyError
// reasons into Matrix errors.
var e2eErrors = map[keyserverv1.E2EKeyError]func(msg string) *matrixhttp.Error{
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_BAD_JSON:      matrixhttp.BadJSON,
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_PARAM: matrixhttp.InvalidParam,
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_MISSING_PARAM: matrixhttp.MissingParam,
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_SIGNATURE: func(msg string) *matrixhttp.Error {
		return matrixhttp.Errorf(http.StatusBadRequest, "M_INVALID_SIGNATURE", "%s", msg)
	},
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_NOT_FOUND: matrixhttp.NotFound,
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_WRONG_BACKUP_VERSION: func(string) *matrixhttp.Error {
		return matrixhttp.Errorf(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION", "Keys can only be written to the current backup version")
	},
}

// keysError converts an error from an E2EKeyService call into a Matrix
// error: refusals by their E2EKeyError reason, anything else as fromGRPC
// does (an unreachable key-server is a 503).
func (s *Service) keysError(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok {
			continue
		}
		f, ok := e2eErrors[keyserverv1.E2EKeyError(keyserverv1.E2EKeyError_value[info.GetReason()])]
		if !ok {
			continue
		}
		e := f(st.Message())
		if v, ok := info.GetMetadata()["current_version"]; ok {
			e.Extra = map[string]any{"current_version": v}
		}
		return e
	}
	return s.fromGRPC(ctx, op, err, nil)
}

// failureReasons names the errcode of a refused item (signature uploads).
var failureReasons = map[keyserverv1.E2EKeyError]string{
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_BAD_JSON:          "M_BAD_JSON",
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_PARAM:     "M_INVALID_PARAM",
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_MISSING_PARAM:     "M_MISSING_PARAM",
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_INVALID_SIGNATURE: "M_INVALID_SIGNATURE",
	keyserverv1.E2EKeyError_E2E_KEY_ERROR_NOT_FOUND:         "M_NOT_FOUND",
}

// keyEntries turns an "algorithm:key_id" → key map into key entries.
func keyEntries(keys map[string]json.RawMessage) []*keyserverv1.KeyEntry {
	out := make([]*keyserverv1.KeyEntry, 0, len(keys))
	for id, k := range keys {
		out = append(out, &keyserverv1.KeyEntry{KeyId: id, Key: k})
	}
	return out
}

// keysUpload is POST /keys/upload.
func (s *Service) keysUpload(r *http.Request, dev *httpapi.Device) (any, error) {
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	up := &keyserverv1.UploadKeysRequest{UserId: dev.UserID, DeviceId: dev.DeviceID,
		OneTimeKeys: keyEntries(req.OneTimeKeys), FallbackKeys: keyEntries(req.FallbackKeys)}
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		up.DeviceKeys = req.DeviceKeys
		// The key-server shows the device's name with its keys.
		d, err := s.accounts.Device(ctx, dev.UserID, dev.DeviceID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		if d.DisplayName != nil {
			up.DeviceDisplayName = *d.DisplayName
		}
	}
	resp, err := s.e2e.UploadKeys(ctx, up)
	if err != nil {
		return nil, s.keysError(ctx, "UploadKeys", err)
	}
	return map[string]any{"one_time_key_counts": WithDefaultCount(resp.GetOneTimeKeyCounts())}, nil
}

// remoteFailure is what /keys/query and /keys/claim report for another
// server's users: it cannot be reached without federation.
var remoteFailure = map[string]any{"status": http.StatusServiceUnavailable, "message": "federation is not available on this server"}

// keysQuery is POST /keys/query.
func (s *Service) keysQuery(r *http.Request, dev *httpapi.Device) (any, error) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    int64               `json:"timeout"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	failures := map[string]any{}
	q := &keyserverv1.QueryKeysRequest{RequesterUserId: dev.UserID}
	remote := map[string][]string{}
	for user, devices := range req.DeviceKeys {
		switch server := clientevent.ServerOf(user); {
		case server == "":
			continue
		case server != s.serverName && s.fed != nil:
			remote[user] = devices
		case server != s.serverName:
			failures[server] = remoteFailure
		default:
			q.Users = append(q.Users, &keyserverv1.UserDevices{UserId: user, DeviceIds: devices})
		}
	}
	ctx := r.Context()
	deviceKeys := map[string]map[string]json.RawMessage{}
	master, self, userSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	if len(q.Users) > 0 {
		resp, err := s.e2e.QueryKeys(ctx, q)
		if err != nil {
			return nil, s.keysError(ctx, "QueryKeys", err)
		}
		for user, uk := range resp.GetUsers() {
			out := map[string]json.RawMessage{}
			for id, d := range uk.GetDevices() {
				raw, err := withDisplayName(d.GetKeys(), d.GetDisplayName())
				if err != nil {
					return nil, err
				}
				out[id] = raw
			}
			deviceKeys[user] = out
			if k := uk.GetMasterKey(); len(k) > 0 {
				master[user] = k
			}
			if k := uk.GetSelfSigningKey(); len(k) > 0 {
				self[user] = k
			}
			if k := uk.GetUserSigningKey(); len(k) > 0 {
				userSigning[user] = k
			}
		}
	}
	if len(remote) > 0 {
		if err := s.queryRemoteKeys(ctx, remote, req.Timeout, deviceKeys, master, self, failures); err != nil {
			return nil, err
		}
	}
	return map[string]any{
		"device_keys": deviceKeys, "failures": failures,
		"master_keys": master, "self_signing_keys": self, "user_signing_keys": userSigning,
	}, nil
}

// withDisplayName adds unsigned.device_display_name to a stored device
// keys object.
func withDisplayName(keys []byte, name string) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(keys, &obj); err != nil {
		return nil, err
	}
	unsigned := map[string]any{}
	if raw, ok := obj["unsigned"]; ok {
		_ = json.Unmarshal(raw, &unsigned)
	}
	if name != "" {
		unsigned["device_display_name"] = name
	} else {
		delete(unsigned, "device_display_name")
	}
	raw, err := json.Marshal(unsigned)
	if err != nil {
		return nil, err
	}
	obj["unsigned"] = raw
	return json.Marshal(obj)
}

// keysClaim is POST /keys/claim.
func (s *Service) keysClaim(r *http.Request, _ *httpapi.Device) (any, error) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     int64                        `json:"timeout"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	failures := map[string]any{}
	claim := &keyserverv1.ClaimKeysRequest{}
	remote := map[string]map[string]string{}
	for user, devices := range req.OneTimeKeys {
		switch server := clientevent.ServerOf(user); {
		case server == "":
		case server != s.serverName && s.fed != nil:
			remote[user] = devices
		case server != s.serverName:
			failures[server] = remoteFailure
		default:
			for device, algorithm := range devices {
				claim.Claims = append(claim.Claims, &keyserverv1.ClaimKey{UserId: user, DeviceId: device, Algorithm: algorithm})
			}
		}
	}
	claimed := map[string]map[string]map[string]json.RawMessage{}
	if len(claim.Claims) > 0 {
		ctx := r.Context()
		resp, err := s.e2e.ClaimKeys(ctx, claim)
		if err != nil {
			return nil, s.keysError(ctx, "ClaimKeys", err)
		}
		for _, k := range resp.GetKeys() {
			if claimed[k.GetUserId()] == nil {
				claimed[k.GetUserId()] = map[string]map[string]json.RawMessage{}
			}
			claimed[k.GetUserId()][k.GetDeviceId()] = map[string]json.RawMessage{k.GetKeyId(): k.GetKey()}
		}
	}
	if len(remote) > 0 {
		if err := s.claimRemoteKeys(r.Context(), remote, req.Timeout, claimed, failures); err != nil {
			return nil, err
		}
	}
	return map[string]any{"one_time_keys": claimed, "failures": failures}, nil
}

// keysChanges is GET /keys/changes: the users sharing a room with the
// requester whose device lists changed between two sync tokens, and those
// who stopped sharing every room with them in that range.
func (s *Service) keysChanges(r *http.Request, dev *httpapi.Device) (any, error) {
	from, err := clientevent.ParseStreamToken(r.URL.Query().Get("from"))
	if err != nil {
		return nil, matrixhttp.InvalidParam("from must be a sync token")
	}
	to, err := clientevent.ParseStreamToken(r.URL.Query().Get("to"))
	if err != nil {
		return nil, matrixhttp.InvalidParam("to must be a sync token")
	}
	ctx := r.Context()
	resp, err := s.e2e.KeyChanges(ctx, &keyserverv1.KeyChangesRequest{After: from.KPos, Upto: to.KPos})
	if err != nil {
		return nil, s.keysError(ctx, "KeyChanges", err)
	}
	changed := []string{}
	for _, u := range resp.GetUserIds() {
		if u == dev.UserID || s.notifier.SharesRoom(dev.UserID, u) {
			changed = append(changed, u)
		}
	}
	leavers, err := s.store.Reader().LeftSharedRooms(ctx, dev.UserID, from.Pos, to.Pos)
	if err != nil {
		return nil, err
	}
	left := []string{}
	for _, u := range leavers {
		if u != dev.UserID && !s.notifier.SharesRoom(dev.UserID, u) {
			left = append(left, u)
		}
	}
	slices.Sort(changed)
	slices.Sort(left)
	return map[string]any{"changed": changed, "left": left}, nil
}

// uploadCrossSigning is POST /keys/device_signing/upload. User-interactive
// auth is needed unless the user has no master key yet, or the request
// repeats the stored keys exactly (so a lost answer can be retried): the
// key-server decides, and stores nothing until the UIA is done.
func (s *Service) uploadCrossSigning(r *http.Request, dev *httpapi.Device) (any, error) {
	var auth *users.AuthData
	raw, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, matrixhttp.NotJSON("Body is not a JSON object")
	}
	if a, ok := fields["auth"]; ok && string(a) != "null" {
		auth = &users.AuthData{}
		if err := json.Unmarshal(a, auth); err != nil {
			return nil, matrixhttp.BadJSON("auth is not an object")
		}
	}
	ctx := r.Context()
	// Application services replace their users' keys without
	// user-interactive auth (spec v1.17, "Cross-signing").
	req := &keyserverv1.UploadCrossSigningKeysRequest{UserId: dev.UserID, Authenticated: dev.Appservice != nil,
		MasterKey: fields["master_key"], SelfSigningKey: fields["self_signing_key"], UserSigningKey: fields["user_signing_key"]}
	resp, err := s.e2e.UploadCrossSigningKeys(ctx, req)
	if err != nil {
		return nil, s.keysError(ctx, "UploadCrossSigningKeys", err)
	}
	if !resp.GetAuthRequired() {
		return struct{}{}, nil
	}
	sess, err := s.users.Accounts.RunUIA(ctx, users.PurposeCrossSigning, dev.UserID, auth)
	if err != nil {
		return nil, err
	}
	req.Authenticated = true
	if _, err := s.e2e.UploadCrossSigningKeys(ctx, req); err != nil {
		return nil, s.keysError(ctx, "UploadCrossSigningKeys", err)
	}
	if err := s.users.Accounts.FinishUIA(ctx, sess); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return struct{}{}, nil
}

// uploadSignatures is POST /keys/signatures/upload: the key-server checks
// each signature against the signer's key before it stores it; the ones
// that fail are reported under failures.
func (s *Service) uploadSignatures(r *http.Request, dev *httpapi.Device) (any, error) {
	var body map[string]map[string]json.RawMessage
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
		return nil, err
	}
	req := &keyserverv1.UploadSignaturesRequest{UserId: dev.UserID}
	for user, objs := range body {
		for keyID, obj := range objs {
			req.Objects = append(req.Objects, &keyserverv1.SignedObject{UserId: user, KeyId: keyID, Object: obj})
		}
	}
	ctx := r.Context()
	resp, err := s.e2e.UploadSignatures(ctx, req)
	if err != nil {
		return nil, s.keysError(ctx, "UploadSignatures", err)
	}
	failures := map[string]map[string]any{}
	for _, f := range resp.GetFailures() {
		code, ok := failureReasons[f.GetReason()]
		if !ok {
			code = "M_UNKNOWN"
		}
		if failures[f.GetUserId()] == nil {
			failures[f.GetUserId()] = map[string]any{}
		}
		failures[f.GetUserId()][f.GetKeyId()] = map[string]string{"errcode": code, "error": f.GetMessage()}
	}
	return map[string]any{"failures": failures}, nil
}
