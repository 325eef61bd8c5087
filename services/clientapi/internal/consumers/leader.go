package consumers

import (
	"context"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Leader runs the single-writer work of the client-API: while this replica
// holds the consumer lock (store.ConsumerLock), it runs Jobs; the other
// replicas wait to take over.
type Leader struct {
	Store *store.Store
	// Name is the lock's name: the durable room event consumer's.
	Name string
	Log  *zap.Logger
	// Jobs run together while this replica leads: storing room events,
	// delivering pushes, pruning notifications, copying receipts.
	Jobs []func(ctx context.Context) error
}

// Run does the single-writer work (lead) while this replica holds the
// consumer lock: one replica at a time, the others wait to take over. It
// returns when ctx ends.
func (s *Leader) Run(ctx context.Context) error {
	for {
		lock, err := s.Store.AcquireConsumerLock(ctx, s.Name)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.Log.Warn("room events consumer lock, retrying", zap.Error(err))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		s.Log.Info("consuming room events", zap.String("consumer", s.Name))
		leadCtx, cancel := context.WithCancel(ctx)
		go s.watchLock(leadCtx, cancel, lock)
		err = s.lead(leadCtx)
		cancel()
		lock.Release()
		if err != nil || ctx.Err() != nil {
			return err
		}
		// The lock's connection failed: stop, then compete for it again.
	}
}

// lead is the work of the replica holding the consumer lock: storing room
// events, delivering pushes (one deliverer, so no notification is pushed
// twice) and copying read receipts for unread counts (one writer, in
// order). It returns when ctx ends.
func (s *Leader) lead(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, job := range s.Jobs {
		g.Go(func() error { return job(gctx) })
	}
	return g.Wait()
}

// watchLock cancels the consumer when its lock's connection is lost, since
// another replica may then take the lock.
func (s *Leader) watchLock(ctx context.Context, cancel context.CancelFunc, lock *store.ConsumerLock) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pingCtx, done := context.WithTimeout(ctx, 5*time.Second)
		err := lock.Alive(pingCtx)
		done()
		if err != nil && ctx.Err() == nil {
			s.Log.Error("room events consumer lock lost; stopping", zap.Error(err))
			cancel()
			return
		}
	}
}
