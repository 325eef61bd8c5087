package appservice

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
)

// The pushing side. One replica consumes and pushes at a time: the holder
// of a PostgreSQL advisory lock (on a connection kept for it), so each
// appservice has one pusher among the replicas. It runs the stream
// consumers and a worker per appservice with a url. A worker has one
// transaction in flight: the one recorded in the schema (retried as it
// was, same ID and content, until the appservice answers 200), or a new
// one made of the oldest waiting items. A failure waits backoff_min,
// doubling up to backoff_max (with up to 10 % jitter); a 200 resets it.
// A slow or broken appservice holds up only its own worker.

// leaderLockKey is the advisory lock of the pushing replica.
const leaderLockKey = "myelin.appservice.pusher"

type pusher struct {
	s *Service

	mu    sync.Mutex
	wakes map[string]chan struct{}
}

func newPusher(s *Service) *pusher {
	p := &pusher{s: s, wakes: map[string]chan struct{}{}}
	for _, r := range s.regs.List() {
		p.wakes[r.ID] = make(chan struct{}, 1)
	}
	return p
}

// wake tells the appservices' workers that items were queued.
func (p *pusher) wake(ids ...string) {
	for _, id := range ids {
		if ch, ok := p.wakes[id]; ok {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// run takes the pushing lock and pushes while holding it, until ctx ends.
func (p *pusher) run(ctx context.Context) error {
	log := p.s.log
	for {
		conn, err := p.s.store.Pool().Acquire(ctx)
		if err == nil {
			var got bool
			err = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, leaderLockKey).Scan(&got)
			if err == nil && got {
				log.Info("appservice: this replica pushes")
				p.lead(ctx, func(c context.Context) error { return conn.Ping(c) })
				// Closing the connection releases the lock.
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
				conn.Release()
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("appservice: lost the pushing lock's connection; trying again")
				continue
			}
			conn.Release()
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("appservice: pushing lock", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(p.s.cfg.LeaderRetry):
		}
	}
}

// lead runs the consumers and the workers until ctx ends or ping fails.
func (p *pusher) lead(ctx context.Context, ping func(context.Context) error) {
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, c := range p.s.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				err := c.Run(lctx, p.s.js, p.s.log)
				if lctx.Err() != nil {
					return
				}
				p.s.log.Warn("consumer stopped; starting it again", zap.String("consumer", c.Name), zap.Error(err))
				select {
				case <-lctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	for _, r := range p.s.regs.List() {
		if !r.HasURL() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.work(lctx, r)
		}()
	}
	// The lock lives as long as its connection: check it.
	for {
		select {
		case <-lctx.Done():
			return
		case <-time.After(p.s.cfg.LeaderRetry):
		}
		pctx, pcancel := context.WithTimeout(lctx, p.s.cfg.LeaderRetry)
		err := ping(pctx)
		pcancel()
		if err != nil && lctx.Err() == nil {
			p.s.log.Warn("appservice: the pushing lock's connection failed", zap.Error(err))
			return
		}
	}
}

// work pushes one appservice's queue until ctx ends.
func (p *pusher) work(ctx context.Context, r *asreg.Registration) {
	log := p.s.log.With(zap.String("appservice", r.ID))
	wake := p.wakes[r.ID]
	for ctx.Err() == nil {
		txn, err := p.s.store.NextTxn(ctx, r.ID, p.s.cfg.MaxEventsPerTxn)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("reading the queue", zap.Error(err))
				sleep(ctx, time.Second)
			}
			continue
		}
		if txn == nil {
			select {
			case <-ctx.Done():
			case <-wake:
			}
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, p.s.cfg.RequestTimeout)
		err = p.s.client.putTransaction(rctx, r, txn.ID, txn.Events, txn.Ephemeral)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if err := p.s.store.Acked(ctx, r.ID, txn.ID); err != nil && ctx.Err() == nil {
				// Sent again later with the same ID: the appservice
				// answers it as a repeat.
				log.Warn("recording an acknowledged transaction", zap.Error(err))
			}
			p.s.stats.pushed(r.ID, len(txn.Events), len(txn.Ephemeral))
			continue
		}
		p.s.stats.failed(r.ID)
		n, delay, serr := p.s.store.Failed(ctx, r.ID, err.Error(), func(n int) time.Duration {
			return backoff(p.s.cfg.BackoffMin, p.s.cfg.BackoffMax, n)
		})
		if serr != nil {
			delay = p.s.cfg.BackoffMin
		}
		log.Warn("transaction failed; retrying it", zap.String("txn_id", txn.ID), zap.Int("failures", n),
			zap.Duration("retry_in", delay), zap.Error(err))
		sleep(ctx, delay)
	}
}

// backoff is the wait after n consecutive failures: min doubled n-1
// times, capped at max, plus up to 10 % jitter.
func backoff(minWait, maxWait time.Duration, n int) time.Duration {
	d := minWait
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
