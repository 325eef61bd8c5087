package fedreceiver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// handlerFunc answers a federation request: a value to write as JSON
// with 200, or an error (errors.go turns it into a Matrix error).
type handlerFunc func(r *http.Request) (any, error)

// routes registers the federation API. Everything but /version and
// /openid/userinfo needs X-Matrix (federation.Authenticator); unknown
// paths and methods are the router's 404/405 M_UNRECOGNIZED.
func (s *Service) routes(r chi.Router) {
	const v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
	m := &memberships{Service: s}
	r.Get(v1+"/version", s.serve(s.serveVersion))
	r.Get(v1+"/openid/userinfo", s.serve(s.serveOpenIDUserInfo))
	r.Group(func(r chi.Router) {
		r.Use(s.auth.Middleware)
		r.Put(v1+"/send/{txnId}", s.serveSend)

		r.Get(v1+"/event/{eventId}", s.serve(s.serveEvent))
		r.Get(v1+"/state/{roomId}", s.serve(s.serveState))
		r.Get(v1+"/state_ids/{roomId}", s.serve(s.serveStateIDs))
		r.Get(v1+"/backfill/{roomId}", s.serve(s.serveBackfill))
		r.Post(v1+"/get_missing_events/{roomId}", s.serve(s.serveGetMissingEvents))
		r.Get(v1+"/event_auth/{roomId}/{eventId}", s.serve(s.serveEventAuth))
		r.Get(v1+"/timestamp_to_event/{roomId}", s.serve(s.serveTimestampToEvent))

		r.Get(v1+"/make_join/{roomId}/{userId}", s.serve(m.serveMakeJoin))
		r.Put(v1+"/send_join/{roomId}/{eventId}", s.serve(m.serveSendJoinV1))
		r.Put(v2+"/send_join/{roomId}/{eventId}", s.serve(m.serveSendJoinV2))
		r.Get(v1+"/make_leave/{roomId}/{userId}", s.serve(m.serveMakeLeave))
		r.Put(v1+"/send_leave/{roomId}/{eventId}", s.serve(m.serveSendLeaveV1))
		r.Put(v2+"/send_leave/{roomId}/{eventId}", s.serve(m.serveSendLeaveV2))
		r.Get(v1+"/make_knock/{roomId}/{userId}", s.serve(m.serveMakeKnock))
		r.Put(v1+"/send_knock/{roomId}/{eventId}", s.serve(m.serveSendKnock))
		r.Put(v1+"/invite/{roomId}/{eventId}", s.serve(m.serveInviteV1))
		r.Put(v2+"/invite/{roomId}/{eventId}", s.serve(m.serveInviteV2))

		r.Get(v1+"/query/profile", s.serve(s.serveQueryProfile))
		r.Get(v1+"/query/directory", s.serve(s.serveQueryDirectory))
		r.Get(v1+"/publicRooms", s.serve(s.servePublicRoomsGet))
		r.Post(v1+"/publicRooms", s.serve(s.servePublicRoomsPost))
		r.Get(v1+"/hierarchy/{roomId}", s.serve(s.serveHierarchy))

		r.Get(v1+"/user/devices/{userId}", s.serve(s.serveUserDevices))
		r.Post(v1+"/user/keys/query", s.serve(s.serveUserKeysQuery))
		r.Post(v1+"/user/keys/claim", s.serve(s.serveUserKeysClaim))
	})
}

// serve adapts a handlerFunc.
func (s *Service) serve(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		resp, err := h(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		matrixhttp.WriteJSON(w, http.StatusOK, resp)
	}
}

// writeError writes err as the Matrix error errors.go maps it to,
// logging what is not the caller's fault.
func (s *Service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	me := s.matrixError(r.Context(), err)
	if me.Status >= 500 {
		s.log.Warn("federation request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	matrixhttp.WriteError(w, me)
}

// pathParam reads a path parameter, unescaped (IDs may hold escaped
// characters such as '/' in room version 3 event IDs).
func pathParam(r *http.Request, name string) (string, error) {
	raw := chi.URLParam(r, name)
	v, err := url.PathUnescape(raw)
	if err != nil || v == "" {
		return "", matrixhttp.InvalidParam("Invalid " + name)
	}
	if err := matrixhttp.CheckText(v); err != nil {
		return "", matrixhttp.InvalidParam("Invalid " + name + ": " + err.Error())
	}
	return v, nil
}

// queryParam reads a query parameter (checked text).
func queryParam(r *http.Request, name string) (string, error) {
	v := r.URL.Query().Get(name)
	if err := matrixhttp.CheckText(v); err != nil {
		return "", matrixhttp.InvalidParam("Invalid " + name + ": " + err.Error())
	}
	return v, nil
}

// readBody reads a JSON object body: 400 M_NOT_JSON when it is not one,
// M_BAD_JSON when it holds what no store can keep (invalid UTF-8, U+0000)
// or duplicate keys.
func readBody(r *http.Request) ([]byte, error) { return readBodyChecked(r, true) }

// readBodyChecked is readBody, checking for duplicate keys only when
// dupCheck (/send checks each PDU on its own, so one bad PDU does not
// fail the transaction).
func readBodyChecked(r *http.Request, dupCheck bool) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, federation.DefaultMaxRequestBody+1))
	if err != nil {
		return nil, matrixhttp.BadJSON("Could not read the request body")
	}
	if !json.Valid(body) {
		return nil, matrixhttp.NotJSON("The body is not JSON")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, matrixhttp.NotJSON("The body is not a JSON object")
	}
	if err := matrixhttp.CheckJSONText(body); err != nil {
		return nil, matrixhttp.BadJSON(err.Error())
	}
	if dupCheck {
		if err := checkNoDuplicateKeys(body); err != nil {
			return nil, matrixhttp.BadJSON(err.Error())
		}
	}
	return body, nil
}

// decodeBody reads a JSON object body into v (400 M_BAD_JSON when the
// fields have the wrong types).
func decodeBody(r *http.Request, v any) ([]byte, error) { return decodeBodyChecked(r, v, true) }

// decodeBodyChecked is decodeBody with readBodyChecked's dupCheck.
func decodeBodyChecked(r *http.Request, v any, dupCheck bool) ([]byte, error) {
	body, err := readBodyChecked(r, dupCheck)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, matrixhttp.BadJSON("Field " + typeErr.Field + " has the wrong type")
		}
		return nil, matrixhttp.BadJSON("Malformed body")
	}
	return body, nil
}
