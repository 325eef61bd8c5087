package myelin

// Health: what Kubernetes (or any supervisor) asks a process.
//
//   - GET /healthz: the process serves HTTP (liveness). Always 200.
//   - GET /readyz: every service of the process can serve and the
//     process's shared connections are up (readiness): each service's
//     Ready (its database answers) and, when the process uses NATS, the
//     NATS connection. 200 {"status":"ready"}, or 503 with what failed.
//   - gRPC grpc.health.v1.Health on the gRPC server: the same verdict, for
//     "" (the whole process) and for each service's gRPC service name,
//     refreshed every healthInterval, NOT_SERVING from shutdown on.
//
// The checks cover the process's own dependencies only, never its gRPC
// peers: a peer being down makes requests fail with 503, not this process
// unready (which would take every caller out of its Service in turn).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthInterval is how often the gRPC health statuses are refreshed.
const healthInterval = 5 * time.Second

// readyTimeout bounds one round of readiness checks.
const readyTimeout = 3 * time.Second

// readiness checks what /readyz and the gRPC health service report.
type readiness struct {
	services map[string]service // target name → service
	nc       *nats.Conn         // nil when the process uses no NATS
	log      *zap.Logger
}

// check runs every check and returns the failures by name (empty when
// ready).
func (r *readiness) check(ctx context.Context) map[string]string {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	failed := map[string]string{}
	for name, svc := range r.services {
		if err := svc.Ready(ctx); err != nil {
			failed[name] = err.Error()
		}
	}
	if r.nc != nil {
		if st := r.nc.Status(); st != nats.CONNECTED {
			failed["nats"] = "connection " + st.String()
		}
	}
	return failed
}

// serveReadyz is GET /readyz.
func (r *readiness) serveReadyz(w http.ResponseWriter, req *http.Request) {
	failed := r.check(req.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if len(failed) == 0 {
		_, _ = w.Write([]byte(`{"status":"ready"}`))
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "not ready", "failed": failed})
}

// serveHealthz is GET /healthz.
func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(`{"status":"ok"}`))
}

// runGRPCHealth keeps the gRPC health statuses of the process ("") and of
// every gRPC service it serves up to date until ctx ends, then marks them
// NOT_SERVING (so callers stop picking this process while it drains).
func (r *readiness) runGRPCHealth(ctx context.Context, hs *health.Server, grpcServices []string) error {
	set := func(status healthpb.HealthCheckResponse_ServingStatus) {
		hs.SetServingStatus("", status)
		for _, name := range grpcServices {
			hs.SetServingStatus(name, status)
		}
	}
	ticker := time.NewTicker(healthInterval)
	defer ticker.Stop()
	wasReady := true
	for {
		failed := r.check(ctx)
		switch {
		case len(failed) == 0:
			set(healthpb.HealthCheckResponse_SERVING)
			if !wasReady {
				r.log.Info("ready again")
			}
			wasReady = true
		case ctx.Err() == nil:
			set(healthpb.HealthCheckResponse_NOT_SERVING)
			if wasReady {
				r.log.Warn("not ready", zap.Error(describeFailures(failed)))
			}
			wasReady = false
		}
		select {
		case <-ctx.Done():
			hs.Shutdown() // NOT_SERVING for every service, from now on
			return nil
		case <-ticker.C:
		}
	}
}

// describeFailures renders failures for a log line.
func describeFailures(failed map[string]string) error {
	names := make([]string, 0, len(failed))
	for n := range failed {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		errs = append(errs, fmt.Errorf("%s: %s", n, failed[n]))
	}
	return errors.Join(errs...)
}
