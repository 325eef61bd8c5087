// Package edge is the small HTTP router that stands in front of split
// services: it forwards each public path prefix to the service that owns it.
// In the all-in-one shape services register on the process's own router and
// no forwarding happens.
package edge

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Route forwards requests whose path starts with Prefix to Upstream
// ("host:port" or a URL).
type Route struct {
	Prefix   string
	Upstream string
	Service  string
}

// Mount adds a forwarding handler for every route to r.
func Mount(r chi.Router, routes []Route) error {
	for _, rt := range routes {
		if rt.Upstream == "" {
			return fmt.Errorf("edge: services.%s.http must be set to forward %s", strings.ReplaceAll(rt.Service, "-", "_"), rt.Prefix)
		}
		raw := rt.Upstream
		if !strings.Contains(raw, "://") {
			raw = "http://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("edge: upstream %q: %w", rt.Upstream, err)
		}
		proxy := httputil.NewSingleHostReverseProxy(u)
		// Long-polling /sync must not be buffered.
		proxy.FlushInterval = -1
		proxy.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
			matrixhttp.WriteError(w, matrixhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "%s is unavailable", rt.Service))
		}
		r.Handle(rt.Prefix+"*", proxy)
	}
	return nil
}
