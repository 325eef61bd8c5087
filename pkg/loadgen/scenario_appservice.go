package loadgen

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// The appservice scenario (issue #17's speed goal: at least 1,000 events/s
// delivered to one appservice, p99 from commit to the appservice's 200
// under 100 ms). The target must have been started with a registration
// for the load generator's own appservice receiver (asreceiver.go;
// cmd/myelin-bench writes it): without Options.Appservice.Target the
// scenario records a note and measures nothing.
//
// Senders users in the appservice's users namespace share Rooms rooms, so
// every event of those rooms is the appservice's. Three phases, each
// event's latency running from the send's answer (the event is committed)
// to the transaction carrying it reaching the receiver (which answers 200
// at once); an event that reached it first counts 0 (under load the
// delivery phase also has the latencies from the send's request, an upper
// bound that includes the send's own time):
//
//   - serial: one event at a time, the next sent when the last arrived;
//   - under_load: Senders send one after another (each waits for its
//     send's answer, not for the delivery) for Duration; delivered events
//     per second and the latency under that load;
//   - backlog: the receiver answers 503 while Backlog events are sent
//     and queued (seen in Myelin's admin listing when AdminURL is set),
//     then recovers; the drain rate is the events of the transactions after
//     the first successful one over the time from it to the last, so the
//     server's backoff wait is not counted.
var appserviceScenario = Scenario{Name: "appservice", Title: "delivery to one application service (transactions pushed to the load generator's receiver)", Run: runAppservice}

// AppserviceOptions: the appservice scenario.
type AppserviceOptions struct {
	Target   *AppserviceTarget `json:"target,omitempty"`
	Senders  int               `json:"senders"`
	Rooms    int               `json:"rooms"`
	Serial   int               `json:"serial_events"`
	Duration time.Duration     `json:"under_load_duration"`
	Backlog  int               `json:"backlog_events"`
	// Grace bounds the wait for the last deliveries of a phase (the
	// backlog phase adds Backlog/100 seconds to it).
	Grace time.Duration `json:"grace"`
}

func defaultAppserviceOptions() AppserviceOptions {
	return AppserviceOptions{Senders: 8, Rooms: 4, Serial: 500, Duration: 20 * time.Second, Backlog: 5000, Grace: 30 * time.Second}
}

func quickAppserviceOptions() AppserviceOptions {
	return AppserviceOptions{Senders: 2, Rooms: 2, Serial: 20, Duration: 2 * time.Second, Backlog: 200, Grace: 30 * time.Second}
}

// bindAppserviceFlags registers the scenario's size flags.
func bindAppserviceFlags(fs *flag.FlagSet, o *AppserviceOptions) {
	fs.IntVar(&o.Senders, "as-senders", o.Senders, "scenario appservice: senders in the appservice's rooms (under load and backlog)")
	fs.IntVar(&o.Rooms, "as-rooms", o.Rooms, "scenario appservice: rooms the senders share")
	fs.IntVar(&o.Serial, "as-serial", o.Serial, "scenario appservice: events sent one at a time, each after the last was delivered")
	fs.DurationVar(&o.Duration, "as-duration", o.Duration, "scenario appservice: length of the under-load phase")
	fs.IntVar(&o.Backlog, "as-backlog", o.Backlog, "scenario appservice: events queued while the appservice fails, then drained")
}

// quickAppservice applies the quick sizes to the flags not given.
func quickAppservice(set map[string]bool, o *AppserviceOptions) {
	q := quickAppserviceOptions()
	for name, p := range map[string][2]*int{"as-senders": {&o.Senders, &q.Senders}, "as-rooms": {&o.Rooms, &q.Rooms},
		"as-serial": {&o.Serial, &q.Serial}, "as-backlog": {&o.Backlog, &q.Backlog}} {
		if !set[name] {
			*p[0] = *p[1]
		}
	}
	if !set["as-duration"] {
		o.Duration = q.Duration
	}
}

func (o AppserviceOptions) validate() error {
	if o.Senders < 1 || o.Rooms < 1 || o.Serial < 1 || o.Backlog < 1 || o.Duration < time.Second || o.Grace <= 0 {
		return fmt.Errorf("appservice sizes must be positive and -as-duration at least 1s")
	}
	return nil
}

