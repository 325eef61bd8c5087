package fedsender

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/services/fedsender/internal/lease"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// The sending side. Every replica runs the same loop; the destinations
// and the stream consumers are shared among the live replicas by leases in
// NATS JetStream KV buckets (internal/lease): each replica takes the keys
// it wins by rendezvous hashing over the live members and hands back the
// ones it no longer wins, so a replica that joins, leaves or dies moves
// only its share, within about lease_ttl. The holder of a destination's
// lease runs its worker; the holder of the "consumers" lease runs the
// stream consumers (consumer.go). A worker sends one transaction at a
// time: the one in flight (retried as it was, same ID and content, until
// the destination answers, as the spec asks) or a new one of the oldest
// waiting rows (at most 50 PDUs and 100 EDUs). Its writes of the queue
// position are fenced in PostgreSQL by the lease's token (store.Fence), and
// each request runs under the lease's context, which ends when the lease is
// lost or its validity on this clock runs out. A failure waits
// backoff_min, doubling up to backoff_max; a 200 answer resets it. A
// destination failing for catch_up_after keeps only each room's newest
// PDU. A slow or broken destination holds up only its own worker. A worker
// whose queue stays empty for idleRelease hands its lease back.

// wakeSubject carries, on core NATS, the destinations whose queues grew:
// the consumers run on one replica, the destinations' workers on all.
const wakeSubject = "myelin.fedsender.wake"

// consumersKey is the lease of the stream consumers.
const consumersKey = "consumers"

// boundsCheckInterval is how often a waiting worker checks its queue's
// bounds while rows keep arriving.
const boundsCheckInterval = 5 * time.Second

// idleRelease is how long a worker waits with an empty queue before it
// hands its destination back.
const idleRelease = time.Minute

type sender struct {
	s *Service

	// startMu makes taking a key one step at a time.
	startMu sync.Mutex

	mu      sync.Mutex
	leases  *lease.Manager // nil until run opens it
	ctx     context.Context
	wg      sync.WaitGroup
	workers map[string]*worker
	// stopConsumers stops the consumers this replica runs (nil: none).
	stopConsumers context.CancelFunc
}

type worker struct {
	dest  string
	lease *lease.Lease
	fence store.Fence
	// lastBoundsCheck is when the queue's bounds were last checked.
	lastBoundsCheck time.Time
	// wake: rows were queued (a buffered channel of one).
	wake chan struct{}
	// answered: the destination answered another request; retry now.
	answered chan struct{}
	// stop ends the worker (which then releases the lease); done is
	// closed when it has.
	stop context.CancelFunc
	done chan struct{}
}

func newSender(s *Service) *sender {
	return &sender{s: s, workers: map[string]*worker{}}
}

// destKey is a destination's lease key (KV keys allow few characters).
func destKey(dest string) string { return "d." + base64.RawURLEncoding.EncodeToString([]byte(dest)) }

// memberID names this replica: its host name and a random suffix.
func memberID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	return fmt.Sprintf("%s-%08x", host, rand.Uint32())
}

