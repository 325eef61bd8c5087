// Package httpapi is the client-API's HTTP edge: the route type, the
// middleware every route goes through (request text checks,
// authentication, guest and moderation rules, rate limits), request
// decoding, and the one place where errors become Matrix error responses
// (WriteError, with FromGRPC's table for peer services' statuses). The
// domain packages declare their routes with it and know nothing else of
// HTTP serving.
package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/metrics"
	"github.com/myelin-chat/myelin/pkg/ratelimit"
)

// HandlerFunc serves one endpoint. It returns the 200 response body or an
// error; *matrixhttp.Error values go to the client as they are, anything
// else is logged and becomes M_UNKNOWN. dev is nil for endpoints without
// authentication.
type HandlerFunc func(r *http.Request, dev *Device) (any, error)

// Created is a handler's response that created what it names: written
// with 201 Created (PUT /devices/{deviceId} creating a device) instead of
// 200.
type Created struct{ Body any }

// Route is one row of a route table.
type Route struct {
	Method string
	// Path below /_matrix/client/{v3,r0}, or absolute when Abs is set.
	Path string
	Abs  bool
	Auth bool
	// OptionalAuth authenticates the request when it carries a token
	// (dev stays nil when it does not); guests pass.
	OptionalAuth bool
	Limit        LimitClass
	Serve        HandlerFunc
}

// ClientPrefixes are the versioned prefixes every relative route is served under.
var ClientPrefixes = []string{"/_matrix/client/v3", "/_matrix/client/r0"}

// Server serves routes: it authenticates, applies the guest and
// moderation rules and the rate limits, and writes responses and errors.
type Server struct {
	log     *zap.Logger
	tokens  TokenLookup
	limiter *ratelimit.Limiter
	// trustForwardedFor: rate-limit unauthenticated requests by
	// X-Forwarded-For.
	trustForwardedFor bool
	// appservices are the application services whose as_tokens are
	// accepted (nil: none); asUsers resolves the users they act as.
	appservices *appservice.Set
	asUsers     AppserviceUsers
}

// NewServer returns the edge for the routes of one client-API.
func NewServer(log *zap.Logger, tokens TokenLookup, limits RateLimitConfig, now func() time.Time) *Server {
	return &Server{log: log, tokens: tokens, limiter: NewRateLimiter(limits, now), trustForwardedFor: limits.TrustForwardedFor}
}

// Mount serves routes on r below the given top-level paths. The routes
// live on their own router that matches on the escaped request path, so
// path parameters such as state keys may contain encoded '/'. extra adds
// handlers that are not routes (HTML pages) to that router.
func (s *Server) Mount(r chi.Router, routes []Route, extra func(chi.Router), paths ...string) {
	mux := chi.NewRouter()
	mux.Use(metrics.RecordRoute, escapedRoutePath)
	mux.NotFound(matrixhttp.NotFoundHandler)
	mux.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	for _, rt := range routes {
		h := s.Handler(rt)
		if rt.Abs {
			mux.Method(rt.Method, rt.Path, h)
			continue
		}
		for _, prefix := range ClientPrefixes {
			mux.Method(rt.Method, prefix+rt.Path, h)
		}
	}
	if extra != nil {
		extra(mux)
	}
	// A fresh routing context for our router: the parent's would make chi
	// reuse the parent's (unescaped) route path.
	entry := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mux.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), chi.RouteCtxKey, (*chi.Context)(nil))))
	})
	for _, p := range paths {
		r.Handle(p, entry)
	}
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

// Handler adds authentication, rate limiting and error writing to a
// route's handler.
func (s *Server) Handler(rt Route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Parameters no store can hold (invalid UTF-8, U+0000) are refused
		// before they reach one.
		if err := matrixhttp.CheckRequestText(r.URL.EscapedPath(), r.URL.Query()); err != nil {
			s.WriteError(w, r, err)
			return
		}
		var dev *Device
		if _, hasToken := RequestToken(r); rt.Auth || (rt.OptionalAuth && hasToken) {
			d, err := s.Authenticate(r)
			if err != nil {
				s.WriteError(w, r, err)
				return
			}
			dev = d
			if rt.Auth && dev.IsGuest && !guestAllowed(rt) {
				s.WriteError(w, r, GuestForbidden("Guest access is not allowed on this endpoint"))
				return
			}
		}
		if dev != nil {
			if err := moderationCheck(rt, r, dev); err != nil {
				s.WriteError(w, r, err)
				return
			}
		}
		// Admins and unlimited application services are not rate limited.
		if rt.Limit != LimitNone && s.rateLimited(r, dev) {
			key := ClientIP(r, s.trustForwardedFor)
			if dev != nil {
				key = dev.UserID
			}
			if ok, wait := s.limiter.Allow(string(rt.Limit), key); !ok {
				s.WriteError(w, r, matrixhttp.LimitExceeded(max(wait.Milliseconds(), 1)))
				return
			}
		}
		resp, err := rt.Serve(r, dev)
		if err != nil {
			s.WriteError(w, r, err)
			return
		}
		status := http.StatusOK
		if c, ok := resp.(Created); ok {
			status, resp = http.StatusCreated, c.Body
		}
		matrixhttp.WriteJSON(w, status, resp)
	})
}

// WriteError writes a handler's error (the package function WriteError).
func (s *Server) WriteError(w http.ResponseWriter, r *http.Request, err error) {
	WriteError(s.log, w, r, err)
}

// WriteError writes a handler's error: UIA challenges as 401 bodies,
// Matrix errors as they are, anything else as M_UNKNOWN, logged to log.
func WriteError(log *zap.Logger, w http.ResponseWriter, r *http.Request, err error) {
	var uia *UIAChallenge
	if errors.As(err, &uia) {
		matrixhttp.WriteJSON(w, http.StatusUnauthorized, uia.Body())
		return
	}
	var me *matrixhttp.Error
	if !errors.As(err, &me) {
		if r.Context().Err() == nil {
			log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		}
	}
	matrixhttp.WriteError(w, err)
}

// QueryInt parses an optional integer query parameter.
func QueryInt(r *http.Request, name string, def int64) (int64, error) {
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
