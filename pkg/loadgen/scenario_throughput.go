package loadgen

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Scenarios 2 and 3: closed-loop throughput and send-to-sync delivery.
//
// N senders and M rooms, every sender in every room. At each step of the
// sweep, n senders each send one message, wait for the 200, and send the
// next (sender i's k-th message goes to room (i+k) mod M) for a fixed time.
// Meanwhile one more member of every room long-polls /sync; the delivery
// time of a message is from its send's 200 to the /sync answer that
// carries it (0 when /sync was faster than the send's answer).
var throughputScenario = Scenario{Name: "throughput", Title: "closed-loop throughput sweep and send-to-sync delivery", Run: runThroughput, Portable: true}

func runThroughput(ctx context.Context, e *Env) error {
	o := e.Opts.Throughput
	maxN := slices.Max(append(slices.Clone(o.Sweep), o.Senders))
	users, err := e.NewUsers(ctx, "throughput", "sender", maxN+1)
	if err != nil {
		return err
	}
	senders, observer := users[:maxN], users[maxN]
	rooms, err := e.CreateRooms(ctx, "throughput", senders, o.Rooms)
	if err != nil {
		return err
	}
	if err := e.JoinAll(ctx, "throughput", users, rooms); err != nil {
		return err
	}
	sweep := slices.Clone(o.Sweep)
	slices.Sort(sweep)
	for _, n := range sweep {
		if err := e.throughputStep(ctx, senders[:n], observer, rooms, n == o.Senders); err != nil {
			return err
		}
	}
	return nil
}

