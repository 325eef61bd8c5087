// Package metrics holds a process's Prometheus metrics: Go runtime and
// process collectors, per-route HTTP request counts and latencies, and
// per-method gRPC server call counts and latencies. One Metrics belongs to
// one process (pkg/myelin); it is served on metrics.listen, never on the
// public HTTP listener.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Metrics is one process's registry and instruments.
type Metrics struct {
	reg          *prometheus.Registry
	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	grpcHandled  *prometheus.CounterVec
	grpcDuration *prometheus.HistogramVec
}

// latencyBuckets cover a fast local call (a millisecond) up to a /sync
// long poll (30 s), in seconds.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns the metrics of a process whose targets are given (a label on
// myelin_build_info, so dashboards can tell the processes of a split
// deployment apart).
func New(version string, targets []string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "myelin_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern and method.",
			Buckets: latencyBuckets,
		}, []string{"route", "method"}),
		grpcHandled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "myelin_grpc_server_handled_total",
			Help: "gRPC calls this process served, by full method and status code.",
		}, []string{"method", "code"}),
		grpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "myelin_grpc_server_handling_seconds",
			Help:    "Time to serve a gRPC call, by full method.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
	}
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "myelin_build_info",
		Help: "Always 1: the running version and the process's targets.",
	}, []string{"version", "targets"})
	info.WithLabelValues(version, strings.Join(targets, ",")).Set(1)
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.httpRequests, m.httpDuration, m.grpcHandled, m.grpcDuration, info,
	)
	return m
}

// Register adds collectors of a service (for example its database pool's).
func (m *Metrics) Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// HTTP is chi middleware that counts and times each request under its
// route pattern (bounded label values such as
// "/_matrix/client/{version}/rooms/{roomId}/send/{eventType}/{txnId}",
// never the path), or "unmatched" when no route matched. A router with a
// routing context of its own below this one (the client-API's) names its
// pattern through RecordRoute.
func (m *Metrics) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		inner := &routeHolder{}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), routeKey{}, inner)))
		route := inner.pattern
		if route == "" {
			if rc := chi.RouteContext(r.Context()); rc != nil {
				route = rc.RoutePattern()
			}
		}
		if route == "" {
			route = "unmatched"
		}
		m.httpRequests.WithLabelValues(route, r.Method, strconv.Itoa(sw.code)).Inc()
		m.httpDuration.WithLabelValues(route, r.Method).Observe(time.Since(start).Seconds())
	})
}

type routeKey struct{}

// routeHolder carries the pattern an inner router matched up to HTTP.
type routeHolder struct{ pattern string }

// RecordRoute is middleware for a router that runs its own routing
// context under a router that uses HTTP: it hands the pattern it matched
// (if any) up to HTTP's label. Without HTTP above it, it does nothing.
func RecordRoute(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		h, ok := r.Context().Value(routeKey{}).(*routeHolder)
		if !ok {
			return
		}
		if rc := chi.RouteContext(r.Context()); rc != nil {
			h.pattern = rc.RoutePattern()
		}
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Flush passes through, for streaming responses.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// UnaryServerInterceptor counts and times each gRPC call by full method and
// status code.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.grpcHandled.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
		m.grpcDuration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
		return resp, err
	}
}
