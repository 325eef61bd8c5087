// Package bench keeps the load generator from rotting: it runs every
// scenario at tiny sizes against the real server (myelin.Start on real
// PostgreSQL and NATS JetStream, real HTTP) and checks the result is sane.
// No timing assertions: speed belongs to `make bench`.
package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/bench/report"
	"github.com/myelin-chat/myelin/pkg/loadgen"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// TestMain stops the test binary's PostgreSQL cluster when the tests end;
// without it every `make test` left one running.
func TestMain(m *testing.M) { testkit.Main(m) }

func TestLoadGeneratorQuick(t *testing.T) {
	cfg := stack.TestConfig(t)
	cfg.Debug.PprofListen = "127.0.0.1:0"
	cfg.ClientAPI.RateLimit.Enabled = false
	s := stack.StartWithConfig(t, cfg)

	dir := t.TempDir()
	opts := loadgen.Quick()
	opts.BaseURL = s.URL()
	opts.Serial.Messages = 20
	opts.Throughput = loadgen.ThroughputOptions{Senders: 2, Rooms: 2, Sweep: []int{1, 2},
		StepDuration: time.Second, Grace: 10 * time.Second}
	opts.BigSync = loadgen.BigSyncOptions{Rooms: 3, Members: 3, Messages: 3, Repeats: 1, Incremental: 2}
	opts.Concurrency = 4
	// The server runs in this test process.
	opts.Processes = []loadgen.Process{{Name: "myelin", PID: os.Getpid()}}
	opts.DatabaseURL = cfg.Database.URL
	opts.PprofURL = "http://" + s.Process.PprofAddr()
	opts.ProfileDir = dir
	opts.ProfileSeconds = 1

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]bool{
		"serial/send": false, "throughput/send": false, "send_to_sync/delivery": false,
		"bigsync/initial/timeline=20/lazy_members": false, "bigsync/incremental/idle": false,
		"bigsync/incremental/one_new_event": false, "throughput/setup/join": false,
	}
	sends := map[any]int{}
	for _, p := range res.Phases {
		key := p.Scenario + "/" + p.Name
		if _, ok := want[key]; ok {
			want[key] = true
		}
		if p.Count == 0 || len(p.Errors) != 0 {
			t.Errorf("phase %s %v: %d ok, errors %v", key, p.Params, p.Count, p.Errors)
		}
		if p.Latency.P50 <= 0 || p.Latency.P50 > p.Latency.P99 || p.Latency.P99 > p.Latency.Max {
			t.Errorf("phase %s: percentiles out of order: %+v", key, p.Latency)
		}
		switch key {
		case "serial/send":
			if p.Count != 20 {
				t.Errorf("serial: %d sends, want 20", p.Count)
			}
		case "throughput/send":
			sends[p.Params["senders"]] = p.Count
		case "send_to_sync/delivery":
			// Every acknowledged send reached the other member's /sync.
			if p.Count != sends[p.Params["senders"]] {
				t.Errorf("send-to-sync at N=%v: %d delivered of %d sent", p.Params["senders"], p.Count, sends[p.Params["senders"]])
			}
		case "bigsync/initial/timeline=20/lazy_members":
			if p.Extra["joined_rooms"] != 3 {
				t.Errorf("big account initial /sync: %v joined rooms, want 3", p.Extra["joined_rooms"])
			}
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("no phase %s", k)
		}
	}
	if len(sends) != 2 {
		t.Errorf("sweep steps measured: %v, want N=1 and N=2", sends)
	}
	if want := 1 + len(loadgen.Scenarios()); len(res.Memory) != want {
		t.Errorf("%d memory samples, want idle + one per scenario (%d)", len(res.Memory), want)
	}
	for _, m := range res.Memory {
		p := m.Processes[0]
		if p.RSSBytes <= 0 || p.PeakRSSBytes < p.RSSBytes || p.CPUSeconds <= 0 || p.RSSAnonBytes <= 0 || p.RSSAnonBytes > p.RSSBytes {
			t.Errorf("memory sample %s: %+v", m.Label, p)
		}
	}
	if len(res.Peaks) != 1 || res.Peaks[0].Samples != 1 || res.Peaks[0].MaxSampledRSSBytes <= 0 ||
		res.Peaks[0].PeakRSSBytes < res.Peaks[0].MaxSampledRSSBytes {
		t.Errorf("peaks over the run: %+v; want the watched process (not a tree) sampled once, at the end", res.Peaks)
	}
	if len(res.HostChecks) != 2 {
		t.Errorf("host checks %+v, want one at the start and one at the end", res.HostChecks)
	}
	for _, h := range res.HostChecks {
		if h.CPUProbeMS <= 0 || h.CPUProbeWallMS <= 0 || h.PostgresRoundTripUS <= 0 {
			t.Errorf("host check %+v: every probe should have measured", h)
		}
	}
	if res.DatabaseSizeBytes <= 0 {
		t.Errorf("database size %d", res.DatabaseSizeBytes)
	}
	for _, kind := range []string{"cpu", "allocs", "heap"} {
		st, err := os.Stat(res.Profiles[kind])
		if err != nil || st.Size() == 0 {
			t.Errorf("%s profile %q: %v", kind, res.Profiles[kind], err)
		}
	}

	// The report renders from this result.
	docs := filepath.Join(dir, "benchmarks.md")
	if err := report.Write(res, filepath.Join(dir, "result.json"), docs, ""); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(docs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"## Goals", "closed-loop throughput", "send-to-sync", "idle RSS", "RSS after the full bench", "![throughput]", "Largest footprint", "Host check", "### heap"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("report lacks %q", s)
		}
	}
	for _, svg := range []string{"throughput.svg", "latency.svg"} {
		raw, err := os.ReadFile(filepath.Join(dir, "benchmarks", svg))
		if err != nil || !strings.Contains(string(raw), "<svg") {
			t.Errorf("plot %s: %v", svg, err)
		}
	}

	// make bench-compare's section: the same result as both servers'
	// (the other's process renamed) gives ratios of 1.
	other := *res
	other.Memory = nil
	for _, m := range res.Memory {
		m.Processes = slices.Clone(m.Processes)
		m.Processes[0].Name = "dendrite"
		other.Memory = append(other.Memory, m)
	}
	cmp := report.Comparison{Started: time.Now(), Meta: map[string]string{"dendrite_version": "v0.13.8"},
		Runs: []report.ComparedRun{{Server: "myelin", Result: res}, {Server: "dendrite", Result: &other}}}
	if err := os.MkdirAll(filepath.Join(dir, report.ComparisonDir), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(cmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, report.ComparisonDir, "x.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := report.Write(res, filepath.Join(dir, "result.json"), docs, ""); err != nil {
		t.Fatal(err)
	}
	if md, err = os.ReadFile(docs); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"## Side by side with Dendrite", "| serial send p50 |", "| closed loop N=2: events/s |",
		"| server RSS after the run |", "compare-throughput.svg"} {
		if !strings.Contains(string(md), s) {
			t.Errorf("report lacks %q", s)
		}
	}
	if n := strings.Count(string(md), "| 1.00 | same |"); n < 5 {
		t.Errorf("%d ratio rows of 1.00, want every row of the same result compared with itself", n)
	}
}
