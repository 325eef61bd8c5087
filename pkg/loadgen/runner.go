// Package loadgen is Myelin's load generator. It drives any Matrix
// homeserver through the client-server API, given its base URL, and
// measures latency, throughput, errors, and (when it is given their PIDs
// and database URL) the server's CPU, memory and database size.
//
// Scenarios live in a registry (registry.go); each file scenario_*.go
// holds one. cmd/myelin-load is the command-line front end, and
// cmd/myelin-bench runs it against a fresh Myelin for `make bench`.
package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a run; start from Defaults() or Quick(). Run refuses
// options that fail Validate.
type Options struct {
	// BaseURL is the homeserver's client-server API base, e.g.
	// http://127.0.0.1:8008. Only loopback targets are meant.
	BaseURL      string       `json:"base_url"`
	Registration Registration `json:"-"`
	// Processes are the server processes whose CPU and memory are sampled.
	Processes []Process `json:"processes,omitempty"`
	// DatabaseURL, if set, is read for pg_database_size at the end.
	DatabaseURL string `json:"-"`
	// PprofURL, if set, is a Go net/http/pprof base (http://host:port);
	// CPU and allocation profiles are fetched during the throughput
	// scenario, and a heap profile after the last scenario, into
	// ProfileDir.
	PprofURL       string `json:"pprof_url,omitempty"`
	ProfileDir     string `json:"-"`
	ProfileSeconds int    `json:"profile_seconds,omitempty"`
	// Scenarios to run by name; empty runs all registered.
	Scenarios []string `json:"scenarios,omitempty"`

	Serial     SerialOptions     `json:"serial"`
	Throughput ThroughputOptions `json:"throughput"`
	BigSync    BigSyncOptions    `json:"big_sync"`
	Federation FederationOptions `json:"federation"`
	Appservice AppserviceOptions `json:"appservice"`
	RoomSize   RoomSizeOptions   `json:"room_size"` // scenario_roomsize.go
	// Concurrency bounds set-up work (registrations, joins).
	Concurrency int `json:"setup_concurrency"`
	// Progress receives the live lines; nil is silent.
	Progress io.Writer `json:"-"`
}

// SerialOptions: scenario 1.
type SerialOptions struct {
	Messages int `json:"messages"`
}

// ThroughputOptions: scenarios 2 and 3.
type ThroughputOptions struct {
	// Senders (N) and Rooms (M): every sender is in every room.
	Senders int `json:"senders"`
	Rooms   int `json:"rooms"`
	// Sweep is the list of sender counts measured, each for StepDuration.
	Sweep        []int         `json:"sweep"`
	StepDuration time.Duration `json:"step_duration"`
	// Grace is how long the /sync observer may take to see the last sends.
	Grace time.Duration `json:"grace"`
}

// BigSyncOptions: scenario 4.
type BigSyncOptions struct {
	Rooms   int `json:"rooms"`
	Members int `json:"members"`
	// Messages sent into each room after the joins.
	Messages int `json:"messages_per_room"`
	// Repeats of each initial /sync; Incremental syncs of each kind.
	Repeats     int `json:"repeats"`
	Incremental int `json:"incremental"`
}

// FederationOptions: the federation scenarios (scenario_federation.go).
// They run only when Target is set (cmd/myelin-bench sets it up: a test
// CA, the target's federation listener, and the peers' listeners in its
// server-name map).
type FederationOptions struct {
	Target *FederationTarget `json:"target,omitempty"`
	// IngestPeers send IngestPDUs in all, in transactions of
	// IngestBatch, each peer one transaction at a time into a room of its
	// own.
	IngestPeers int `json:"ingest_peers"`
	IngestPDUs  int `json:"ingest_pdus"`
	IngestBatch int `json:"ingest_batch"`
	// JoinStateEvents is the size of the peer's room a local user joins
	// (member events of the peer's users, after the room's first five).
	JoinStateEvents int `json:"join_state_events"`
}

// PeersNeeded is how many peer slots the federation scenarios use.
func (o FederationOptions) PeersNeeded() int { return o.IngestPeers + 1 }

// Defaults are the full sizes.
func Defaults() Options {
	return Options{
		Serial: SerialOptions{Messages: 3000},
		Throughput: ThroughputOptions{Senders: 32, Rooms: 32, Sweep: []int{1, 2, 4, 8, 16, 32, 64},
			StepDuration: 20 * time.Second, Grace: 10 * time.Second},
		BigSync:        BigSyncOptions{Rooms: 300, Members: 300, Messages: 20, Repeats: 3, Incremental: 20},
		Federation:     FederationOptions{IngestPeers: 4, IngestPDUs: 20000, IngestBatch: 50, JoinStateEvents: 10000},
		Appservice:     defaultAppserviceOptions(),
		RoomSize:       RoomSizeOptions{Members: 10000, Messages: 300},
		Concurrency:    16,
		ProfileSeconds: 10,
	}
}

