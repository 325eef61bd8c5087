package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// The federation scenarios (issue #16's speed goals). Both need a target
// with federation on and the load generator's peers (fedpeer.go) in its
// server-name map; without Options.Federation.Target they record a note
// and measure nothing.
//
// fedingest: each of IngestPeers peers joins a public room of the target
// (make_join/send_join), signs its share of IngestPDUs messages chained
// one after another, then sends them in transactions of IngestBatch, one
// transaction at a time per peer, all peers at once. Only the sending is
// timed; a PDU counts when the target's answer lists it without an error
// (it answers after checking and storing each one). Throughput is PDUs
// accepted per second; a PDU's latency is its transaction's. The last PDU of each
// room must then be readable by a local member over the client API.
//
// fedjoin: a peer makes a room with JoinStateEvents member events, and a
// local user joins it through the client API (the target runs
// make_join/send_join and stores the room's state); timed from the /join
// request to its answer, then to the room's arrival in the user's /sync.
var (
	fedIngestScenario = Scenario{Name: "fedingest", Title: "federation ingest of signed PDUs (peers' transactions)", Run: runFedIngest}
	fedJoinScenario   = Scenario{Name: "fedjoin", Title: "joining a large remote room", Run: runFedJoin}
)

// peers starts n of the target's peers from slot first on.
func (e *Env) peers(first, n int) ([]*Peer, func(), error) {
	t := e.Opts.Federation.Target
	if len(t.Peers) < first+n {
		return nil, nil, fmt.Errorf("federation: %d peer slots, %d needed", len(t.Peers), first+n)
	}
	var out []*Peer
	stop := func() {
		for _, p := range out {
			_ = p.Close()
		}
	}
	for _, slot := range t.Peers[first : first+n] {
		p, err := StartPeer(slot, *t)
		if err != nil {
			stop()
			return nil, nil, err
		}
		out = append(out, p)
	}
	return out, stop, nil
}

func runFedIngest(ctx context.Context, e *Env) error {
	o := e.Opts.Federation
	if o.Target == nil {
		e.Note("fedingest: skipped (no federation target: cmd/myelin-bench sets one up)")
		return nil
	}
	peers, stop, err := e.peers(0, o.IngestPeers)
	if err != nil {
		return err
	}
	defer stop()
	owners, err := e.NewUsers(ctx, "fedingest", "fedowner", 1)
	if err != nil {
		return err
	}
	roomIDs, err := e.CreateRooms(ctx, "fedingest", owners, len(peers))
	if err != nil {
		return err
	}
	// Joins and signing are set-up, not measured.
	joinRec := newRecorder()
	rooms := make([]*PeerRoom, len(peers))
	batches := make([][][]gomatrixserverlib.PDU, len(peers))
	per := o.IngestPDUs / len(peers)
	err = e.parallel(ctx, len(peers), func(i int) error {
		t := time.Now()
		sender := peers[i].User("lg-sender")
		rr, err := peers[i].Join(ctx, roomIDs[i], sender)
		joinRec.Observe(time.Since(t), err)
		if err != nil {
			return fmt.Errorf("%s joins %s: %w", peers[i].Name, roomIDs[i], err)
		}
		rooms[i] = rr
		var batch []gomatrixserverlib.PDU
		for n := range per {
			ev, err := rr.Message(sender, fmt.Sprintf("ingest %d from %s", n, peers[i].Name))
			if err != nil {
				return err
			}
			if batch = append(batch, ev); len(batch) == o.IngestBatch || n == per-1 {
				batches[i] = append(batches[i], batch)
				batch = nil
			}
		}
		return nil
	})
	joinRec.Stop()
	e.AddPhase(joinRec.Summary("fedingest", "setup/remote join (make_join, send_join)", map[string]any{"peers": len(peers)}))
	if err != nil {
		return err
	}

	// Timed: every peer sends its transactions one after another. The
	// server's CPU (myelin and PostgreSQL) is counted from here until the
	// downstream consumers have settled, per PDU accepted: the
	// load-independent measure. A CPU profile of the first seconds and
	// the statements of the whole phase show where it goes.
	time.Sleep(settleAfterSends) // the joins' processing out of the way
	stmts := statementStats{url: e.Opts.DatabaseURL}
	withStmts := stmts.reset(ctx)
	walBefore := readWAL(ctx, e.Opts.DatabaseURL)
	cpuBefore, eachBefore := e.serverCPU()
	var profWG sync.WaitGroup
	if e.Opts.PprofURL != "" && e.Opts.ProfileSeconds > 0 {
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			endpoint := fmt.Sprintf("profile?seconds=%d", e.Opts.ProfileSeconds)
			if _, err := e.fetchProfile(ctx, endpoint, "fedingest-cpu.pprof"); err != nil {
				e.Note("fedingest: cpu profile: %v", err)
			}
		}()
	}
	rec := newRecorder()
	progress := startProgress(e.Opts.Progress, "fedingest: PDUs", rec, per*len(peers), 0)
	var wg sync.WaitGroup
	for i := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, batch := range batches[i] {
				if ctx.Err() != nil {
					return
				}
				t := time.Now()
				ok, err := peers[i].SendTransaction(ctx, batch)
				d := time.Since(t)
				for range ok {
					rec.Observe(d, nil)
				}
				for range len(batch) - ok {
					rec.Observe(d, cmpErr(err, errors.New("rejected")))
				}
			}
		}()
	}
	wg.Wait()
	rec.Stop()
	progress()
	e.settleCPU(ctx, time.Minute) // the consumers downstream finish
	cpuAfter, eachAfter := e.serverCPU()
	walAfter := readWAL(ctx, e.Opts.DatabaseURL)
	profWG.Wait()
	ph := rec.Summary("fedingest", "ingest", map[string]any{
		"peers": len(peers), "pdus": per * len(peers), "batch": o.IngestBatch})
	if ph.Extra == nil {
		ph.Extra = map[string]any{}
	}
	if n := float64(ph.Count); n > 0 {
		if cpuAfter >= 0 && cpuBefore >= 0 {
			ph.Extra["server_cpu_ms_per_event"] = (cpuAfter - cpuBefore) * 1000 / n
			for name, after := range eachAfter {
				ph.Extra[name+"_cpu_ms_per_event"] = (after - eachBefore[name]) * 1000 / n
			}
		}
		walAfter.perEvent(walBefore, ph.Count, ph.Extra)
		if withStmts {
			if calls, ms, err := stmts.totals(ctx); err == nil {
				ph.Extra["db_statements_per_event"] = float64(calls) / n
				ph.Extra["db_statement_ms_per_event"] = ms / n
			}
			if top, err := stmts.top(ctx, 12); err == nil {
				ph.Extra["top_statements"] = top
			}
		}
	}
	e.AddPhase(ph)

	// The target stored them: its member reads each room's last PDU.
	for i, rr := range rooms {
		path := clientPrefix + "/rooms/" + url.PathEscape(roomIDs[i]) + "/event/" + url.PathEscape(rr.last.EventID())
		if err := owners[0].do(ctx, http.MethodGet, path, nil, nil, nil); err != nil {
			return fmt.Errorf("the last PDU from %s is not readable by the room's member: %w", peers[i].Name, err)
		}
	}
	return ctx.Err()
}

