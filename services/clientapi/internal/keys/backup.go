package keys

// Server-side key backups (client-server API, "Server-side key backups"):
// /room_keys/version[/{version}] and /room_keys/keys[/{roomId}[/{sessionId}]].
// The backups live in the key-server (E2EKeyService), which keeps their
// data opaque, keeps the better key of a session and accepts writes to the
// user's latest version only (403 M_WRONG_ROOM_KEYS_VERSION naming the
// current one); these handlers parse, call it and render.

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

func (s *Service) keyBackupRoutes() []httpapi.Route {
	rts := []httpapi.Route{
		{Method: http.MethodPost, Path: "/room_keys/version", Auth: true, Serve: s.needKeys(s.createBackupVersion)},
		{Method: http.MethodGet, Path: "/room_keys/version", Auth: true, Serve: s.needKeys(s.getBackupVersion)},
		{Method: http.MethodGet, Path: "/room_keys/version/{version}", Auth: true, Serve: s.needKeys(s.getBackupVersion)},
		{Method: http.MethodPut, Path: "/room_keys/version/{version}", Auth: true, Serve: s.needKeys(s.updateBackupVersion)},
		{Method: http.MethodDelete, Path: "/room_keys/version/{version}", Auth: true, Serve: s.needKeys(s.deleteBackupVersion)},
	}
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		rts = append(rts,
			httpapi.Route{Method: http.MethodPut, Path: p, Auth: true, Serve: s.needKeys(s.putBackupKeys)},
			httpapi.Route{Method: http.MethodGet, Path: p, Auth: true, Serve: s.needKeys(s.getBackupKeys)},
			httpapi.Route{Method: http.MethodDelete, Path: p, Auth: true, Serve: s.needKeys(s.deleteBackupKeys)},
		)
	}
	return rts
}

// backupVersionParam parses a version (a decimal string here); a malformed
// one names no backup.
func backupVersionParam(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, matrixhttp.NotFound("Unknown backup version")
	}
	return n, nil
}

type backupVersionBody struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   string          `json:"version"`
}

// createBackupVersion is POST /room_keys/version.
func (s *Service) createBackupVersion(r *http.Request, dev *httpapi.Device) (any, error) {
	var req backupVersionBody
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	resp, err := s.e2e.CreateBackupVersion(ctx, &keyserverv1.CreateBackupVersionRequest{UserId: dev.UserID, Algorithm: req.Algorithm, AuthData: req.AuthData})
	if err != nil {
		return nil, s.keysError(ctx, "CreateBackupVersion", err)
	}
	return map[string]string{"version": strconv.FormatInt(resp.GetVersion(), 10)}, nil
}

// getBackupVersion is GET /room_keys/version[/{version}].
func (s *Service) getBackupVersion(r *http.Request, dev *httpapi.Device) (any, error) {
	var version int64
	if p := httpapi.ChiParam(r, "version"); p != "" {
		var err error
		if version, err = backupVersionParam(p); err != nil {
			return nil, err
		}
	}
	ctx := r.Context()
	b, err := s.e2e.GetBackupVersion(ctx, &keyserverv1.GetBackupVersionRequest{UserId: dev.UserID, Version: version})
	if err != nil {
		return nil, s.keysError(ctx, "GetBackupVersion", err)
	}
	return map[string]any{
		"algorithm": b.GetAlgorithm(), "auth_data": json.RawMessage(b.GetAuthData()), "count": b.GetCount(),
		"etag": strconv.FormatInt(b.GetEtag(), 10), "version": strconv.FormatInt(b.GetVersion(), 10),
	}, nil
}

// updateBackupVersion is PUT /room_keys/version/{version}: only auth_data
// changes.
func (s *Service) updateBackupVersion(r *http.Request, dev *httpapi.Device) (any, error) {
	version, err := backupVersionParam(httpapi.ChiParam(r, "version"))
	if err != nil {
		return nil, err
	}
	var req backupVersionBody
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Version != "" && req.Version != strconv.FormatInt(version, 10) {
		return nil, matrixhttp.InvalidParam("version in the body differs from the path")
	}
	ctx := r.Context()
	_, err = s.e2e.UpdateBackupVersion(ctx, &keyserverv1.UpdateBackupVersionRequest{UserId: dev.UserID, Version: version, Algorithm: req.Algorithm, AuthData: req.AuthData})
	if err != nil {
		return nil, s.keysError(ctx, "UpdateBackupVersion", err)
	}
	return struct{}{}, nil
}