// Quick are sizes for checking the tool itself (make bench-quick, tests).
func Quick() Options {
	o := Defaults()
	o.Serial.Messages = 100
	o.Throughput = ThroughputOptions{Senders: 4, Rooms: 4, Sweep: []int{1, 4}, StepDuration: 2 * time.Second, Grace: 5 * time.Second}
	o.BigSync = BigSyncOptions{Rooms: 5, Members: 5, Messages: 5, Repeats: 1, Incremental: 3}
	o.Federation = FederationOptions{IngestPeers: 2, IngestPDUs: 400, IngestBatch: 50, JoinStateEvents: 200}
	o.Appservice = quickAppserviceOptions()
	o.RoomSize = RoomSizeOptions{Members: 100, Messages: 30}
	o.ProfileSeconds = 1
	return o
}

// Result is everything a run measured; it is written as JSON.
type Result struct {
	Target   string    `json:"target"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Options  Options   `json:"options"`
	Host     struct {
		CPUs      int    `json:"cpus"`
		GoVersion string `json:"go_version"`
	} `json:"host"`
	// Registration is how users were created: "m.login.dummy" or
	// "shared-secret".
	Registration string         `json:"registration"`
	Phases       []Phase        `json:"phases"`
	Memory       []MemorySample `json:"memory,omitempty"`
	// HostChecks measure the machine itself at the start and the end
	// (hostcheck.go), to compare runs made on a shared machine.
	HostChecks []HostCheck `json:"host_checks,omitempty"`
	// Peaks are the watched processes' largest footprints over the run.
	Peaks             []Peak            `json:"peaks,omitempty"`
	DatabaseSizeBytes int64             `json:"database_size_bytes,omitempty"`
	Profiles          map[string]string `json:"profiles,omitempty"`
	// TopStatements are the database statements with the most execution
	// time during the profiled throughput step (pg_stat_statements, when
	// the server's PostgreSQL has it loaded).
	TopStatements []Statement `json:"top_statements,omitempty"`
	Notes         []string    `json:"notes,omitempty"`
	// Meta is free-form context from the caller (commit, machine notes).
	Meta map[string]string `json:"meta,omitempty"`
}

// Env is what a scenario works with.
type Env struct {
	Opts   Options
	hc     *http.Client
	res    *Result
	mu     sync.Mutex
	runID  string
	nextID int
	// limitedSetup and limitedMeasured count rate-limited answers
	// (ratelimit.go).
	limitedSetup, limitedMeasured atomic.Int64
}

// AddPhase appends a measured phase to the result.
func (e *Env) AddPhase(p Phase) {
	e.mu.Lock()
	e.res.Phases = append(e.res.Phases, p)
	e.mu.Unlock()
}

// Note records an observation that is not a number.
func (e *Env) Note(format string, args ...any) {
	e.mu.Lock()
	e.res.Notes = append(e.res.Notes, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

// Run runs the selected scenarios against opts.BaseURL.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	scen, err := lookup(opts.Scenarios)
	if err != nil {
		return nil, err
	}
	res := &Result{Target: opts.BaseURL, Started: time.Now().UTC(), Options: opts, Profiles: map[string]string{}}
	res.Host.CPUs = runtime.NumCPU()
	res.Host.GoVersion = runtime.Version()
	res.Registration = "m.login.dummy"
	if opts.Registration.SharedSecret != "" {
		res.Registration = "shared-secret"
	}
	env := &Env{Opts: opts, hc: newHTTPClient(), res: res, runID: strconv.FormatInt(time.Now().UnixNano()/1e6, 36)}
	sample := func(label string) error {
		if len(opts.Processes) == 0 {
			return nil
		}
		m, err := SampleProcesses(label, opts.Processes)
		if err != nil {
			return err
		}
		res.Memory = append(res.Memory, m)
		return nil
	}
	// Scenario 5 (idle and loaded memory) is these samples: one before any
	// load, one after each scenario.
	res.HostChecks = append(res.HostChecks, checkHost(ctx, "start", opts.DatabaseURL))
	if err := sample("idle"); err != nil {
		return res, err
	}
	if len(opts.Processes) > 0 {
		stopPeaks := peakSampler(opts.Processes, PeakInterval)
		defer func() { res.Peaks = stopPeaks() }()
	}
	for _, s := range scen {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "== %s: %s\n", s.Name, s.Title)
		}
		if err := s.Run(ctx, env); err != nil {
			return res, fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		if err := sample("after_" + s.Name); err != nil {
			return res, err
		}
	}
	// What holds the server's memory after the run: the live heap (after
	// a collection) by allocation site.
	if opts.PprofURL != "" {
		if _, err := env.fetchProfile(ctx, "heap?gc=1", "heap.pprof"); err != nil {
			return res, fmt.Errorf("heap profile: %w", err)
		}
	}
	res.HostChecks = append(res.HostChecks, checkHost(ctx, "end", opts.DatabaseURL))
	if n := env.limitedSetup.Load(); n > 0 {
		env.Note("the target rate-limited %d set-up requests (waited out and retried); turn its rate limits off for benchmarking", n)
	}
	if n := env.limitedMeasured.Load(); n > 0 {
		env.Note("the target rate-limited %d measured requests (counted as M_LIMIT_EXCEEDED errors; the client waited as told): its numbers measure the limits, not the server", n)
	}
	if opts.DatabaseURL != "" {
		n, err := DatabaseSize(ctx, opts.DatabaseURL)
		if err != nil {
			return res, fmt.Errorf("database size: %w", err)
		}
		res.DatabaseSizeBytes = n
	}
	res.Finished = time.Now().UTC()
	return res, nil
}

// Hostname-free, unique user names per run: lg<run>-<role><n>.
func (e *Env) userName(role string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nextID++
	return fmt.Sprintf("lg%s-%s%d", e.runID, role, e.nextID)
}

// NewUsers registers n users concurrently, recording the set-up phase.
func (e *Env) NewUsers(ctx context.Context, scenario, role string, n int) ([]*Client, error) {
	reg := e.Opts.Registration
	reg.AppserviceToken = "" // roomsize's only (scenario_roomsize.go)
	return e.newUsers(ctx, scenario, role, n, reg)
}

func (e *Env) newUsers(ctx context.Context, scenario, role string, n int, reg Registration) ([]*Client, error) {
	rec := newRecorder()
	stop := startProgress(e.Opts.Progress, scenario+": register "+role, rec, n, 0)
	out := make([]*Client, n)
	err := e.parallel(ctx, n, func(i int) error {
		t := time.Now()
		retry := func(f func() error) error { return e.retryLimited(ctx, f) }
		c, err := register(ctx, e.hc, e.Opts.BaseURL, reg, e.userName(role), "loadgen-password", retry)
		rec.Observe(time.Since(t), err)
		out[i] = c
		return err
	})
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary(scenario, "setup/register", map[string]any{"users": n}))
	return out, err
}

// parallel runs f(0..n-1) with opts.Concurrency workers; the first error
// stops handing out work and is returned.
func (e *Env) parallel(ctx context.Context, n int, f func(i int) error) error {
	workers := max(1, e.Opts.Concurrency)
	var (
		mu    sync.Mutex
		next  int
		first error
		wg    sync.WaitGroup
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= n || first != nil || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// JoinAll makes every client join every room (creators included is fine:
// joining again is a no-op in Matrix), recording the set-up phase.
func (e *Env) JoinAll(ctx context.Context, scenario string, clients []*Client, rooms []string) error {
	type pair struct{ c, r int }
	var work []pair
	for r := range rooms {
		for c := range clients {
			work = append(work, pair{c, r})
		}
	}
	rec := newRecorder()
	stop := startProgress(e.Opts.Progress, scenario+": joins", rec, len(work), 0)
	err := e.parallel(ctx, len(work), func(i int) error {
		w := work[i]
		t := time.Now()
		err := e.retryLimited(ctx, func() error { return clients[w.c].Join(ctx, rooms[w.r]) })
		rec.Observe(time.Since(t), err)
		return err
	})
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary(scenario, "setup/join", map[string]any{"joins": len(work)}))
	return err
}

// CreateRooms creates n rooms, creator i%len(creators), recording the
// set-up phase.
func (e *Env) CreateRooms(ctx context.Context, scenario string, creators []*Client, n int) ([]string, error) {
	rec := newRecorder()
	stop := startProgress(e.Opts.Progress, scenario+": create rooms", rec, n, 0)
	rooms := make([]string, n)
	err := e.parallel(ctx, n, func(i int) error {
		t := time.Now()
		var id string
		err := e.retryLimited(ctx, func() (err error) {
			id, err = creators[i%len(creators)].CreateRoom(ctx, fmt.Sprintf("loadgen %s %d", scenario, i))
			return err
		})
		rec.Observe(time.Since(t), err)
		rooms[i] = id
		return err
	})
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary(scenario, "setup/create_room", map[string]any{"rooms": n}))
	return rooms, err
}

// writeFile writes a fetched profile.
func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }
