package clientapi

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/metrics"
)

// handlerFunc serves one endpoint. It returns the 200 response body or an
// error; *matrixhttp.Error values go to the client as they are, anything
// else is logged and becomes M_UNKNOWN. dev is nil for endpoints without
// authentication.
type handlerFunc func(r *http.Request, dev *device) (any, error)

// route is one row of the route table.
type route struct {
	method string
	// path below /_matrix/client/{v3,r0}, or absolute when abs is set.
	path  string
	abs   bool
	auth  bool
	limit limitClass
	serve handlerFunc
}

// clientPrefixes are the versioned prefixes every relative route is served under.
var clientPrefixes = []string{"/_matrix/client/v3", "/_matrix/client/r0"}

// routes is the client-API's route table.
func (s *Service) routes() []route {
	return slices.Concat(s.coreRoutes(), s.ephemeralRoutes(), s.searchRoutes(), s.pushRoutes(), s.keyRoutes(), s.keyBackupRoutes(), s.extraRoutes(), s.moderationRoutes())
}

// coreRoutes are the routes defined in this file.
func (s *Service) coreRoutes() []route {
	return []route{
		// Discovery.
		{method: http.MethodGet, path: "/_matrix/client/versions", abs: true, serve: s.versions},
		{method: http.MethodGet, path: "/.well-known/matrix/client", abs: true, serve: s.wellKnown},
		{method: http.MethodGet, path: "/capabilities", auth: true, serve: s.capabilities},

		// Accounts.
		{method: http.MethodPost, path: "/register", limit: limitRegister, serve: s.register},
		{method: http.MethodGet, path: "/register/available", limit: limitRegister, serve: s.registerAvailable},
		{method: http.MethodGet, path: "/login", serve: s.loginFlows},
		{method: http.MethodPost, path: "/login", limit: limitLogin, serve: s.login},
		{method: http.MethodPost, path: "/logout", auth: true, serve: s.logout},
		{method: http.MethodPost, path: "/logout/all", auth: true, serve: s.logoutAll},
		{method: http.MethodGet, path: "/account/whoami", auth: true, serve: s.whoami},

		// Rooms.
		{method: http.MethodPost, path: "/createRoom", auth: true, limit: limitCreateRoom, serve: s.createRoom},
		{method: http.MethodPost, path: "/join/{roomIdOrAlias}", auth: true, serve: s.joinRoomIDOrAlias},
		{method: http.MethodPost, path: "/rooms/{roomId}/join", auth: true, serve: s.joinRoom},
		{method: http.MethodPost, path: "/rooms/{roomId}/invite", auth: true, serve: s.invite},
		{method: http.MethodPost, path: "/rooms/{roomId}/leave", auth: true, serve: s.leave},
		{method: http.MethodGet, path: "/joined_rooms", auth: true, serve: s.joinedRooms},
		{method: http.MethodGet, path: "/directory/room/{roomAlias}", serve: s.getAlias},
		{method: http.MethodPut, path: "/directory/room/{roomAlias}", auth: true, serve: s.putAlias},
		{method: http.MethodDelete, path: "/directory/room/{roomAlias}", auth: true, serve: s.deleteAlias},
		{method: http.MethodGet, path: "/rooms/{roomId}/aliases", auth: true, serve: s.roomAliases},
		{method: http.MethodGet, path: "/directory/list/room/{roomId}", serve: s.getVisibility},
		{method: http.MethodPut, path: "/directory/list/room/{roomId}", auth: true, serve: s.putVisibility},
		{method: http.MethodGet, path: "/publicRooms", serve: s.publicRoomsGet},
		{method: http.MethodPost, path: "/publicRooms", auth: true, serve: s.publicRoomsPost},

		// Membership beyond join/invite/leave (membership.go) and member lists (members.go).
		{method: http.MethodPost, path: "/rooms/{roomId}/kick", auth: true, serve: s.kick},
		{method: http.MethodPost, path: "/rooms/{roomId}/ban", auth: true, serve: s.ban},
		{method: http.MethodPost, path: "/rooms/{roomId}/unban", auth: true, serve: s.unban},
		{method: http.MethodPost, path: "/rooms/{roomId}/forget", auth: true, serve: s.forget},
		{method: http.MethodPost, path: "/knock/{roomIdOrAlias}", auth: true, serve: s.knock},
		{method: http.MethodGet, path: "/rooms/{roomId}/members", auth: true, serve: s.members},
		{method: http.MethodGet, path: "/rooms/{roomId}/joined_members", auth: true, serve: s.joinedMembers},
		{method: http.MethodPost, path: "/rooms/{roomId}/upgrade", auth: true, limit: limitCreateRoom, serve: s.upgradeRoom},
		{method: http.MethodGet, path: "/_matrix/client/v1/rooms/{roomId}/hierarchy", abs: true, auth: true, serve: s.hierarchy},

		// Events.
		{method: http.MethodPut, path: "/rooms/{roomId}/send/{eventType}/{txnId}", auth: true, limit: limitSend, serve: s.send},
		{method: http.MethodPut, path: "/rooms/{roomId}/state/{eventType}", auth: true, limit: limitSend, serve: s.putState},
		{method: http.MethodPut, path: "/rooms/{roomId}/state/{eventType}/", auth: true, limit: limitSend, serve: s.putState},
		{method: http.MethodPut, path: "/rooms/{roomId}/state/{eventType}/{stateKey}", auth: true, limit: limitSend, serve: s.putState},
		{method: http.MethodGet, path: "/rooms/{roomId}/state", auth: true, serve: s.getAllState},
		{method: http.MethodGet, path: "/rooms/{roomId}/state/{eventType}", auth: true, serve: s.getState},
		{method: http.MethodGet, path: "/rooms/{roomId}/state/{eventType}/", auth: true, serve: s.getState},
		{method: http.MethodGet, path: "/rooms/{roomId}/state/{eventType}/{stateKey}", auth: true, serve: s.getState},
		{method: http.MethodGet, path: "/rooms/{roomId}/messages", auth: true, serve: s.messages},
		{method: http.MethodGet, path: "/rooms/{roomId}/event/{eventId}", auth: true, serve: s.getEvent},
		{method: http.MethodGet, path: "/rooms/{roomId}/context/{eventId}", auth: true, serve: s.eventContext},
		{method: http.MethodPut, path: "/rooms/{roomId}/redact/{eventId}/{txnId}", auth: true, limit: limitSend, serve: s.redact},
		{method: http.MethodGet, path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}", abs: true, auth: true, serve: s.relations},
		{method: http.MethodGet, path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}", abs: true, auth: true, serve: s.relations},
		{method: http.MethodGet, path: "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", abs: true, auth: true, serve: s.relations},
		{method: http.MethodGet, path: "/_matrix/client/v1/rooms/{roomId}/threads", abs: true, auth: true, serve: s.threads},

		// Sync.
		{method: http.MethodGet, path: "/sync", auth: true, serve: s.sync},
		{method: http.MethodPost, path: "/user/{userId}/filter", auth: true, serve: s.createFilter},
		{method: http.MethodGet, path: "/user/{userId}/filter/{filterId}", auth: true, serve: s.getFilter},
		{method: http.MethodPut, path: "/sendToDevice/{eventType}/{txnId}", auth: true, serve: s.sendToDevice},
	}
}

