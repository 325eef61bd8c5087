package clientapi

// Account moderation and server contact discovery: the admin lock and
// suspend endpoints (GET/PUT /_matrix/client/v1/admin/{lock,suspend}/{userId}),
// GET /v3/admin/whois/{userId}, and GET /.well-known/matrix/support.
//
// A locked account gets 401 M_USER_LOCKED with soft_logout on everything
// but /logout and /logout/all, and keeps its tokens. A suspended account
// may read, leave, redact, manage devices and keys, and log out, but not
// create, join or knock on rooms, invite, kick, ban, unban, upgrade rooms,
// send events other than redactions, set state, change its profile, or
// redact other users' events
// (403 M_USER_SUSPENDED): the spec's recommended set, enforced in wrap from
// suspendedBlocked, and in redact.

import (
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

func (s *Service) moderationRoutes() []route {
	var rts []route
	for _, kind := range []string{"lock", "suspend"} {
		rts = append(rts,
			route{method: http.MethodGet, path: "/_matrix/client/v1/admin/" + kind + "/{userId}", abs: true, auth: true, serve: s.getModeration(kind)},
			route{method: http.MethodPut, path: "/_matrix/client/v1/admin/" + kind + "/{userId}", abs: true, auth: true, serve: s.putModeration(kind)},
		)
	}
	return append(rts,
		route{method: http.MethodGet, path: "/admin/whois/{userId}", auth: true, serve: s.whois},
		route{method: http.MethodGet, path: "/.well-known/matrix/support", abs: true, serve: s.support},
	)
}

// lockedAllowed are the routes a locked account may still use.
var lockedAllowed = map[string]bool{"POST /logout": true, "POST /logout/all": true}

// suspendedBlocked are the routes a suspended account may not use.
var suspendedBlocked = map[string]bool{
	"POST /createRoom":                                 true,
	"POST /join/{roomIdOrAlias}":                       true,
	"POST /rooms/{roomId}/join":                        true,
	"POST /knock/{roomIdOrAlias}":                      true,
	"POST /rooms/{roomId}/invite":                      true,
	"POST /rooms/{roomId}/kick":                        true,
	"POST /rooms/{roomId}/ban":                         true,
	"POST /rooms/{roomId}/unban":                       true,
	"POST /rooms/{roomId}/upgrade":                     true,
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":     true, // redactions excepted
	"PUT /rooms/{roomId}/state/{eventType}":            true,
	"PUT /rooms/{roomId}/state/{eventType}/":           true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey}": true,
	"PUT /profile/{userId}/{keyName}":                  true,
	"DELETE /profile/{userId}/{keyName}":               true,
}

// moderationCheck is what wrap asks of an authenticated request: a locked
// or suspended account's refusal, or nil.
func moderationCheck(rt route, r *http.Request, dev *device) error {
	key := rt.method + " " + rt.path
	if dev.Locked && !lockedAllowed[key] {
		return errLocked()
	}
	// /send of a redaction is allowed (redact checks whose event it is);
	// every other blocked route is blocked whatever its event type.
	isRedaction := key == sendRoute && chi.URLParam(r, "eventType") == "m.room.redaction"
	if dev.Suspended && suspendedBlocked[key] && !isRedaction {
		return errSuspended()
	}
	return nil
}

const sendRoute = "PUT /rooms/{roomId}/send/{eventType}/{txnId}"

func errLocked() error {
	e := matrixhttp.Errorf(http.StatusUnauthorized, "M_USER_LOCKED", "This account has been locked")
	e.Extra = map[string]any{"soft_logout": true}
	return e
}

func errSuspended() error {
	return matrixhttp.Errorf(http.StatusForbidden, "M_USER_SUSPENDED", "You cannot perform this action while suspended")
}