func runFedJoin(ctx context.Context, e *Env) error {
	o := e.Opts.Federation
	if o.Target == nil {
		e.Note("fedjoin: skipped (no federation target: cmd/myelin-bench sets one up)")
		return nil
	}
	peers, stop, err := e.peers(o.IngestPeers, 1)
	if err != nil {
		return err
	}
	defer stop()
	p := peers[0]
	creator := p.User("lg-creator")
	rr, err := p.NewRoom("10", creator)
	if err != nil {
		return err
	}
	for n := range o.JoinStateEvents {
		user := p.User(fmt.Sprintf("lg-member%d", n))
		if _, err := rr.Add(user, spec.MRoomMember, &user, map[string]any{"membership": "join"}); err != nil {
			return err
		}
	}
	users, err := e.NewUsers(ctx, "fedjoin", "fedjoiner", 1)
	if err != nil {
		return err
	}
	u := users[0]
	since := ""
	if s, err := u.Sync(ctx, "", `{"room":{"timeline":{"limit":1}}}`, 0); err == nil {
		since = s.NextBatch
	}
	state := len(rr.state)
	joinRec, syncRec := newRecorder(), newRecorder()
	t := time.Now()
	q := url.Values{"server_name": {string(p.Name)}}
	err = u.do(ctx, http.MethodPost, clientPrefix+"/join/"+url.PathEscape(rr.RoomID), q, map[string]any{}, nil)
	joinRec.Observe(time.Since(t), err)
	joinRec.Stop()
	e.AddPhase(joinRec.Summary("fedjoin", "join (client /join to its answer)", map[string]any{"state_events": state}))
	if err != nil {
		// Recorded, not fatal: the report shows the failed join.
		e.Note("fedjoin: joining the peer's room of %d state events failed: %v", state, err)
		return nil
	}
	// Members lazily loaded and one timeline event: the room's arrival is
	// measured, not the transfer of its 10,000 members.
	const filter = `{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":1}}}`
	for ctx.Err() == nil {
		s, err := u.Sync(ctx, since, filter, 10*time.Second)
		if err != nil {
			syncRec.Observe(time.Since(t), err)
			e.Note("fedjoin: /sync after the join failed: %v", err)
			break
		}
		since = s.NextBatch
		if _, ok := s.Rooms.Join[rr.RoomID]; ok {
			syncRec.Observe(time.Since(t), nil)
			break
		}
		if time.Since(t) > 5*time.Minute {
			syncRec.Observe(time.Since(t), errors.New("TIMEOUT"))
			break
		}
	}
	syncRec.Stop()
	e.AddPhase(syncRec.Summary("fedjoin", "join (client /join to the room in /sync)", map[string]any{"state_events": state}))
	return ctx.Err()
}

// settleCPU waits until the server's processes are near idle (under a
// tenth of a core for half a second: the consumers downstream have caught
// up), at most max, and at least settleAfterSends.
func (e *Env) settleCPU(ctx context.Context, max time.Duration) {
	time.Sleep(settleAfterSends)
	const every = 500 * time.Millisecond
	deadline := time.Now().Add(max)
	last, _ := e.serverCPU()
	for last >= 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(every)
		now, _ := e.serverCPU()
		if now-last < 0.1*every.Seconds() {
			return
		}
		last = now
	}
}
