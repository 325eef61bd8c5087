package keyserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// serveKeys answers GET /_matrix/key/v2/server with the server's keys,
// signed by the current key, as the server-server spec requires.
func (s *Service) serveKeys(w http.ResponseWriter, r *http.Request) {
	raw, err := s.ownKeyResponse(time.Now())
	if err != nil {
		s.log.Error("sign server keys", zap.Error(err))
		matrixhttp.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
}

// ownKeyResponse is this server's key response, self-signed.
func (s *Service) ownKeyResponse(now time.Time) ([]byte, error) {
	raw, err := json.Marshal(s.keysBody(now))
	if err == nil {
		raw, _, _, err = s.sign(raw)
	}
	return raw, err
}

// maxNotaryBody bounds a POST /_matrix/key/v2/query body.
const maxNotaryBody = 1 << 20

// serveQueryOne answers GET /_matrix/key/v2/query/{serverName} as a notary.
func (s *Service) serveQueryOne(w http.ResponseWriter, r *http.Request) {
	server := spec.ServerName(chi.URLParam(r, "serverName"))
	if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
		matrixhttp.WriteError(w, matrixhttp.InvalidParam("serverName is not a server name"))
		return
	}
	var minValid int64
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			matrixhttp.WriteError(w, matrixhttp.InvalidParam("minimum_valid_until_ts must be a non-negative integer"))
			return
		}
		minValid = n
	}
	s.answerNotaryQuery(r.Context(), w, map[spec.ServerName]map[gomatrixserverlib.KeyID]spec.Timestamp{
		server: {"": spec.Timestamp(minValid)},
	})
}

// serveQueryBatch answers POST /_matrix/key/v2/query as a notary.
func (s *Service) serveQueryBatch(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxNotaryBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			matrixhttp.WriteError(w, matrixhttp.Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body too large"))
			return
		}
		matrixhttp.WriteError(w, matrixhttp.BadJSON("Could not read the request body"))
		return
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		matrixhttp.WriteError(w, matrixhttp.NotJSON("The body is not a JSON object"))
		return
	}
	var req struct {
		ServerKeys map[spec.ServerName]map[gomatrixserverlib.KeyID]struct {
			MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if _, ok := obj["server_keys"]; !ok {
		matrixhttp.WriteError(w, matrixhttp.BadJSON("server_keys is required"))
		return
	}
	if err := json.Unmarshal(body, &req); err != nil {
		matrixhttp.WriteError(w, matrixhttp.BadJSON("server_keys must map server names to key IDs to query criteria"))
		return
	}
	if len(req.ServerKeys) > maxQueriedServers {
		matrixhttp.WriteError(w, matrixhttp.InvalidParam("too many servers in one query"))
		return
	}
	query := map[spec.ServerName]map[gomatrixserverlib.KeyID]spec.Timestamp{}
	for server, keys := range req.ServerKeys {
		if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
			matrixhttp.WriteError(w, matrixhttp.InvalidParam("server_keys names something that is not a server name"))
			return
		}
		query[server] = map[gomatrixserverlib.KeyID]spec.Timestamp{}
		if len(keys) == 0 {
			query[server][""] = 0
		}
		for id, crit := range keys {
			var minValid int64
			if crit.MinimumValidUntilTS != nil {
				if *crit.MinimumValidUntilTS < 0 {
					matrixhttp.WriteError(w, matrixhttp.InvalidParam("minimum_valid_until_ts must not be negative"))
					return
				}
				minValid = *crit.MinimumValidUntilTS
			}
			query[server][id] = spec.Timestamp(minValid)
		}
	}
	s.answerNotaryQuery(r.Context(), w, query)
}

// answerNotaryQuery serves, for each server asked about, its last key
// response as the server signed it, with this server's signature added.
// A response is fetched again first when there is none, when it does not
// reach the asked minimum_valid_until_ts, or when half its lifetime has
// passed (the spec's advice to notaries); when the server cannot be
// reached, the last response is served anyway, so that old events'
// signatures can still be checked. Servers without any response are left
// out.
func (s *Service) answerNotaryQuery(ctx context.Context, w http.ResponseWriter, query map[spec.ServerName]map[gomatrixserverlib.KeyID]spec.Timestamp) {
	now := time.Now()
	out := struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}{ServerKeys: []json.RawMessage{}}
	wants := map[spec.ServerName][]want{}
	var servers []string
	for server, keys := range query {
		if server == s.server {
			raw, err := s.ownKeyResponse(now)
			if err != nil {
				s.log.Error("sign server keys", zap.Error(err))
				matrixhttp.WriteError(w, err)
				return
			}
			out.ServerKeys = append(out.ServerKeys, raw)
			continue
		}
		for id, minValid := range keys {
			if minValid == 0 {
				minValid = spec.AsTimestamp(now)
			}
			wants[server] = append(wants[server], want{server: server, keyID: id, minValid: minValid})
		}
		servers = append(servers, string(server))
	}
	if len(servers) > 0 {
		responses, err := s.store.KeyResponses(ctx, servers)
		if err == nil {
			var stale []spec.ServerName
			for server, ws := range wants {
				if needsRefresh(responses[string(server)], ws, now) && s.remote.mayFetch(server) {
					stale = append(stale, server)
				}
			}
			if len(stale) > 0 {
				if err = s.remote.fetchAll(ctx, stale, wants); err == nil {
					responses, err = s.store.KeyResponses(ctx, servers)
				}
			}
		}
		if err != nil {
			s.log.Error("notary query", zap.Error(err))
			matrixhttp.WriteError(w, matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "Server keys are unavailable"))
			return
		}
		key := s.current()
		for _, server := range servers {
			resp, ok := responses[server]
			if !ok {
				continue
			}
			signed, err := gomatrixserverlib.SignJSON(string(s.server), gomatrixserverlib.KeyID(key.ID), key.Private, resp.JSON)
			if err != nil {
				s.log.Warn("cannot sign a stored key response", zap.String("server", server), zap.Error(err))
				continue
			}
			out.ServerKeys = append(out.ServerKeys, signed)
		}
	}
	matrixhttp.WriteJSON(w, http.StatusOK, out)
}

// needsRefresh: no response, one that expires before a want's minimum, or
// one past half its lifetime.
func needsRefresh(resp store.KeyResponse, ws []want, now time.Time) bool {
	if resp.JSON == nil {
		return true
	}
	for _, w := range ws {
		if spec.Timestamp(resp.ValidUntilTS) < w.minValid {
			return true
		}
	}
	lifetime := time.UnixMilli(resp.ValidUntilTS).Sub(resp.FetchedAt)
	return now.After(resp.FetchedAt.Add(lifetime / 2))
}
