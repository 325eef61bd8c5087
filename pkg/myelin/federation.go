package myelin

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/edge"
	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/metrics"
	"github.com/myelin-chat/myelin/services/media"
)

// federationService is implemented by services that serve federation
// HTTP (server-server endpoints): they register those routes on the
// federation listener's router as well.
type federationService interface {
	RegisterFederationHTTP(chi.Router)
}

// federationListener is the process's second HTTP server: HTTPS on
// federation.listen with federation.tls_cert_file/tls_key_file, with a
// router of its own, for other homeservers.
type federationListener struct {
	router chi.Router
	lis    net.Listener
	srv    *http.Server
}

// newFederationRouter is the federation listener's router: unknown paths
// and methods are the spec's 404/405 M_UNRECOGNIZED.
func newFederationRouter(m *metrics.Metrics, log *zap.Logger) chi.Router {
	r := chi.NewRouter()
	r.Use(m.HTTP, matrixhttp.Recover(log))
	r.NotFound(matrixhttp.NotFoundHandler)
	r.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	return r
}

// openFederationListener listens on federation.listen with the configured
// certificate, when federation is enabled and this process serves
// federation HTTP (a service that registered routes, or the edge).
func (p *process) openFederationListener(router chi.Router, serves bool) (*federationListener, error) {
	cfg := p.cfg.Federation
	if !cfg.Enabled || !serves {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("federation.tls_cert_file/tls_key_file: %w", err)
	}
	lis, err := listen("federation.listen", cfg.Listen)
	if err != nil {
		return nil, err
	}
	return &federationListener{
		router: router,
		lis:    lis,
		srv: &http.Server{
			Handler:           router,
			ReadHeaderTimeout: 10 * time.Second,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		},
	}, nil
}

// federationEdgeRoutes are the edge's federation routes to services not
// running in this process: the key API to the key-server (its HTTP
// listener serves the same routes as its federation one).
func (p *process) federationEdgeRoutes() []edge.Route {
	var routes []edge.Route
	add := func(target string, prefixes ...string) {
		if slices.Contains(p.targets, target) {
			return
		}
		for _, pre := range prefixes {
			routes = append(routes, edge.Route{Prefix: pre, Upstream: p.address(target).HTTP, Service: target})
		}
	}
	add(TargetKeyServer, "/_matrix/key/")
	add(TargetFederationReceiver, "/_matrix/federation/")
	add(TargetMedia, media.FederationPrefix)
	return routes
}

// newFederationTransport is the outbound federation transport every
// service of this process shares.
func (p *process) newFederationTransport() (*federation.Transport, error) {
	return federation.NewTransport(federation.Options{
		Config: p.cfg.Federation,
		Logger: p.log.With(zap.String("component", "federation")),
	})
}

// FederationAddr is the federation listener's address, empty when there
// is none.
func (pr *Process) FederationAddr() string {
	if pr.p.fed == nil {
		return ""
	}
	return pr.p.fed.lis.Addr().String()
}