func runAppservice(ctx context.Context, e *Env) error {
	o := e.Opts.Appservice
	if o.Target == nil {
		e.Note("appservice: skipped (no appservice target: cmd/myelin-bench registers one)")
		return nil
	}
	recv := startReceiver(*o.Target)
	defer recv.close()
	users, err := e.NewUsers(ctx, "appservice", "asuser", o.Senders)
	if err != nil {
		return err
	}
	rooms, err := e.CreateRooms(ctx, "appservice", users[:1], o.Rooms)
	if err != nil {
		return err
	}
	if err := e.JoinAll(ctx, "appservice", users, rooms); err != nil {
		return err
	}
	if err := e.asSerial(ctx, recv, users[0], rooms[0]); err != nil {
		return err
	}
	if err := e.asUnderLoad(ctx, recv, users, rooms); err != nil {
		return err
	}
	if err := e.asBacklog(ctx, recv, users, rooms); err != nil {
		return err
	}
	if p := recv.problemCounts(); len(p) > 0 {
		e.Note("appservice: the receiver saw protocol problems: %v", p)
	}
	return nil
}

func (e *Env) asSerial(ctx context.Context, recv *asReceiver, c *Client, room string) error {
	o := e.Opts.Appservice
	rec := newRecorder()
	stop := startProgress(e.Opts.Progress, "appservice: serial", rec, o.Serial, 0)
	for i := range o.Serial {
		if ctx.Err() != nil {
			break
		}
		id, err := c.Send(ctx, room, fmt.Sprintf("as serial %d", i))
		sent := time.Now()
		if err != nil {
			rec.Observe(0, err)
			e.waitLimited(ctx, err)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, o.Grace)
		n := recv.waitAll(wctx, []string{id})
		cancel()
		if n == 0 {
			rec.Observe(0, &MatrixError{Errcode: "NOT_DELIVERED"})
			continue
		}
		at, _ := recv.arrival(id)
		rec.Observe(max(at.Sub(sent), 0), nil)
	}
	rec.Stop()
	stop()
	e.AddPhase(rec.Summary("appservice", "serial", map[string]any{"events": o.Serial}))
	return ctx.Err()
}

