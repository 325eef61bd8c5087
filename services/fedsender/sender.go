package fedsender

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// The sending side. One replica sends at a time: the holder of a
// PostgreSQL advisory lock (on a connection kept for it) runs a worker per
// destination; the others consume and queue, serve the gRPC API, and try
// to take the lock every leader_retry. A worker sends one transaction at
// a time: the one in flight (retried as it was, same ID and content, until
// the destination answers, as the spec asks) or a new one of the oldest
// waiting rows (at most 50 PDUs and 100 EDUs). A failure waits
// backoff_min, doubling up to backoff_max; a 200 answer resets it. A
// destination failing for catch_up_after keeps only each room's newest
// PDU. A slow or broken destination holds up only its own worker.

// leaderLockKey is the advisory lock of the sending replica.
const leaderLockKey = "myelin.fedsender.leader"

// boundsCheckInterval is how often a waiting worker checks its queue's
// bounds while rows keep arriving.
const boundsCheckInterval = 5 * time.Second

type sender struct {
	s *Service

	mu      sync.Mutex
	leading bool
	ctx     context.Context // the leading term's context
	wg      *sync.WaitGroup // the leading term's workers
	workers map[string]*worker
}

type worker struct {
	dest string
	// lastBoundsCheck is when the queue's bounds were last checked.
	lastBoundsCheck time.Time
	// wake: rows were queued (a buffered channel of one).
	wake chan struct{}
	// answered: the destination answered another request; retry now.
	answered chan struct{}
}

func newSender(s *Service) *sender {
	return &sender{s: s, workers: map[string]*worker{}}
}

// run takes the sending lock and sends while holding it, until ctx ends.
func (d *sender) run(ctx context.Context) error {
	log := d.s.log
	for {
		conn, err := d.s.store.Pool().Acquire(ctx)
		if err == nil {
			var got bool
			err = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, leaderLockKey).Scan(&got)
			if err == nil && got {
				log.Info("federation sender: this replica sends")
				d.lead(ctx, func(c context.Context) error { return conn.Ping(c) })
				// Closing the connection releases the lock.
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
				conn.Release()
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("federation sender: lost the sending lock's connection; trying again")
				continue
			}
			conn.Release()
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("federation sender: sending lock", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d.s.cfg.LeaderRetry):
		}
	}
}

// lead runs workers for every destination with waiting rows and for each
// destination woken later, until ctx ends or ping fails.
func (d *sender) lead(ctx context.Context, ping func(context.Context) error) {
	lctx, cancel := context.WithCancel(ctx)
	var wg, cwg sync.WaitGroup
	d.mu.Lock()
	d.leading, d.ctx, d.wg = true, lctx, &wg
	d.mu.Unlock()
	defer func() {
		cancel()
		d.mu.Lock()
		d.leading = false
		d.workers = map[string]*worker{}
		d.mu.Unlock()
		wg.Wait()
		cwg.Wait()
	}()
	// The consumers run while this replica sends (consumer.go): one
	// reader of each stream at a time.
	for _, c := range d.s.consumers {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for lctx.Err() == nil {
				err := d.s.runConsumer(lctx, c)
				if lctx.Err() != nil {
					return
				}
				d.s.log.Warn("consumer stopped; starting it again", zap.String("consumer", c.name), zap.Error(err))
				select {
				case <-lctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	for {
		dests, err := d.s.store.PendingDestinations(lctx)
		if err == nil {
			d.wake(dests...)
			break
		}
		d.s.log.Warn("federation sender: pending destinations", zap.Error(err))
		select {
		case <-lctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	t := time.NewTicker(d.s.cfg.LeaderRetry)
	defer t.Stop()
	for {
		select {
		case <-lctx.Done():
			return
		case <-t.C:
			pctx, pcancel := context.WithTimeout(lctx, d.s.cfg.LeaderRetry)
			err := ping(pctx)
			pcancel()
			if err != nil && lctx.Err() == nil {
				d.s.log.Warn("federation sender: the sending lock's connection failed", zap.Error(err))
				return
			}
		}
	}
}

// wake tells the destinations' workers that rows were queued, starting
// workers as needed. A replica that is not sending ignores it: the
// sending one finds the rows (it looks at every destination with waiting
// rows when it takes over, and is woken by its own consumers).
func (d *sender) wake(dests ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.leading {
		return
	}
	for _, dest := range dests {
		if dest == "" || dest == string(d.s.serverName) {
			continue
		}
		w := d.workers[dest]
		if w == nil {
			w = &worker{dest: dest, wake: make(chan struct{}, 1), answered: make(chan struct{}, 1)}
			d.workers[dest] = w
			wg := d.wg
			wg.Add(1)
			go func(ctx context.Context) {
				defer wg.Done()
				d.runWorker(ctx, w)
			}(d.ctx)
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
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
		txn, err := s.store.NextTransaction(ctx, w.dest, maxPDUsPerTxn, maxEDUsPerTxn, s.now())
		if err != nil {
			log.Warn("next transaction", zap.Error(err))
			if !pause(time.Second) {
				return
			}
			continue
		}
		if txn == nil {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			case <-w.answered:
			}
			continue
		}
		if err := d.send(ctx, w.dest, txn, log); err != nil {
			if ctx.Err() != nil {
				return
			}
			st, ferr := s.store.RecordFailure(ctx, w.dest, s.now(), d.backoff, s.cfg.CatchUpAfter)
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
		if err := s.store.CompleteTransaction(ctx, w.dest, txn.ID, s.now()); err != nil {
			// Sent again later with the same ID: the destination drops
			// the repeat.
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
func (d *sender) send(ctx context.Context, dest string, txn *store.Transaction, log *zap.Logger) error {
	s := d.s
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
