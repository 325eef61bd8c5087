package users

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

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// routes are the admin, moderation, support and TURN endpoints.
func (s *Admin) routes() []httpapi.Route {
	const synapseAdmin = "/_synapse/admin/v1"
	rts := []httpapi.Route{
		// Synapse-compatible admin API.
		{Method: http.MethodGet, Path: synapseAdmin + "/register", Abs: true, Limit: httpapi.LimitRegister, Serve: s.adminRegisterNonce},
		{Method: http.MethodPost, Path: synapseAdmin + "/register", Abs: true, Limit: httpapi.LimitRegister, Serve: s.adminRegister},
		{Method: http.MethodGet, Path: synapseAdmin + "/registration_tokens", Abs: true, Auth: true, Serve: s.listRegistrationTokens},
		{Method: http.MethodPost, Path: synapseAdmin + "/registration_tokens/new", Abs: true, Auth: true, Serve: s.createRegistrationToken},
		{Method: http.MethodGet, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.getRegistrationToken},
		{Method: http.MethodPut, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.updateRegistrationToken},
		{Method: http.MethodDelete, Path: synapseAdmin + "/registration_tokens/{token}", Abs: true, Auth: true, Serve: s.deleteRegistrationToken},

		{Method: http.MethodGet, Path: "/voip/turnServer", Auth: true, Serve: s.turnServer},
	}
	for _, kind := range []string{"lock", "suspend"} {
		rts = append(rts,
			httpapi.Route{Method: http.MethodGet, Path: "/_matrix/client/v1/admin/" + kind + "/{userId}", Abs: true, Auth: true, Serve: s.getModeration(kind)},
			httpapi.Route{Method: http.MethodPut, Path: "/_matrix/client/v1/admin/" + kind + "/{userId}", Abs: true, Auth: true, Serve: s.putModeration(kind)},
		)
	}
	return append(rts,
		httpapi.Route{Method: http.MethodGet, Path: "/admin/whois/{userId}", Auth: true, Serve: s.whois},
		httpapi.Route{Method: http.MethodGet, Path: "/.well-known/matrix/support", Abs: true, Serve: s.support},
	)
}

// moderationTarget checks an admin moderation request: the caller is an
// admin (before any lookup, so that accounts cannot be enumerated), the
// target is a local, active account that is not an admin.
func (s *Admin) moderationTarget(r *http.Request, dev *httpapi.Device) (string, accounts.Moderation, error) {
	if !dev.IsAdmin {
		return "", accounts.Moderation{}, matrixhttp.Forbidden("Only server administrators may do this")
	}
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return "", accounts.Moderation{}, err
	}
	lp, ok := s.localpartOf(userID)
	if !ok || userID == lp {
		return "", accounts.Moderation{}, matrixhttp.InvalidParam("The user is not a user of this server")
	}
	m, err := s.accounts.AccountModeration(r.Context(), lp)
	if errors.Is(err, store.ErrNotFound) {
		return "", accounts.Moderation{}, matrixhttp.NotFound("No such active user")
	} else if err != nil {
		return "", accounts.Moderation{}, err
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
func (s *Admin) getModeration(kind string) httpapi.HandlerFunc {
	return func(r *http.Request, dev *httpapi.Device) (any, error) {
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
func (s *Admin) putModeration(kind string) httpapi.HandlerFunc {
	field := moderationField(kind)
	return func(r *http.Request, dev *httpapi.Device) (any, error) {
		var body map[string]*bool
		if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &body); err != nil {
			return nil, err
		}
		on := body[field]
		if on == nil {
			return nil, matrixhttp.MissingParam(field + " is required")
		}
		if userID, _ := httpapi.PathParam(r, "userId"); userID == dev.UserID {
			return nil, matrixhttp.Forbidden("You cannot " + kind + " your own account")
		}
		lp, m, err := s.moderationTarget(r, dev)
		if err != nil {
			return nil, err
		}
		if m.Admin {
			return nil, matrixhttp.Forbidden("Administrators cannot be locked or suspended")
		}
		if err := s.accounts.SetModeration(r.Context(), lp, field, *on); err != nil {
			return nil, err
		}
		return map[string]bool{field: *on}, nil
	}
}

// whois is GET /admin/whois/{userId}: the user's devices and their last
// seen connection, for server admins and for the user themself.
func (s *Admin) whois(r *http.Request, dev *httpapi.Device) (any, error) {
	userID, err := httpapi.PathParam(r, "userId")
	if err != nil {
		return nil, err
	}
	if !dev.IsAdmin && userID != dev.UserID {
		return nil, matrixhttp.Forbidden("Only server administrators may look up other users")
	}
	devices, err := s.accounts.Devices(r.Context(), userID)
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
func (s *Admin) support(*http.Request, *httpapi.Device) (any, error) {
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