// sendFor has each client send into rooms one message after another
// until ctx ends or (total > 0) until total messages are sent; it returns
// each sent event's request and answer times.
func (e *Env) sendFor(ctx context.Context, clients []*Client, rooms []string, total int, label string, rec *Recorder) map[string]sendTimes {
	var (
		mu     sync.Mutex
		sentAt = map[string]sendTimes{}
		next   int
		wg     sync.WaitGroup
	)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ctx.Err() == nil; k++ {
				mu.Lock()
				if total > 0 && next >= total {
					mu.Unlock()
					return
				}
				next++
				mu.Unlock()
				t := time.Now()
				id, err := c.Send(ctx, rooms[(i+k)%len(rooms)], fmt.Sprintf("as %s %d/%d", label, i, k))
				done := time.Now()
				if ctx.Err() != nil && err != nil {
					return
				}
				rec.Observe(done.Sub(t), err)
				e.waitLimited(ctx, err)
				if err == nil {
					mu.Lock()
					sentAt[id] = sendTimes{asked: t, answered: done}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return sentAt
}

// sendTimes are when a send was asked and when it was answered: the event
// was committed in between.
type sendTimes struct{ asked, answered time.Time }

func (e *Env) asUnderLoad(ctx context.Context, recv *asReceiver, users []*Client, rooms []string) error {
	o := e.Opts.Appservice
	sendRec := newRecorder()
	stop := startProgress(e.Opts.Progress, fmt.Sprintf("appservice: under load, %d senders", len(users)), sendRec, 0, o.Duration)
	start := time.Now()
	stepCtx, cancel := context.WithTimeout(ctx, o.Duration)
	sentAt := e.sendFor(stepCtx, users, rooms, 0, "load", sendRec)
	cancel()
	sendRec.Stop()
	stop()
	params := map[string]any{"senders": len(users), "rooms": len(rooms)}
	e.AddPhase(sendRec.Summary("appservice", "under_load/send", params))

	ids := make([]string, 0, len(sentAt))
	for id := range sentAt {
		ids = append(ids, id)
	}
	wctx, cancel := context.WithTimeout(ctx, o.Grace)
	recv.waitAll(wctx, ids)
	cancel()
	// The commit is between the send's request and its answer: latencies
	// from the answer (0 when the event arrived first) are the phase's,
	// those from the request (the send's own time included) its extra.
	deliv, fromAsk := newRecorder(), newRecorder()
	deliv.start = start
	var last time.Time
	for id, sent := range sentAt {
		at, ok := recv.arrival(id)
		if !ok {
			deliv.Observe(0, &MatrixError{Errcode: "NOT_DELIVERED"})
			continue
		}
		deliv.Observe(max(at.Sub(sent.answered), 0), nil)
		fromAsk.Observe(at.Sub(sent.asked), nil)
		if at.After(last) {
			last = at
		}
	}
	deliv.end = last
	ph := deliv.Summary("appservice", "under_load/delivery", params)
	l := fromAsk.Summary("", "", nil).Latency
	ph.Extra = map[string]any{"from_request_p50_ms": l.P50, "from_request_p99_ms": l.P99}
	e.AddPhase(ph)
	return ctx.Err()
}

func (e *Env) asBacklog(ctx context.Context, recv *asReceiver, users []*Client, rooms []string) error {
	o := e.Opts.Appservice
	recv.setFailing(true)
	sendRec := newRecorder()
	stop := startProgress(e.Opts.Progress, "appservice: backlog (appservice failing)", sendRec, o.Backlog, 0)
	sentAt := e.sendFor(ctx, users, rooms, o.Backlog, "backlog", sendRec)
	sendRec.Stop()
	stop()
	if err := e.waitQueued(ctx, len(sentAt)); err != nil {
		recv.setFailing(false)
		return err
	}
	ids := make([]string, 0, len(sentAt))
	for id := range sentAt {
		ids = append(ids, id)
	}
	cpuBefore, _ := e.serverCPU()
	first := recv.txnCount()
	recv.setFailing(false)
	wctx, cancel := context.WithTimeout(ctx, o.Grace+time.Duration(o.Backlog/100)*time.Second)
	n := recv.waitAll(wctx, ids)
	cancel()
	cpuAfter, _ := e.serverCPU()
	txns := recv.txnsSince(first)
	ph := Phase{Scenario: "appservice", Name: "backlog/drain", Count: n, Errors: map[string]int{},
		Params: map[string]any{"backlog": o.Backlog, "senders": len(users)}, Extra: map[string]any{}}
	for k, v := range recv.problemCounts() {
		ph.Errors[k] = v
	}
	if n < len(ids) {
		ph.Errors["NOT_DELIVERED"] = len(ids) - n
	}
	if failed := o.Backlog - len(ids); failed > 0 {
		ph.Errors["SEND_FAILED"] = failed
	}
	if len(txns) > 1 {
		events := 0
		for _, t := range txns[1:] {
			events += t.events
		}
		ph.DurationSec = txns[len(txns)-1].at.Sub(txns[0].at).Seconds()
		if ph.DurationSec > 0 {
			ph.Throughput = float64(events) / ph.DurationSec
		}
		ph.Extra["transactions"] = len(txns)
		ph.Extra["events_per_transaction"] = float64(n) / float64(len(txns))
	}
	if cpuBefore >= 0 && cpuAfter >= 0 && n > 0 {
		ph.Extra["server_cpu_ms_per_event"] = (cpuAfter - cpuBefore) * 1000 / float64(n)
	}
	e.AddPhase(sendRec.Summary("appservice", "backlog/send", ph.Params))
	e.AddPhase(ph)
	return ctx.Err()
}

// waitQueued waits (up to Grace) until the server's admin listing shows at
// least n items queued for the target appservice; without an admin URL it
// returns at once.
func (e *Env) waitQueued(ctx context.Context, n int) error {
	t := e.Opts.Appservice.Target
	if t.AdminURL == "" {
		return nil
	}
	deadline := time.Now().Add(e.Opts.Appservice.Grace)
	for {
		depth, err := e.queueDepth(ctx, t)
		if err != nil {
			return fmt.Errorf("appservice admin listing: %w", err)
		}
		if depth >= int64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			e.Note("appservice: only %d of %d backlog events queued after %s; draining anyway", depth, n, e.Opts.Appservice.Grace)
			return nil
		}
		sleep(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (e *Env) queueDepth(ctx context.Context, t *AppserviceTarget) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.AdminURL, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+t.AdminToken)
	res, err := e.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d", res.StatusCode)
	}
	var out struct {
		Appservices []struct {
			ID         string `json:"id"`
			QueueDepth int64  `json:"queue_depth,string"`
		} `json:"appservices"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return 0, err
	}
	for _, a := range out.Appservices {
		if a.ID == t.ID {
			return a.QueueDepth, nil
		}
	}
	return 0, fmt.Errorf("appservice %q not listed", t.ID)
}
