package bench

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/loadgen"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	"github.com/myelin-chat/myelin/services/clientapi"
)

// startServer starts the real stack with its client-API settings changed
// by edit.
func startServer(t *testing.T, edit func(*myelin.Config)) *stack.Stack {
	t.Helper()
	cfg := stack.TestConfig(t)
	edit(&cfg)
	return stack.StartWithConfig(t, cfg)
}

// parseFlags builds options the way cmd/myelin-load does.
func parseFlags(t *testing.T, base string, args ...string) (loadgen.Options, error) {
	t.Helper()
	fs := flag.NewFlagSet("myelin-load", flag.ContinueOnError)
	lf := loadgen.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return lf.Options(base)
}

// A target with its rate limits on, as a stock homeserver has them, and
// shared-secret registration: the command-line path picks shared-secret
// registration by itself, set-up waits out the limits, and the measured
// sends that were limited show as M_LIMIT_EXCEEDED, with a note saying so.
func TestLoadGeneratorRateLimitedSharedSecret(t *testing.T) {
	s := startServer(t, func(cfg *myelin.Config) {
		cfg.ClientAPI.Registration.SharedSecret = "bench-secret"
		cfg.ClientAPI.RateLimit = clientapi.RateLimitConfig{
			Enabled:    true,
			Register:   clientapi.RateBucket{PerSecond: 5, Burst: 2},
			Login:      clientapi.RateBucket{PerSecond: 5, Burst: 2},
			Send:       clientapi.RateBucket{PerSecond: 20, Burst: 5},
			CreateRoom: clientapi.RateBucket{PerSecond: 5, Burst: 1},
		}
	})
	t.Setenv("LOADGEN_SHARED_SECRET", "bench-secret")
	opts, err := parseFlags(t, s.URL(), "-quick", "-scenarios", "serial,bigsync", "-serial-messages", "40",
		"-big-rooms", "3", "-big-members", "3", "-big-messages", "4", "-big-incremental", "2")
	if err != nil {
		t.Fatal(err)
	}
	if opts.Registration.SharedSecret != "bench-secret" {
		t.Fatalf("-registration auto with a secret against a server that offers it: shared secret %q not picked", opts.Registration.SharedSecret)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Registration != "shared-secret" {
		t.Errorf("registration %q, want shared-secret", res.Registration)
	}
	limitedSends := 0
	for _, p := range res.Phases {
		key := p.Scenario + "/" + p.Name
		switch {
		case strings.Contains(p.Name, "setup/"):
			if len(p.Errors) != 0 {
				t.Errorf("set-up phase %s: errors %v (rate limits must be waited out)", key, p.Errors)
			}
		case key == "serial/send":
			limitedSends = p.Errors["M_LIMIT_EXCEEDED"]
			if p.Count+limitedSends != 40 || len(p.Errors) > 1 {
				t.Errorf("serial: %d ok, errors %v; want 40 tries, only M_LIMIT_EXCEEDED failing", p.Count, p.Errors)
			}
		}
	}
	if limitedSends == 0 {
		t.Errorf("40 serial sends against a burst of 5 were never limited: the server's limit or its errcode is not seen")
	}
	var setupNote, measuredNote bool
	for _, n := range res.Notes {
		setupNote = setupNote || strings.Contains(n, "rate-limited") && strings.Contains(n, "set-up")
		measuredNote = measuredNote || strings.Contains(n, "rate-limited") && strings.Contains(n, "measured")
	}
	if !setupNote || !measuredNote {
		t.Errorf("notes %q: want one on limited set-up requests and one on limited measured requests", res.Notes)
	}
}

// A target without open registration gets a message that says what to do,
// not a bare 401.
func TestLoadGeneratorNoOpenRegistration(t *testing.T) {
	s := startServer(t, func(cfg *myelin.Config) {
		cfg.ClientAPI.Registration.Mode = "token"
		cfg.ClientAPI.RateLimit.Enabled = false
	})
	opts, err := parseFlags(t, s.URL(), "-quick", "-scenarios", "serial", "-registration", "dummy")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = loadgen.Run(ctx, opts)
	if err == nil || !strings.Contains(err.Error(), "no open registration") || !strings.Contains(err.Error(), "m.login.registration_token") {
		t.Fatalf("run against token-only registration: %v; want the refusal naming the server's flows", err)
	}
}
