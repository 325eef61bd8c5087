package appservice

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// The pushing side. One replica consumes at a time: the holder of the
// PostgreSQL advisory lock myelin.appservice.consumer (on a connection kept
// for it) runs the stream consumers, which fill the queues. Each
// appservice with a url has one pusher among the replicas: the holder of
// the advisory lock myelin.appservice.pusher.<id>, on a connection of its
// own that also LISTENs on the queue's notifications (the consumers'
// transactions NOTIFY the appservices whose queues grew), so a pusher in
// another replica than the consumers wakes at once. A pusher has one
// transaction in flight: the one recorded in the schema (retried as it
// was, same ID and content, until the appservice answers 200), or a new one
// made of the oldest waiting items. A failure waits backoff_min, doubling
// up to backoff_max (with up to 10 % jitter); a 200 resets it. A slow or
// broken appservice holds up only its own pusher. Replicas that lose an
// election try again every leader_retry.

// consumerLockKey is the advisory lock of the consuming replica.
const consumerLockKey = "myelin.appservice.consumer"

// pusherLockKey is the advisory lock of an appservice's pusher.
func pusherLockKey(id string) string { return "myelin.appservice.pusher." + id }

type pusher struct {
	s *Service

	wakes map[string]chan struct{}
}

func newPusher(s *Service) *pusher {
	p := &pusher{s: s, wakes: map[string]chan struct{}{}}
	for _, r := range s.regs.List() {
		p.wakes[r.ID] = make(chan struct{}, 1)
	}
	return p
}

// wake tells the appservices' pushers in this replica that items were
// queued (pushers elsewhere learn it from the notification).
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

// run takes part in the elections of the consumers and of each
// appservice's pusher until ctx ends.
func (p *pusher) run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, r := range p.s.regs.List() {
		if !r.HasURL() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.elect(ctx, pusherLockKey(r.ID), r.ID, func(c context.Context) { p.work(c, r) })
		}()
	}
	p.elect(ctx, consumerLockKey, "", p.consume)
	wg.Wait()
	return nil
}

// elect holds key's advisory lock on a connection of its own and, while
// it does, runs lead; the connection LISTENs for queue notifications
// (those naming wakeID wake its pusher) and its loss ends lead.
func (p *pusher) elect(ctx context.Context, key, wakeID string, lead func(context.Context)) {
	log := p.s.log.With(zap.String("lock", key))
	for ctx.Err() == nil {
		conn, err := p.s.store.Connect(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("appservice: lock connection", zap.Error(err))
				sleep(ctx, p.s.cfg.LeaderRetry)
			}
			continue
		}
		p.holdAndLead(ctx, log, conn, key, wakeID, lead)
		_ = conn.Close(context.WithoutCancel(ctx))
		if ctx.Err() == nil {
			sleep(ctx, p.s.cfg.LeaderRetry)
		}
	}
}

func (p *pusher) holdAndLead(ctx context.Context, log *zap.Logger, conn *pgx.Conn, key, wakeID string, lead func(context.Context)) {
	for {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&got); err != nil {
			if ctx.Err() == nil {
				log.Warn("appservice: lock", zap.Error(err))
			}
			return
		}
		if got {
			break
		}
		if sleep(ctx, p.s.cfg.LeaderRetry); ctx.Err() != nil {
			return
		}
	}
	if _, err := conn.Exec(ctx, `LISTEN `+store.QueueChannel); err != nil {
		log.Warn("appservice: listen", zap.Error(err))
		return
	}
	log.Info("appservice: this replica holds the lock")
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(lctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	// Wait for notifications; the connection's health is the lock's.
	for ctx.Err() == nil {
		wctx, wcancel := context.WithTimeout(ctx, p.s.cfg.LeaderRetry)
		n, err := conn.WaitForNotification(wctx)
		wcancel()
		switch {
		case err == nil:
			if wakeID != "" && n.Payload == wakeID {
				p.wake(wakeID)
			}
		case ctx.Err() != nil:
			return
		case errors.Is(err, context.DeadlineExceeded):
			pctx, pcancel := context.WithTimeout(ctx, p.s.cfg.LeaderRetry)
			err = conn.Ping(pctx)
			pcancel()
			if err != nil && ctx.Err() == nil {
				log.Warn("appservice: the lock's connection failed", zap.Error(err))
				return
			}
		default:
			log.Warn("appservice: the lock's connection failed", zap.Error(err))
			return
		}
	}
}

// consume runs the stream consumers until ctx ends.
func (p *pusher) consume(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range p.s.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := c.Run(ctx, p.s.js, p.s.log)
				if ctx.Err() != nil {
					return
				}
				p.s.log.Warn("consumer stopped; starting it again", zap.String("consumer", c.Name), zap.Error(err))
				sleep(ctx, time.Second)
			}
		}()
	}
	wg.Wait()
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
		err = p.s.client.putTransaction(rctx, r, txn)
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
			p.s.stats.pushed(r.ID, len(txn.Events), len(txn.Ephemeral), len(txn.ToDevice))
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