// moderationTarget checks an admin moderation request: the caller is an
// admin (before any lookup, so that accounts cannot be enumerated), the
// target is a local, active account that is not an admin.
func (s *Service) moderationTarget(r *http.Request, dev *device) (string, store.Moderation, error) {
	if !dev.IsAdmin {
		return "", store.Moderation{}, matrixhttp.Forbidden("Only server administrators may do this")
	}
	userID, err := pathParam(r, "userId")
	if err != nil {
		return "", store.Moderation{}, err
	}
	lp, ok := s.localpartOf(userID)
	if !ok || userID == lp {
		return "", store.Moderation{}, matrixhttp.InvalidParam("The user is not a user of this server")
	}
	m, err := s.store.Reader().AccountModeration(r.Context(), lp)
	if errors.Is(err, store.ErrNotFound) {
		return "", store.Moderation{}, matrixhttp.NotFound("No such active user")
	} else if err != nil {
		return "", store.Moderation{}, err
	}
	return lp, m, nil
}

func moderationField(kind string) string {
	if kind == "lock" {
		return "locked"
	}
	return "suspended"
}

// getModeration is GET /v1/admin/{lock,suspend}/{userId}.
func (s *Service) getModeration(kind string) handlerFunc {
	return func(r *http.Request, dev *device) (any, error) {
		_, m, err := s.moderationTarget(r, dev)
		if err != nil {
			return nil, err
		}
		on := m.Locked
		if kind == "suspend" {
			on = m.Suspended
		}
		return map[string]bool{moderationField(kind): on}, nil
	}
}

// putModeration is PUT /v1/admin/{lock,suspend}/{userId}.
func (s *Service) putModeration(kind string) handlerFunc {
	field := moderationField(kind)
	return func(r *http.Request, dev *device) (any, error) {
		var body map[string]*bool
		if err := decodeBody(r, bodyRequired, &body); err != nil {
			return nil, err
		}
		on := body[field]
		if on == nil {
			return nil, matrixhttp.MissingParam(field + " is required")
		}
		if userID, _ := pathParam(r, "userId"); userID == dev.UserID {
			return nil, matrixhttp.Forbidden("You cannot " + kind + " your own account")
		}
		lp, m, err := s.moderationTarget(r, dev)
		if err != nil {
			return nil, err
		}
		if m.Admin {
			return nil, matrixhttp.Forbidden("Administrators cannot be locked or suspended")
		}
		if err := s.store.SetModeration(r.Context(), lp, field, *on); err != nil {
			return nil, err
		}
		return map[string]bool{field: *on}, nil
	}
}

// whois is GET /admin/whois/{userId}: the user's devices and their last
// seen connection, for server admins and for the user themself.
func (s *Service) whois(r *http.Request, dev *device) (any, error) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	if !dev.IsAdmin && userID != dev.UserID {
		return nil, matrixhttp.Forbidden("Only server administrators may look up other users")
	}
	devices, err := s.store.Devices(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, d := range devices {
		var conns []map[string]any
		if d.LastSeenTS != nil {
			c := map[string]any{"last_seen": *d.LastSeenTS}
			if d.LastSeenIP != nil {
				c["ip"] = *d.LastSeenIP
			}
			conns = append(conns, c)
		}
		if conns == nil {
			conns = []map[string]any{}
		}
		out[d.DeviceID] = map[string]any{"sessions": []map[string]any{{"connections": conns}}}
	}
	return map[string]any{"user_id": userID, "devices": out}, nil
}

// support is GET /.well-known/matrix/support, from client_api.support (404
// when neither contacts nor a page are configured).
func (s *Service) support(*http.Request, *device) (any, error) {
	cfg := s.cfg.Support
	if len(cfg.Contacts) == 0 && cfg.SupportPage == "" {
		return nil, matrixhttp.NotFound("No support information is configured")
	}
	out := map[string]any{}
	if len(cfg.Contacts) > 0 {
		contacts := make([]map[string]string, 0, len(cfg.Contacts))
		for _, c := range cfg.Contacts {
			m := map[string]string{"role": c.Role}
			if c.MatrixID != "" {
				m["matrix_id"] = c.MatrixID
			}
			if c.Email != "" {
				m["email_address"] = c.Email
			}
			contacts = append(contacts, m)
		}
		out["contacts"] = contacts
	}
	if cfg.SupportPage != "" {
		out["support_page"] = cfg.SupportPage
	}
	return out, nil
}
