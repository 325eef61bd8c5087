package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/bench/report"
	"github.com/myelin-chat/myelin/pkg/loadgen"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// TestAppserviceScenario runs the appservice scenario at tiny sizes
// against the real server with the load generator's registration: every
// event sent reaches the receiver (serial, under load, and the backlog
// queued while it failed), with the hs_token, no transaction ID reused for
// other content and no event twice.
func TestAppserviceScenario(t *testing.T) {
	target, regPath, err := loadgen.NewAppserviceTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = target.Listener.Close() })
	cfg := stack.TestConfig(t)
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Appservice.ConfigFiles = []string{regPath}
	cfg.Appservice.AdminToken = target.AdminToken
	cfg.Appservice.BackoffMin = 50 * time.Millisecond
	cfg.Appservice.BackoffMax = 200 * time.Millisecond
	s := stack.StartWithConfig(t, cfg)
	target.AdminURL = s.URL() + "/_myelin/admin/appservices"

	opts := loadgen.Quick()
	opts.BaseURL = s.URL()
	opts.Scenarios = []string{"appservice"}
	opts.Concurrency = 4
	opts.Appservice.Target = target
	opts.Appservice.Serial, opts.Appservice.Backlog, opts.Appservice.Duration = 10, 150, time.Second

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]loadgen.Phase{}
	for _, p := range res.Phases {
		got[p.Name] = p
		if len(p.Errors) != 0 {
			t.Errorf("phase %s: errors %v", p.Name, p.Errors)
		}
	}
	if p := got["serial"]; p.Count != 10 {
		t.Errorf("serial: %d delivered, want 10", p.Count)
	}
	send, deliv := got["under_load/send"], got["under_load/delivery"]
	if send.Count == 0 || deliv.Count != send.Count {
		t.Errorf("under load: %d delivered of %d sent", deliv.Count, send.Count)
	}
	if p99, _ := deliv.Extra["from_request_p99_ms"].(float64); p99 <= 0 || p99 < deliv.Latency.P99 {
		t.Errorf("under load: p99 from the request %v ms, from the answer %v ms", deliv.Extra["from_request_p99_ms"], deliv.Latency.P99)
	}
	drain := got["backlog/drain"]
	if drain.Count != 150 || drain.Throughput <= 0 {
		t.Errorf("backlog: %d delivered (want 150) at %.0f events/s", drain.Count, drain.Throughput)
	}
	// The backlog was queued before the receiver recovered, so it needed
	// several transactions of at most max_events_per_txn events.
	if n, _ := drain.Extra["transactions"].(int); n < 150/cfg.Appservice.MaxEventsPerTxn {
		t.Errorf("backlog drained in %v transactions", drain.Extra["transactions"])
	}
	for _, n := range res.Notes {
		t.Errorf("note: %s", n)
	}
	// The report's goal rows come from these phases.
	dir := t.TempDir()
	docs := filepath.Join(dir, "benchmarks.md")
	if err := report.Write(res, filepath.Join(dir, "result.json"), docs, ""); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(docs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"| appservice: ≥ 1,000 events/s delivered to one appservice | backlog of 150 drained", "| appservice: p99 from commit"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("report lacks %q", s)
		}
	}
}
