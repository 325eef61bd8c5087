package loadgen

import (
	"context"
	"flag"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// 192.0.2.1 is TEST-NET-1 (RFC 5737): never this machine, and an IP
// literal needs no DNS.
const offMachine = "192.0.2.1"

func options(t *testing.T, base string, args ...string) (Options, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	lf := BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return lf.Options(base)
}

func TestOptionsRefuseTargetsOffThisMachine(t *testing.T) {
	for _, tc := range []struct {
		name string
		base string
		args []string
	}{
		{"base URL", "http://" + offMachine + ":8008", nil},
		{"pprof URL", "http://127.0.0.1:8008", []string{"-pprof-url", "http://" + offMachine + ":6060"}},
		{"database URL", "http://127.0.0.1:8008", []string{"-db-url", "postgres://u@" + offMachine + ":5432/db"}},
		{"database fallback host", "http://127.0.0.1:8008", []string{"-db-url", "postgres://u@127.0.0.1:5432," + offMachine + ":5432/db"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := options(t, tc.base, append([]string{"-quick", "-registration", "dummy"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), "loopback") {
				t.Fatalf("want a loopback refusal, got %v", err)
			}
		})
	}
	// On this machine: loopback names, and a Unix socket directory.
	if _, err := options(t, "http://localhost:8008", "-quick", "-registration", "dummy",
		"-pprof-url", "http://[::1]:6060", "-db-url", "postgres:///db?host=/tmp/pg"); err != nil {
		t.Fatalf("loopback targets refused: %v", err)
	}
	// Run checks options built in code too, not only those from flags.
	o := Quick()
	o.BaseURL = "http://" + offMachine + ":8008"
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Run with an off-machine base URL: %v", err)
	}
	o.BaseURL = "http://127.0.0.1:8008"
	o.Throughput.Rooms = 0
	if _, err := Run(context.Background(), o); err == nil {
		t.Fatal("Run with zero rooms did not refuse")
	}
}

func TestOptionsQuickKeepsExplicitSizes(t *testing.T) {
	o, err := options(t, "http://127.0.0.1:8008", "-quick", "-registration", "dummy", "-serial-messages", "7")
	if err != nil {
		t.Fatal(err)
	}
	q := Quick()
	if o.Serial.Messages != 7 || o.BigSync != q.BigSync || o.Throughput.StepDuration != q.Throughput.StepDuration {
		t.Fatalf("-quick with -serial-messages 7: serial %d, big %+v, step %s", o.Serial.Messages, o.BigSync, o.Throughput.StepDuration)
	}
}

// Every connection is checked when it is dialled: a loopback server that
// redirects elsewhere does not take the load generator with it.
func TestClientDoesNotFollowRedirectsOffThisMachine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+offMachine+":8008"+r.URL.Path, http.StatusFound)
	}))
	defer srv.Close()
	c := &Client{base: srv.URL, hc: newHTTPClient()}
	err := c.do(context.Background(), http.MethodGet, "/_matrix/client/versions", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("redirect off the machine: %v", err)
	}
}

func TestRateLimitedAnswer(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		switch calls {
		case 1:
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":20}`))
		case 2: // the spec's newer form: the header only
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"errcode":"M_LIMIT_EXCEEDED","error":"slow down"}`))
		default:
			w.Write([]byte(`{}`))
		}
	}))
	defer srv.Close()
	c := &Client{base: srv.URL, hc: newHTTPClient()}
	e := &Env{}
	err := e.retryLimited(context.Background(), func() error {
		return c.do(context.Background(), http.MethodGet, "/x", nil, nil, nil)
	})
	if err != nil || calls != 3 || e.limitedSetup.Load() != 2 {
		t.Fatalf("retryLimited: err %v after %d calls, %d counted as limited; want success on the third", err, calls, e.limitedSetup.Load())
	}
	// A limited answer says how long to wait; other errors are not limits.
	if d, ok := rateLimited(&MatrixError{Status: 429, RetryAfter: 3e9}); !ok || d != 3e9 {
		t.Errorf("rateLimited(429, 3s) = %s, %t", d, ok)
	}
	if d, ok := rateLimited(&MatrixError{Status: 429, RetryAfter: 3600e9}); !ok || d != maxLimitWait {
		t.Errorf("rateLimited(429, 1h) = %s, want the cap %s", d, maxLimitWait)
	}
	if _, ok := rateLimited(&MatrixError{Status: 403, Errcode: "M_FORBIDDEN"}); ok {
		t.Error("a 403 counted as a rate limit")
	}
}