// run joins the replicas and sends what this replica owns until ctx ends,
// then hands everything back.
func (d *sender) run(ctx context.Context) error {
	s := d.s
	var m *lease.Manager
	for {
		var err error
		m, err = lease.Open(ctx, s.js, lease.Config{Bucket: s.cfg.ConsumerPrefix, TTL: s.cfg.LeaseTTL, ID: memberID()}, s.log)
		if err == nil {
			break
		}
		s.log.Warn("federation sender: leases", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	s.log.Info("federation sender: joined the replicas", zap.String("member", m.ID()), zap.Strings("members", m.Members()))
	d.mu.Lock()
	d.leases, d.ctx = m, ctx
	d.mu.Unlock()
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); _ = m.Run(ctx) }()
	sub, err := s.js.Conn().Subscribe(wakeSubject, func(msg *nats.Msg) {
		var dests []string
		if json.Unmarshal(msg.Data, &dests) == nil {
			d.wake(dests...)
		}
	})
	if err != nil {
		s.log.Warn("federation sender: wake subscription (workers rely on polling)", zap.Error(err))
	}
	t := time.NewTicker(max(s.cfg.LeaseTTL/5, 100*time.Millisecond))
	defer t.Stop()
	for ctx.Err() == nil {
		d.rebalance(ctx)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	// Graceful exit: stop sending, then release the leases, so the others
	// take over at once.
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	d.wg.Wait()
	bg.Wait()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	m.Close(cctx)
	s.log.Info("federation sender: left the replicas", zap.String("member", m.ID()))
	return nil
}

// rebalance hands back what this replica no longer wins and takes what it
// wins: the consumers, and every destination with waiting rows.
func (d *sender) rebalance(ctx context.Context) {
	s := d.s
	d.mu.Lock()
	m := d.leases
	var giveUp []*worker
	for dest, w := range d.workers {
		if !m.Wants(destKey(dest)) {
			giveUp = append(giveUp, w)
		}
	}
	stopConsumers := d.stopConsumers
	d.mu.Unlock()
	// A hand-over stops the worker first (its request in flight is
	// aborted) and releases the lease after, so the next owner never
	// overlaps with it.
	for _, w := range giveUp {
		s.log.Info("federation sender: handing a destination over", zap.String("destination", w.dest))
		w.stop()
		<-w.done
	}
	switch wants := m.Wants(consumersKey); {
	case stopConsumers != nil && !wants:
		s.log.Info("federation sender: handing the consumers over")
		stopConsumers()
	case stopConsumers == nil && wants:
		d.takeConsumers(ctx)
	}
	dests, err := s.store.PendingDestinations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("federation sender: pending destinations", zap.Error(err))
		}
		return
	}
	d.wake(dests...)
}