// deleteBackupVersion is DELETE /room_keys/version/{version}.
func (s *Service) deleteBackupVersion(r *http.Request, dev *httpapi.Device) (any, error) {
	version, err := backupVersionParam(httpapi.ChiParam(r, "version"))
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	if _, err := s.e2e.DeleteBackupVersion(ctx, &keyserverv1.DeleteBackupVersionRequest{UserId: dev.UserID, Version: version}); err != nil {
		return nil, s.keysError(ctx, "DeleteBackupVersion", err)
	}
	return struct{}{}, nil
}

// backupKeysScope reads ?version, {roomId} and {sessionId}.
func backupKeysScope(r *http.Request) (version int64, room, session string, err error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return 0, "", "", matrixhttp.MissingParam("version is required")
	}
	if version, err = backupVersionParam(v); err != nil {
		return 0, "", "", err
	}
	return version, httpapi.ChiParam(r, "roomId"), httpapi.ChiParam(r, "sessionId"), nil
}

// backupKey is one session's key in a backup, as clients send and get it.
type backupKey struct {
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (k backupKey) toProto(room, session string) *keyserverv1.BackupKey {
	return &keyserverv1.BackupKey{RoomId: room, SessionId: session, FirstMessageIndex: k.FirstMessageIndex,
		ForwardedCount: k.ForwardedCount, IsVerified: k.IsVerified, SessionData: k.SessionData}
}

func backupKeyOf(k *keyserverv1.BackupKey) backupKey {
	return backupKey{FirstMessageIndex: k.GetFirstMessageIndex(), ForwardedCount: k.GetForwardedCount(),
		IsVerified: k.GetIsVerified(), SessionData: k.GetSessionData()}
}

// putBackupKeys is PUT /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Service) putBackupKeys(r *http.Request, dev *httpapi.Device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	req := &keyserverv1.PutBackupKeysRequest{UserId: dev.UserID, Version: version}
	switch {
	case session != "":
		var k backupKey
		if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &k); err != nil {
			return nil, err
		}
		req.Keys = append(req.Keys, k.toProto(room, session))
	case room != "":
		var body struct {
			Sessions map[string]backupKey `json:"sessions"`
		}
		if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
			return nil, err
		}
		for sess, k := range body.Sessions {
			req.Keys = append(req.Keys, k.toProto(room, sess))
		}
	default:
		var body struct {
			Rooms map[string]struct {
				Sessions map[string]backupKey `json:"sessions"`
			} `json:"rooms"`
		}
		if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
			return nil, err
		}
		for rm, v := range body.Rooms {
			for sess, k := range v.Sessions {
				req.Keys = append(req.Keys, k.toProto(rm, sess))
			}
		}
	}
	ctx := r.Context()
	tag, err := s.e2e.PutBackupKeys(ctx, req)
	if err != nil {
		return nil, s.keysError(ctx, "PutBackupKeys", err)
	}
	return map[string]any{"etag": strconv.FormatInt(tag.GetEtag(), 10), "count": tag.GetCount()}, nil
}

// getBackupKeys is GET /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Service) getBackupKeys(r *http.Request, dev *httpapi.Device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	resp, err := s.e2e.GetBackupKeys(ctx, &keyserverv1.GetBackupKeysRequest{UserId: dev.UserID, Version: version, RoomId: room, SessionId: session})
	if err != nil {
		return nil, s.keysError(ctx, "GetBackupKeys", err)
	}
	keys := map[string]map[string]backupKey{}
	for _, k := range resp.GetKeys() {
		if keys[k.GetRoomId()] == nil {
			keys[k.GetRoomId()] = map[string]backupKey{}
		}
		keys[k.GetRoomId()][k.GetSessionId()] = backupKeyOf(k)
	}
	switch {
	case session != "":
		k, ok := keys[room][session]
		if !ok {
			return nil, matrixhttp.NotFound("No key for this session in the backup")
		}
		return k, nil
	case room != "":
		sessions := keys[room]
		if sessions == nil {
			sessions = map[string]backupKey{}
		}
		return map[string]any{"sessions": sessions}, nil
	}
	rooms := map[string]any{}
	for rm, sessions := range keys {
		rooms[rm] = map[string]any{"sessions": sessions}
	}
	return map[string]any{"rooms": rooms}, nil
}

// deleteBackupKeys is DELETE /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Service) deleteBackupKeys(r *http.Request, dev *httpapi.Device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	tag, err := s.e2e.DeleteBackupKeys(ctx, &keyserverv1.DeleteBackupKeysRequest{UserId: dev.UserID, Version: version, RoomId: room, SessionId: session})
	if err != nil {
		return nil, s.keysError(ctx, "DeleteBackupKeys", err)
	}
	return map[string]any{"etag": strconv.FormatInt(tag.GetEtag(), 10), "count": tag.GetCount()}, nil
}