// RegisterHTTP mounts the client-server API on r. The routes live on their
// own router that matches on the escaped request path, so path parameters
// such as state keys may contain encoded '/'.
func (s *Service) RegisterHTTP(r chi.Router) {
	mux := chi.NewRouter()
	mux.Use(metrics.RecordRoute, escapedRoutePath)
	mux.NotFound(matrixhttp.NotFoundHandler)
	mux.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	for _, rt := range append(s.routes(), s.accountRoutes()...) {
		h := s.wrap(rt)
		if rt.abs {
			mux.Method(rt.method, rt.path, h)
			continue
		}
		for _, prefix := range clientPrefixes {
			mux.Method(rt.method, prefix+rt.path, h)
		}
	}
	s.mountFallbackPages(mux)
	// A fresh routing context for our router: the parent's would make chi
	// reuse the parent's (unescaped) route path.
	entry := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mux.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), chi.RouteCtxKey, (*chi.Context)(nil))))
	})
	r.Handle("/_matrix/client/*", entry)
	r.Handle("/.well-known/matrix/client", entry)
	r.Handle("/.well-known/matrix/support", entry)
	r.Handle("/_synapse/admin/*", entry)
	r.Handle(loginFallbackPath, entry)
}

// escapedRoutePath makes chi route on the escaped path.
func escapedRoutePath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			rctx.RoutePath = r.URL.EscapedPath()
		}
		next.ServeHTTP(w, r)
	})
}

// wrap adds authentication, rate limiting and error writing to a handler.
func (s *Service) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Parameters no store can hold (invalid UTF-8, U+0000) are refused
		// before they reach one.
		if err := matrixhttp.CheckRequestText(r.URL.EscapedPath(), r.URL.Query()); err != nil {
			s.writeError(w, r, err)
			return
		}
		var dev *device
		if rt.auth {
			d, err := s.authenticate(r)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			dev = d
			if dev.IsGuest && !guestAllowed(rt) {
				s.writeError(w, r, guestForbidden("Guest access is not allowed on this endpoint"))
				return
			}
		}
		if dev != nil {
			if err := moderationCheck(rt, r, dev); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		// Admins are not rate limited.
		if rt.limit != limitNone && (dev == nil || !dev.IsAdmin) {
			key := clientIP(r, s.cfg.RateLimit.TrustForwardedFor)
			if dev != nil {
				key = dev.UserID
			}
			if ok, wait := s.limiter.Allow(string(rt.limit), key); !ok {
				s.writeError(w, r, matrixhttp.LimitExceeded(max(wait.Milliseconds(), 1)))
				return
			}
		}
		resp, err := rt.serve(r, dev)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		matrixhttp.WriteJSON(w, http.StatusOK, resp)
	})
}

// writeError writes a handler's error: UIA challenges as 401 bodies,
// Matrix errors as they are, anything else as a logged M_UNKNOWN.
func (s *Service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var uia *uiaChallenge
	if errors.As(err, &uia) {
		matrixhttp.WriteJSON(w, http.StatusUnauthorized, uia.body())
		return
	}
	var me *matrixhttp.Error
	if !errors.As(err, &me) {
		if r.Context().Err() == nil {
			s.log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		}
	}
	matrixhttp.WriteError(w, err)
}

// queryInt parses an optional integer query parameter.
func queryInt(r *http.Request, name string, def int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, matrixhttp.InvalidParam("Query parameter " + name + " must be an integer")
	}
	return n, nil
}
