package myelin_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/myelin"
)

// An address in use is reported before any infrastructure starts (no
// PostgreSQL cluster or NATS store appears under data_dir), and the error
// names the setting and its environment variable.
func TestListenAddressInUseFailsFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	for _, c := range []struct {
		setting, env string
		set          func(*myelin.Config)
	}{
		{"http.listen", "MYELIN_HTTP_LISTEN", func(c *myelin.Config) { c.HTTP.Listen = addr }},
		{"grpc.listen", "MYELIN_GRPC_LISTEN", func(c *myelin.Config) { c.GRPC.Listen = addr }},
		{"metrics.listen", "MYELIN_METRICS_LISTEN", func(c *myelin.Config) { c.Metrics.Listen = addr }},
		{"debug.pprof_listen", "MYELIN_DEBUG_PPROF_LISTEN", func(c *myelin.Config) { c.Debug.PprofListen = addr }},
	} {
		t.Run(c.setting, func(t *testing.T) {
			cfg := myelin.DefaultConfig()
			cfg.DataDir = traversableDir(t)
			cfg.HTTP.Listen, cfg.GRPC.Listen = "127.0.0.1:0", "127.0.0.1:0"
			c.set(&cfg) // database.url and nats.url empty: a local cluster and NATS would start
			p, err := myelin.Start(context.Background(), cfg, allTargets(t), zaptest.NewLogger(t))
			if err == nil {
				_ = p.Stop()
				t.Fatal("started with an address in use")
			}
			for _, want := range []string{c.setting, c.env, addr, "in use"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			for _, dir := range []string{"postgres", "nats"} {
				if _, err := os.Stat(filepath.Join(cfg.DataDir, dir)); err == nil {
					t.Errorf("%s was started before the address was checked", dir)
				}
			}
		})
	}
}

// traversableDir is a temporary directory the local cluster's user can
// enter (it is another user when the tests run as root).
func traversableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "myelin-test-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// allTargets is every service (the "all" target).
func allTargets(t *testing.T) []string {
	t.Helper()
	targets, err := myelin.ParseTargets(myelin.TargetAll)
	if err != nil {
		t.Fatal(err)
	}
	return targets
}
