package myelin

import (
	"errors"
	"net/http"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/metrics"
)

// startMetrics serves m at /metrics on metrics.listen, a listener of its
// own (like pprof's) so that metrics are never reachable through the
// public client API port. Off unless configured.
func (p *process) startMetrics(m *metrics.Metrics) error {
	addr := p.cfg.Metrics.Listen
	if addr == "" {
		return nil
	}
	lis, err := listen("metrics.listen", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Warn("metrics listener stopped", zap.Error(err))
		}
	}()
	p.metricsAddr = lis.Addr().String()
	p.cleanups = append(p.cleanups, func() { _ = srv.Close() })
	p.log.Info("metrics listener on (metrics.listen)", zap.String("addr", p.metricsAddr))
	return nil
}

// MetricsAddr is the address of the metrics listener, empty when it is off.
func (pr *Process) MetricsAddr() string { return pr.p.metricsAddr }

// version is set at link time to name a release:
//
//	go build -ldflags "-X github.com/myelin-chat/myelin/pkg/myelin.version=v1.2.3" ./cmd/myelin
var version string

// Version is the version set at link time, or else the VCS revision the
// binary was built from (with "-dirty" for uncommitted changes), or its
// module version. `myelin version` prints it; myelin_build_info carries it.
func Version() string {
	if version != "" {
		return version
	}
	return buildVersion()
}

// buildVersion is the VCS revision the binary was built from (with
// "-dirty" for uncommitted changes), or its module version.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return info.Main.Version
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
