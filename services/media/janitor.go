package media

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// runJanitor deletes, every janitor_interval and once at start, the
// content of uploads a dead process never finished (pending objects
// older than abandoned_upload_after), the media IDs that were created
// and expired unused, and URL previews a cache TTL past their expiry
// with their images.
func (s *Service) runJanitor(ctx context.Context) error {
	t := time.NewTicker(s.cfg.JanitorInterval)
	defer t.Stop()
	for {
		s.sweep(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sweep is one janitor round.
func (s *Service) sweep(ctx context.Context) {
	now := s.now()
	if n, err := s.store.DeleteExpiredCreates(ctx, now.UnixMilli()); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("janitor: deleting expired media IDs failed", zap.Error(err))
		}
	} else if n > 0 {
		s.log.Info("janitor: deleted media IDs that expired unused", zap.Int64("count", n))
	}
	// Expired previews hand their images' content to the sweep below.
	s.preview.sweep(ctx)
	before := now.Add(-s.cfg.AbandonedUploadAfter).UnixMilli()
	for ctx.Err() == nil {
		keys, err := s.store.AbandonedObjects(ctx, before, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("janitor: listing abandoned uploads failed", zap.Error(err))
			}
			return
		}
		for _, k := range keys {
			s.discard(ctx, k)
		}
		if len(keys) > 0 {
			s.log.Info("janitor: deleted content of abandoned uploads", zap.Int("count", len(keys)))
		}
		if len(keys) < 100 {
			return
		}
	}
}