func (e *Env) throughputStep(ctx context.Context, senders []*Client, observer *Client, rooms []string, profile bool) error {
	o := e.Opts.Throughput
	n := len(senders)
	params := map[string]any{"senders": n, "rooms": len(rooms)}
	if profile {
		params["profiled"] = e.Opts.PprofURL != ""
	}

	// The observer starts from "now", so it sees only this step's sends.
	timelineFilter := `{"room":{"timeline":{"limit":1000}}}`
	first, err := observer.Sync(ctx, "", timelineFilter, 0)
	if err != nil {
		return fmt.Errorf("observer initial /sync: %w", err)
	}
	var (
		mu       sync.Mutex
		sentAt   = map[string]time.Time{}
		arrived  = map[string]time.Time{}
		limited  int
		syncErrs = newRecorder()
	)
	obsCtx, stopObs := context.WithCancel(ctx)
	obsDone := make(chan struct{})
	defer func() { stopObs(); <-obsDone }()
	go func() {
		defer close(obsDone)
		since := first.NextBatch
		for obsCtx.Err() == nil {
			t := time.Now()
			r, err := observer.Sync(obsCtx, since, timelineFilter, 10*time.Second)
			if obsCtx.Err() != nil {
				return
			}
			syncErrs.Observe(time.Since(t), err)
			if err != nil {
				if !e.waitLimited(obsCtx, err) {
					sleep(obsCtx, 50*time.Millisecond)
				}
				continue
			}
			now := time.Now()
			mu.Lock()
			for _, room := range r.Rooms.Join {
				if room.Timeline.Limited {
					limited++
				}
				for _, ev := range room.Timeline.Events {
					if _, seen := arrived[ev.EventID]; !seen {
						arrived[ev.EventID] = now
					}
				}
			}
			mu.Unlock()
			since = r.NextBatch
		}
	}()

	stmts := statementStats{url: e.Opts.DatabaseURL}
	withStmts := profile && stmts.reset(ctx)
	walBefore := readWAL(ctx, e.Opts.DatabaseURL)
	cpuBefore, eachBefore := e.serverCPU()
	selfBefore := selfCPU()
	rec := newRecorder()
	name := fmt.Sprintf("throughput: N=%d M=%d", n, len(rooms))
	stopProg := startProgress(e.Opts.Progress, name, rec, 0, o.StepDuration)
	stepCtx, cancel := context.WithTimeout(ctx, o.StepDuration)
	var profErr error
	var profWG sync.WaitGroup
	if profile && e.Opts.PprofURL != "" {
		secs := max(1, min(e.Opts.ProfileSeconds, int(o.StepDuration.Seconds())-1))
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			_, profErr = e.fetchProfile(ctx, fmt.Sprintf("profile?seconds=%d", secs), "cpu.pprof")
		}()
	}
	var wg sync.WaitGroup
	for i, c := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; stepCtx.Err() == nil; k++ {
				room := rooms[(i+k)%len(rooms)]
				t := time.Now()
				id, err := c.Send(stepCtx, room, fmt.Sprintf("load %d/%d", i, k))
				done := time.Now()
				if stepCtx.Err() != nil && err != nil {
					return // cut off by the end of the step, not a server error
				}
				rec.Observe(done.Sub(t), err)
				e.waitLimited(stepCtx, err)
				if err == nil {
					mu.Lock()
					sentAt[id] = done
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	rec.Stop()
	stopProg()
	cpuAfter, eachAfter := e.serverCPU()
	selfAfter := selfCPU()
	walAfter := readWAL(ctx, e.Opts.DatabaseURL)
	profWG.Wait()
	if profErr != nil {
		return fmt.Errorf("cpu profile: %w", profErr)
	}
	if profile && e.Opts.PprofURL != "" {
		if _, err := e.fetchProfile(ctx, "allocs", "allocs.pprof"); err != nil {
			return fmt.Errorf("allocation profile: %w", err)
		}
	}
	var stmtCalls int64
	var stmtMS float64
	if withStmts {
		top, err := stmts.top(ctx, 20)
		if err != nil {
			return fmt.Errorf("pg_stat_statements: %w", err)
		}
		e.res.TopStatements = top
		if stmtCalls, stmtMS, err = stmts.totals(ctx); err != nil {
			return fmt.Errorf("pg_stat_statements: %w", err)
		}
	}
	ph := rec.Summary("throughput", "send", params)
	if withStmts && ph.Count > 0 {
		// Every statement costs the database a round of protocol and
		// executor work: statements per event is a load-independent count
		// of it. The time includes waiting (for locks and for the CPU).
		ph.Extra = map[string]any{
			"db_statements_per_event":   float64(stmtCalls) / float64(ph.Count),
			"db_statement_ms_per_event": stmtMS / float64(ph.Count),
		}
	}
	if cpuAfter >= 0 && cpuBefore >= 0 && ph.Count > 0 {
		if ph.Extra == nil {
			ph.Extra = map[string]any{}
		}
		ph.Extra["server_cpu_seconds"] = cpuAfter - cpuBefore
		ph.Extra["server_cpu_ms_per_event"] = (cpuAfter - cpuBefore) * 1000 / float64(ph.Count)
		ph.Extra["server_cpu_cores_busy"] = (cpuAfter - cpuBefore) / ph.DurationSec
		// The load generator shares the machine: what it used is not
		// available to the server.
		ph.Extra["loadgen_cpu_cores_busy"] = (selfAfter - selfBefore) / ph.DurationSec
		// Per process (myelin, postgres...): where the CPU goes.
		for name, after := range eachAfter {
			ph.Extra[name+"_cpu_ms_per_event"] = (after - eachBefore[name]) * 1000 / float64(ph.Count)
		}
	}
	if ph.Extra == nil {
		ph.Extra = map[string]any{}
	}
	walAfter.perEvent(walBefore, ph.Count, ph.Extra)
	e.AddPhase(ph)

	// Let the observer catch the last sends, then measure delivery.
	deadline := time.Now().Add(o.Grace)
	for time.Now().Before(deadline) {
		mu.Lock()
		missing := 0
		for id := range sentAt {
			if _, ok := arrived[id]; !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopObs()
	<-obsDone
	mu.Lock()
	defer mu.Unlock()
	del := newRecorder()
	del.start = rec.start
	del.end = rec.end
	missed, early := 0, 0
	for id, sent := range sentAt {
		at, ok := arrived[id]
		if !ok {
			missed++
			continue
		}
		d := at.Sub(sent)
		if d < 0 {
			early++
			d = 0
		}
		del.latencies = append(del.latencies, d)
	}
	if missed > 0 {
		del.errors["NOT_DELIVERED"] = missed
	}
	for code, k := range syncErrs.errors {
		del.errors["SYNC_"+code] += k
	}
	dp := del.Summary("send_to_sync", "delivery", params)
	dp.Extra = map[string]any{
		"delivered_before_send_answer": early,
		"limited_timelines":            limited,
		"observer_syncs":               len(syncErrs.latencies),
		"grace_seconds":                o.Grace.Seconds(),
	}
	e.AddPhase(dp)
	return nil
}

// serverCPU is the CPU seconds of every watched process, or -1, and each
// process's by name.
func (e *Env) serverCPU() (float64, map[string]float64) {
	if len(e.Opts.Processes) == 0 {
		return -1, nil
	}
	m, err := SampleProcesses("", e.Opts.Processes)
	if err != nil {
		return -1, nil
	}
	var s float64
	each := map[string]float64{}
	for _, p := range m.Processes {
		s += p.CPUSeconds
		each[p.Name] += p.CPUSeconds
	}
	return s, each
}

// selfCPU is this process's user+system CPU seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
