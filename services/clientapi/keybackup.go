package clientapi

// Server-side key backups (client-server API, "Server-side key backups"):
// /room_keys/version[/{version}] and /room_keys/keys[/{roomId}[/{sessionId}]].
// The server keeps the backups' data opaque (store/keybackup.go): it only
// compares the metadata of two keys for one session to keep the better one,
// and accepts writes to the user's latest version only (403
// M_WRONG_ROOM_KEYS_VERSION naming the current one).

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func (s *Service) keyBackupRoutes() []route {
	rts := []route{
		{method: http.MethodPost, path: "/room_keys/version", auth: true, serve: s.createBackupVersion},
		{method: http.MethodGet, path: "/room_keys/version", auth: true, serve: s.getBackupVersion},
		{method: http.MethodGet, path: "/room_keys/version/{version}", auth: true, serve: s.getBackupVersion},
		{method: http.MethodPut, path: "/room_keys/version/{version}", auth: true, serve: s.updateBackupVersion},
		{method: http.MethodDelete, path: "/room_keys/version/{version}", auth: true, serve: s.deleteBackupVersion},
	}
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		rts = append(rts,
			route{method: http.MethodPut, path: p, auth: true, serve: s.putBackupKeys},
			route{method: http.MethodGet, path: p, auth: true, serve: s.getBackupKeys},
			route{method: http.MethodDelete, path: p, auth: true, serve: s.deleteBackupKeys},
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

func (b backupVersionBody) check() error {
	if b.Algorithm == "" {
		return matrixhttp.MissingParam("algorithm is required")
	}
	if len(b.AuthData) == 0 || b.AuthData[0] != '{' {
		return matrixhttp.BadJSON("auth_data must be an object")
	}
	return nil
}

// createBackupVersion is POST /room_keys/version.
func (s *Service) createBackupVersion(r *http.Request, dev *device) (any, error) {
	var req backupVersionBody
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	v, err := s.store.CreateBackupVersion(r.Context(), dev.UserID, req.Algorithm, req.AuthData)
	if err != nil {
		return nil, err
	}
	return map[string]string{"version": strconv.FormatInt(v, 10)}, nil
}

// getBackupVersion is GET /room_keys/version[/{version}].
func (s *Service) getBackupVersion(r *http.Request, dev *device) (any, error) {
	var version int64
	if p := chiParam(r, "version"); p != "" {
		var err error
		if version, err = backupVersionParam(p); err != nil {
			return nil, err
		}
	}
	b, err := s.store.Reader().BackupVersionInfo(r.Context(), dev.UserID, version)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
	}
	return map[string]any{
		"algorithm": b.Algorithm, "auth_data": b.AuthData, "count": b.Count,
		"etag": strconv.FormatInt(b.Etag, 10), "version": strconv.FormatInt(b.Version, 10),
	}, nil
}

// updateBackupVersion is PUT /room_keys/version/{version}: only auth_data
// changes.
func (s *Service) updateBackupVersion(r *http.Request, dev *device) (any, error) {
	version, err := backupVersionParam(chiParam(r, "version"))
	if err != nil {
		return nil, err
	}
	var req backupVersionBody
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	if req.Version != "" && req.Version != strconv.FormatInt(version, 10) {
		return nil, matrixhttp.InvalidParam("version in the body differs from the path")
	}
	ctx := r.Context()
	b, err := s.store.Reader().BackupVersionInfo(ctx, dev.UserID, version)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
	}
	if b.Algorithm != req.Algorithm {
		return nil, matrixhttp.InvalidParam("algorithm differs from the backup's")
	}
	if err := s.store.UpdateBackupAuthData(ctx, dev.UserID, version, req.AuthData); errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deleteBackupVersion is DELETE /room_keys/version/{version}.
func (s *Service) deleteBackupVersion(r *http.Request, dev *device) (any, error) {
	version, err := backupVersionParam(chiParam(r, "version"))
	if err != nil {
		return nil, err
	}
	if err := s.store.DeleteBackupVersion(r.Context(), dev.UserID, version); errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
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
	return version, chiParam(r, "roomId"), chiParam(r, "sessionId"), nil
}

// putBackupKeys is PUT /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Service) putBackupKeys(r *http.Request, dev *device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	keys := map[string]map[string]store.BackupKey{}
	switch {
	case session != "":
		var k store.BackupKey
		if err := decodeBody(r, bodyRequired, &k); err != nil {
			return nil, err
		}
		keys[room] = map[string]store.BackupKey{session: k}
	case room != "":
		var body struct {
			Sessions map[string]store.BackupKey `json:"sessions"`
		}
		if err := decodeBody(r, bodyRequired, &body); err != nil {
			return nil, err
		}
		keys[room] = body.Sessions
	default:
		var body struct {
			Rooms map[string]struct {
				Sessions map[string]store.BackupKey `json:"sessions"`
			} `json:"rooms"`
		}
		if err := decodeBody(r, bodyRequired, &body); err != nil {
			return nil, err
		}
		for rm, v := range body.Rooms {
			keys[rm] = v.Sessions
		}
	}
	for _, sessions := range keys {
		for _, k := range sessions {
			if len(k.SessionData) == 0 || k.SessionData[0] != '{' {
				return nil, matrixhttp.BadJSON("session_data must be an object")
			}
		}
	}
	etag, count, err := s.store.PutBackupKeys(r.Context(), dev.UserID, version, keys)
	var wrong store.ErrWrongBackupVersion
	if errors.As(err, &wrong) {
		if wrong.Current == 0 {
			return nil, matrixhttp.NotFound("No backup version exists")
		}
		e := matrixhttp.Errorf(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION", "Keys can only be written to the current backup version")
		e.Extra = map[string]any{"current_version": strconv.FormatInt(wrong.Current, 10)}
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{"etag": strconv.FormatInt(etag, 10), "count": count}, nil
}

// getBackupKeys is GET /room_keys/keys[/{roomId}[/{sessionId}]].
func (s *Service) getBackupKeys(r *http.Request, dev *device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	keys, err := s.store.Reader().BackupKeys(r.Context(), dev.UserID, version, room, session)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
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
			sessions = map[string]store.BackupKey{}
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
func (s *Service) deleteBackupKeys(r *http.Request, dev *device) (any, error) {
	version, room, session, err := backupKeysScope(r)
	if err != nil {
		return nil, err
	}
	etag, count, err := s.store.DeleteBackupKeys(r.Context(), dev.UserID, version, room, session)
	if errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.NotFound("No such backup version")
	} else if err != nil {
		return nil, err
	}
	return map[string]any{"etag": strconv.FormatInt(etag, 10), "count": count}, nil
}