// takeConsumers runs the stream consumers while this replica holds their
// lease.
func (d *sender) takeConsumers(ctx context.Context) {
	s := d.s
	l, err := d.leases.Acquire(ctx, consumersKey)
	if err != nil {
		if !errors.Is(err, lease.ErrHeld) && ctx.Err() == nil {
			s.log.Warn("federation sender: consumers lease", zap.Error(err))
		}
		return
	}
	s.log.Info("federation sender: this replica runs the consumers")
	lctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(l.Context(), cancel)
	done := make(chan struct{})
	d.mu.Lock()
	d.stopConsumers = func() { cancel(); <-done }
	d.mu.Unlock()
	var cwg sync.WaitGroup
	for _, c := range s.consumers {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for lctx.Err() == nil {
				err := c.Run(lctx, s.js, s.log)
				if lctx.Err() != nil {
					return
				}
				s.log.Warn("consumer stopped; starting it again", zap.String("consumer", c.Name), zap.Error(err))
				select {
				case <-lctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		cwg.Wait()
		cancel()
		d.leases.Release(context.WithoutCancel(ctx), l)
		d.mu.Lock()
		d.stopConsumers = nil
		d.mu.Unlock()
		close(done)
	}()
}

// notify tells every replica that rows were queued for dests.
func (d *sender) notify(dests []string) {
	if len(dests) == 0 {
		return
	}
	d.wake(dests...)
	if b, err := json.Marshal(dests); err == nil {
		if err := d.s.js.Conn().Publish(wakeSubject, b); err != nil {
			d.s.log.Debug("federation sender: wake", zap.Error(err))
		}
	}
}

// wake tells the destinations' workers on this replica that rows were
// queued, and takes the destinations this replica wins but holds not.
func (d *sender) wake(dests ...string) {
	d.mu.Lock()
	m, ctx := d.leases, d.ctx
	d.mu.Unlock()
	if m == nil || ctx.Err() != nil {
		return
	}
	for _, dest := range dests {
		if dest == "" || dest == string(d.s.serverName) {
			continue
		}
		d.mu.Lock()
		w := d.workers[dest]
		d.mu.Unlock()
		if w == nil && m.Wants(destKey(dest)) {
			w = d.start(ctx, dest)
		}
		if w == nil {
			continue
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// start takes a destination's lease and fence and starts its worker (nil
// when another replica holds it).
func (d *sender) start(ctx context.Context, dest string) *worker {
	s := d.s
	d.startMu.Lock()
	defer d.startMu.Unlock()
	d.mu.Lock()
	w := d.workers[dest]
	d.mu.Unlock()
	if w != nil {
		return w
	}
	l, err := d.leases.Acquire(ctx, destKey(dest))
	if err != nil {
		if !errors.Is(err, lease.ErrHeld) && ctx.Err() == nil {
			s.log.Warn("federation sender: destination lease", zap.String("destination", dest), zap.Error(err))
		}
		return nil
	}
	f := store.Fence{Epoch: l.Token.Epoch, Token: l.Token.Rev, Owner: d.leases.ID()}
	if err := s.store.TakeFence(ctx, dest, f); err != nil {
		s.log.Warn("federation sender: destination fence", zap.String("destination", dest), zap.Error(err))
		d.leases.Release(ctx, l)
		return nil
	}
	s.stats.leasesTaken.Inc()
	wctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(l.Context(), cancel)
	w = &worker{dest: dest, lease: l, fence: f, wake: make(chan struct{}, 1), answered: make(chan struct{}, 1),
		stop: cancel, done: make(chan struct{})}
	d.mu.Lock()
	d.workers[dest] = w
	d.mu.Unlock()
	s.log.Debug("federation sender: took a destination", zap.String("destination", dest), zap.Int64("token", f.Token))
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(w.done)
		d.runWorker(wctx, w)
		cancel()
		d.mu.Lock()
		if d.workers[dest] == w {
			delete(d.workers, dest)
		}
		d.mu.Unlock()
		d.leases.Release(context.WithoutCancel(ctx), l)
	}()
	return w
}

// answered tells a destination's worker that the destination answered
// another request, so a worker waiting out a backoff tries now.
func (d *sender) answered(dest string) {
	d.mu.Lock()
	w := d.workers[dest]
	d.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.answered <- struct{}{}:
	default:
	}
}

// runWorker sends a destination's queue until ctx ends.
func (d *sender) runWorker(ctx context.Context, w *worker) {
	s := d.s
	log := s.log.With(zap.String("destination", w.dest))
	pause := func(dur time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(dur):
			return true
		}
	}
	for ctx.Err() == nil {
		st, err := s.store.Destination(ctx, w.dest)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("destination state", zap.Error(err))
			if !pause(time.Second) {
				return
			}
			continue
		}
		if wait := st.RetryAt.Sub(s.now()); wait > 0 {
			if !d.waitBackoff(ctx, w, wait, log) {
				return
			}
			continue
		}
		txn, err := s.store.NextTransaction(ctx, w.dest, w.fence, maxPDUsPerTxn, maxEDUsPerTxn, s.now())
		if errors.Is(err, store.ErrFenced) {
			log.Warn("another replica owns the destination now; stopping", zap.Error(err))
			return
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("next transaction", zap.Error(err))
			if !pause(time.Second) {
				return
			}
			continue
		}
		if txn == nil {
			idle := time.NewTimer(idleRelease)
			select {
			case <-ctx.Done():
				idle.Stop()
				return
			case <-idle.C:
				return // hands the lease back; a new row takes it again
			case <-w.wake:
			case <-w.answered:
			}
			idle.Stop()
			continue
		}
		if err := d.send(ctx, w, txn, log); err != nil {
			if ctx.Err() != nil {
				return
			}
			st, ferr := s.store.RecordFailure(ctx, w.dest, w.fence, s.now(), d.backoff, s.cfg.CatchUpAfter)
			if errors.Is(ferr, store.ErrFenced) {
				return
			}
			if ferr != nil {
				log.Warn("record failure", zap.Error(ferr))
				if !pause(time.Second) {
					return
				}
				continue
			}
			s.stats.transactions.WithLabelValues("failed").Inc()
			log.Info("transaction failed; backing off", zap.String("txn_id", txn.ID), zap.Int("failures", st.Failures),
				zap.Time("retry_at", st.RetryAt), zap.Bool("catch_up", st.CatchUp), zap.Error(err))
			continue
		}
		if err := s.store.CompleteTransaction(ctx, w.dest, w.fence, txn.ID, s.now()); err != nil {
			// Sent again later with the same ID (by this replica or the
			// next owner): the destination drops the repeat.
			if errors.Is(err, store.ErrFenced) {
				return
			}
			log.Warn("complete transaction", zap.Error(err))
			if !pause(time.Second) {
				return
			}
		}
		// A destination that answers, but more slowly than rows arrive,
		// is held to the bounds too.
		d.checkBounds(ctx, w, log)
	}
}

// waitBackoff waits out a backoff. Rows queued meanwhile are checked
// against the queue's bounds (at most every boundsCheckInterval); an
// answer of the destination to another request ends the wait.
func (d *sender) waitBackoff(ctx context.Context, w *worker, wait time.Duration, log *zap.Logger) bool {
	s := d.s
	timer := time.NewTimer(wait)
	defer timer.Stop()
	w.lastBoundsCheck = time.Time{}
	check := func() { d.checkBounds(ctx, w, log) }
	check()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-w.wake:
			check()
		case <-w.answered:
			if err := s.store.Answered(ctx, w.dest, s.now()); err != nil {
				log.Warn("reset backoff", zap.Error(err))
			}
			return true
		}
	}
}

