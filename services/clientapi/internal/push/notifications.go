package push

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// maxNotificationsLimit caps GET /notifications' limit.
const maxNotificationsLimit = 100

// notifications is GET /notifications: the user's notifications, newest
// first; from is the position of the last one of the previous page.
func (s *Service) notifications(r *http.Request, dev *httpapi.Device) (any, error) {
	q := r.URL.Query()
	var before int64
	if from := q.Get("from"); from != "" {
		var err error
		if before, err = strconv.ParseInt(from, 10, 64); err != nil || before <= 0 {
			return nil, matrixhttp.InvalidParam("Invalid from token")
		}
	}
	limit, err := httpapi.QueryInt(r, "limit", 20)
	if err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, matrixhttp.InvalidParam("limit must be positive")
	}
	limit = min(limit, maxNotificationsLimit)
	only := q.Get("only")
	ctx := r.Context()
	rd := s.store.Reader()
	rows, err := rd.Notifications(ctx, store.NotificationsQuery{
		UserID: dev.UserID, Before: before, OnlyHighlight: only == "highlight", Limit: int(limit),
	})
	if err != nil {
		return nil, err
	}
	events := make([]store.StoredEvent, len(rows))
	for i, n := range rows {
		events[i] = n.Event
	}
	rendered, err := s.history.RenderAll(ctx, rd, dev, events, true)
	if err != nil {
		return nil, err
	}
	type notification struct {
		Actions json.RawMessage `json:"actions"`
		Event   json.RawMessage `json:"event"`
		Read    bool            `json:"read"`
		RoomID  string          `json:"room_id"`
		TS      int64           `json:"ts"`
	}
	out := struct {
		NextToken     string         `json:"next_token,omitempty"`
		Notifications []notification `json:"notifications"`
	}{Notifications: make([]notification, 0, len(rows))}
	for i, n := range rows {
		out.Notifications = append(out.Notifications, notification{
			Actions: n.Actions, Event: rendered[i], Read: n.Read, RoomID: n.RoomID, TS: n.TS,
		})
	}
	if len(rows) == int(limit) {
		out.NextToken = strconv.FormatInt(rows[len(rows)-1].Pos, 10)
	}
	return out, nil
}

// pruneBatch bounds the rows one prune statement deletes, so a large
// backlog goes in short transactions.
const pruneBatch = 10000

// pruneNotifications deletes, every push.prune_interval while this
// replica holds the consumer lock, the notifications whose events are
// older than push.notification_retention. Failures are logged and tried
// again at the next interval: pruning never stops the consumer.
func (s *Service) PruneNotifications(ctx context.Context) {
	t := time.NewTicker(s.cfg.PruneInterval)
	defer t.Stop()
	for {
		before := s.now().Add(-s.cfg.NotificationRetention).UnixMilli()
		var total int64
		for ctx.Err() == nil {
			n, err := s.store.PruneNotifications(ctx, before, pruneBatch)
			total += n
			if err != nil {
				if ctx.Err() == nil {
					s.log.Error("pruning notifications", zap.Error(err))
				}
				break
			}
			if n < pruneBatch {
				break
			}
		}
		if total > 0 {
			s.log.Info("pruned notifications", zap.Int64("rows", total), zap.Duration("retention", s.cfg.NotificationRetention))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
