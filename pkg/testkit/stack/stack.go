// Package stack starts the real Myelin process for tests: the same
// myelin.Start that production calls, on free ports, against a fresh
// database from testkit.Postgres and a fresh NATS from testkit.NATS.
package stack

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

// Stack is a running process plus the infrastructure it uses.
type Stack struct {
	Config  myelin.Config
	Targets []string
	Process *myelin.Process
	t       testing.TB
}

// Start runs targets (default: all) in one process on free ports.
func Start(t testing.TB, targets ...string) *Stack {
	t.Helper()
	return StartWithConfig(t, TestConfig(t), targets...)
}

// TestConfig is the default configuration on free ports, a fresh database
// and a fresh JetStream server: what Start runs, for tests that change it.
func TestConfig(t testing.TB) myelin.Config {
	t.Helper()
	cfg := myelin.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Database.URL = testkit.Postgres(t)
	cfg.NATS.URL = testkit.NATS(t)
	return cfg
}

// StartWithConfig runs targets with cfg (for restarts: pass s.Config).
func StartWithConfig(t testing.TB, cfg myelin.Config, targets ...string) *Stack {
	t.Helper()
	if len(targets) == 0 {
		targets = []string{myelin.TargetAll}
	}
	parsed, err := myelin.ParseTargets(joinTargets(targets))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := myelin.Start(context.Background(), cfg, parsed, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	if err != nil {
		t.Fatalf("stack: start: %v", err)
	}
	s := &Stack{Config: cfg, Targets: parsed, Process: p, t: t}
	t.Cleanup(func() { _ = p.Stop() })
	return s
}

// URL is the base URL of the process's HTTP listener.
func (s *Stack) URL() string { return "http://" + s.Process.HTTPAddr() }

// Stop ends the process (it can be started again with StartWithConfig).
func (s *Stack) Stop() {
	if err := s.Process.Stop(); err != nil {
		s.t.Errorf("stack: stop: %v", err)
	}
}

func joinTargets(ts []string) string {
	out := ""
	for i, t := range ts {
		if i > 0 {
			out += ","
		}
		out += t
	}
	return out
}
