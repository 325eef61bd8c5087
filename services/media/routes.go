package media

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/metrics"
)

// limitMedia is the rate limiter's class of uploads and creates.
const limitMedia = "media"

// handlerFunc serves one endpoint: a JSON body, a *contentResponse, or an
// error (*matrixhttp.Error as it is; anything else is logged and becomes
// M_UNKNOWN). c is nil for endpoints without authentication.
type handlerFunc func(r *http.Request, c *caller) (any, error)

// route is one row of the route table.
type route struct {
	method string
	path   string
	auth   bool
	// upload: rate limited, and refused to suspended accounts.
	upload bool
	// limited: rate limited like uploads (suspended accounts may).
	limited bool
	serve   handlerFunc
}

// routes is the content repository's route table.
func (s *Service) routes() []route {
	var rts []route
	for _, v := range []string{"v3", "r0"} {
		p := "/_matrix/media/" + v
		rts = append(rts,
			route{method: http.MethodPost, path: p + "/upload", auth: true, upload: true, serve: s.uploadMedia},
			route{method: http.MethodPut, path: p + "/upload/{serverName}/{mediaId}", auth: true, upload: true, serve: s.uploadCreatedMedia},
			route{method: http.MethodGet, path: p + "/config", auth: true, serve: s.mediaConfig},
			route{method: http.MethodGet, path: p + "/download/{serverName}/{mediaId}", serve: s.legacyDownload},
			route{method: http.MethodGet, path: p + "/download/{serverName}/{mediaId}/{fileName}", serve: s.legacyDownload},
			route{method: http.MethodGet, path: p + "/thumbnail/{serverName}/{mediaId}", serve: s.legacyThumbnail},
			route{method: http.MethodGet, path: p + "/preview_url", auth: true, limited: true, serve: s.previewURL},
		)
	}
	return append(rts,
		route{method: http.MethodPost, path: "/_matrix/media/v1/create", auth: true, upload: true, serve: s.createMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/config", auth: true, serve: s.mediaConfig},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/download/{serverName}/{mediaId}", auth: true, serve: s.downloadMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", auth: true, serve: s.downloadMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", auth: true, serve: s.thumbnailMedia},
		route{method: http.MethodGet, path: "/_matrix/client/v1/media/preview_url", auth: true, limited: true, serve: s.previewURL},
	)
}

// mountHTTP mounts the routes on r under /_matrix/media/ and
// /_matrix/client/v1/media/. They live on their own router that matches
// on the escaped request path, so a file name may contain an encoded '/'.
func (s *Service) mountHTTP(r chi.Router) {
	mux := chi.NewRouter()
	mux.Use(metrics.RecordRoute, escapedRoutePath)
	mux.NotFound(matrixhttp.NotFoundHandler)
	mux.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	for _, rt := range s.routes() {
		mux.Method(rt.method, rt.path, s.wrap(rt))
	}
	// A fresh routing context for our router: the parent's would make chi
	// reuse the parent's (unescaped) route path.
	entry := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mux.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), chi.RouteCtxKey, (*chi.Context)(nil))))
	})
	r.Handle("/_matrix/media/*", entry)
	r.Handle("/_matrix/client/v1/media/*", entry)
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

// wrap adds authentication, the suspension check, rate limiting and
// error writing to a handler.
func (s *Service) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Parameters no store can hold (invalid UTF-8, U+0000) are refused
		// before they reach one, as at the client-API's edge.
		if err := matrixhttp.CheckRequestText(r.URL.EscapedPath(), r.URL.Query()); err != nil {
			s.writeError(w, r, err)
			return
		}
		var c *caller
		if rt.auth {
			var err error
			if c, err = s.authenticate(r); err != nil {
				s.writeError(w, r, err)
				return
			}
			if rt.upload && c.Suspended {
				s.writeError(w, r, errSuspended())
				return
			}
			// Admins are not rate limited.
			if (rt.upload || rt.limited) && !c.Admin {
				if ok, wait := s.limiter.Allow(limitMedia, string(c.UserID)); !ok {
					s.writeError(w, r, matrixhttp.LimitExceeded(max(wait.Milliseconds(), 1)))
					return
				}
			}
		}
		resp, err := rt.serve(r, c)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if cr, ok := resp.(*contentResponse); ok {
			s.writeContent(w, r, cr)
			return
		}
		matrixhttp.WriteJSON(w, http.StatusOK, resp)
	})
}

// writeError writes a handler's error: Matrix errors as they are,
// anything else as a logged M_UNKNOWN.
func (s *Service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var me *matrixhttp.Error
	if !errors.As(err, &me) {
		if r.Context().Err() != nil {
			return // the client is gone
		}
		s.log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	matrixhttp.WriteError(w, err)
}

// pathParam returns a decoded path parameter. The router matches on the
// escaped path, so parameters can hold '/' and '%'.
func pathParam(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(chi.URLParam(r, name))
	if err != nil {
		return "", matrixhttp.InvalidParam("Malformed path parameter " + name)
	}
	return v, nil
}

// optionalParam is an optional path parameter, unescaped ("" if absent).
func optionalParam(r *http.Request, name string) string {
	v, err := pathParam(r, name)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
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

func tooLarge(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "%s", msg)
}