// checkBounds keeps the destination's queue within its bounds, at most
// every boundsCheckInterval.
func (d *sender) checkBounds(ctx context.Context, w *worker, log *zap.Logger) {
	if time.Since(w.lastBoundsCheck) < boundsCheckInterval {
		return
	}
	w.lastBoundsCheck = time.Now()
	b, err := d.s.store.EnforceBounds(ctx, w.dest, d.s.cfg.MaxQueuedPDUs, d.s.cfg.MaxQueuedEDUs)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("queue bounds", zap.Error(err))
		}
		return
	}
	if b.CatchUp || b.DroppedPDUs > 0 || b.DroppedEDUs > 0 {
		log.Warn("queue over its bound: dropped the oldest", zap.Bool("catch_up", b.CatchUp),
			zap.Int64("dropped_pdus", b.DroppedPDUs), zap.Int64("dropped_edus", b.DroppedEDUs))
	}
}

// backoff is the wait after the n-th consecutive failure: backoff_min
// doubling up to backoff_max, less up to a tenth at random (so
// destinations that failed together do not retry together).
func (d *sender) backoff(n int) time.Duration {
	b := d.s.cfg.BackoffMin
	for i := 1; i < n && b < d.s.cfg.BackoffMax; i++ {
		b *= 2
	}
	b = min(b, d.s.cfg.BackoffMax)
	return b - time.Duration(rand.Int64N(int64(b)/10+1))
}

// send sends one transaction. Per-PDU errors in the answer are logged, not
// retried: the destination has the transaction.
//
// ctx is the lease's: it ends when the lease is lost or its validity runs
// out, which aborts the request. Valid is checked just before sending, so
// an owner paused past its lease that resumes here does not send.
func (d *sender) send(ctx context.Context, w *worker, txn *store.Transaction, log *zap.Logger) error {
	s := d.s
	dest := w.dest
	fc, err := s.fed.Federation(ctx)
	if err != nil {
		return err
	}
	t := gomatrixserverlib.Transaction{
		TransactionID:  gomatrixserverlib.TransactionID(txn.ID),
		Origin:         s.serverName,
		Destination:    spec.ServerName(dest),
		OriginServerTS: spec.Timestamp(txn.TS),
		PDUs:           make([]json.RawMessage, 0, len(txn.PDUs)),
	}
	for _, p := range txn.PDUs {
		t.PDUs = append(t.PDUs, p.JSON)
	}
	for _, e := range txn.EDUs {
		t.EDUs = append(t.EDUs, gomatrixserverlib.EDU{Type: e.Type, Origin: string(s.serverName), Destination: dest, Content: e.Content})
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if !w.lease.Valid() {
		return lease.ErrExpired
	}
	resp, err := fc.SendTransaction(rctx, t)
	if err != nil {
		return err
	}
	for id, res := range resp.PDUs {
		if res.Error != "" {
			s.stats.pduErrors.Inc()
			log.Warn("the destination refused a PDU", zap.String("txn_id", txn.ID), zap.String("event_id", id), zap.String("error", res.Error))
		}
	}
	s.stats.transactions.WithLabelValues("sent").Inc()
	s.stats.pdus.Add(float64(len(txn.PDUs)))
	s.stats.edus.Add(float64(len(txn.EDUs)))
	log.Debug("transaction sent", zap.String("txn_id", txn.ID), zap.Int("pdus", len(txn.PDUs)), zap.Int("edus", len(txn.EDUs)),
		zap.Bool("retry", txn.Retry))
	return nil
}

// owned returns the destinations this replica holds and the number of
// live replicas it knows of.
func (d *sender) owned() (map[string]bool, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]bool, len(d.workers))
	for dest := range d.workers {
		out[dest] = true
	}
	members := 0
	if d.leases != nil {
		members = len(d.leases.Members())
	}
	return out, members
}
