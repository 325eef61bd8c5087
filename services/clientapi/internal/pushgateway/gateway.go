// Package pushgateway delivers notifications to the HTTP pushers' push
// gateways (/_matrix/push/v1/notify): a producer, run by the replica that
// holds the consumer lock (so no notification is pushed twice) and woken
// by the room event consumer for the users it notified. Each pusher
// remembers the notification position it has handled (pushers.last_pos),
// so delivery resumes after a restart; a failed request is retried with
// exponential backoff (push.initial_backoff doubling up to
// push.max_backoff) up to push.max_attempts, then that notification is
// skipped. Pushkeys the gateway rejects lose their pusher.
package pushgateway

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
	"maunium.net/go/mautrix/pushrules/pushgateway"

	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Dispatcher runs the HTTP pushers: one goroutine per user with work,
// which delivers that user's notifications pusher by pusher, in order.
// Woken users are first narrowed to those with a pusher, in one query for
// all the users woken meanwhile (most users have none, and then cost
// nothing more), off the waker's goroutine.
type Dispatcher struct {
	store   *store.Store
	cfg     push.Config
	log     *zap.Logger
	mu      sync.Mutex
	ctx     context.Context // set by run; nil before
	running map[string]bool
	dirty   map[string]bool
	pending map[string]bool // woken, not yet looked up
	kick    chan struct{}   // pending is not empty
	wg      sync.WaitGroup
}

// New returns the dispatcher of the pushers kept in st.
func New(st *store.Store, cfg push.Config, log *zap.Logger) *Dispatcher {
	return &Dispatcher{store: st, cfg: cfg, log: log, running: map[string]bool{}, dirty: map[string]bool{}, pending: map[string]bool{},
		kick: make(chan struct{}, 1)}
}

// Run resumes every pusher (notifications stored while the process was
// down) and serves wake-ups until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	users, err := d.store.PusherUsers(ctx)
	if err != nil && ctx.Err() == nil {
		d.log.Error("list pushers", zap.Error(err))
	}
	d.start(ctx, users)
	for {
		select {
		case <-ctx.Done():
			d.wg.Wait()
			return nil
		case <-d.kick:
		}
		d.mu.Lock()
		woken := make([]string, 0, len(d.pending))
		for u := range d.pending {
			woken = append(woken, u)
		}
		clear(d.pending)
		d.mu.Unlock()
		if len(woken) == 0 {
			continue
		}
		with, err := d.store.UsersWithPushers(ctx, woken)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("look up pushers, retrying", zap.Error(err))
			}
			// Keep the wake-ups: their notifications are not pushed
			// until these users are looked up.
			d.Wake(woken...)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		d.start(ctx, with)
	}
}

// Wake tells the dispatcher these users have new notifications.
func (d *Dispatcher) Wake(users ...string) {
	if len(users) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx == nil || d.ctx.Err() != nil {
		return
	}
	for _, u := range users {
		d.pending[u] = true
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// start delivers for these users, who have pushers.
func (d *Dispatcher) start(ctx context.Context, users []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range users {
		if d.running[u] {
			d.dirty[u] = true
			continue
		}
		d.running[u] = true
		d.wg.Add(1)
		go d.runUser(ctx, u)
	}
}

func (d *Dispatcher) runUser(ctx context.Context, userID string) {
	defer d.wg.Done()
	for {
		ps, err := d.store.Pushers(ctx, userID)
		if err != nil && ctx.Err() == nil {
			d.log.Error("load pushers", zap.String("user_id", userID), zap.Error(err))
		}
		for _, p := range ps {
			if p.Kind == "http" {
				d.deliver(ctx, p)
			}
		}
		d.mu.Lock()
		if !d.dirty[userID] || ctx.Err() != nil {
			delete(d.running, userID)
			delete(d.dirty, userID)
			d.mu.Unlock()
			return
		}
		delete(d.dirty, userID)
		d.mu.Unlock()
	}
}

// deliver sends the pusher's notifications after its position, oldest
// first, until none is left or ctx ends.
func (d *Dispatcher) deliver(ctx context.Context, p store.Pusher) {
	var data map[string]any
	_ = json.Unmarshal(p.Data, &data)
	gateway, _ := data["url"].(string)
	format, _ := data["format"].(string)
	devData := map[string]any{}
	for k, v := range data {
		if k != "url" {
			devData[k] = v
		}
	}
	for ctx.Err() == nil {
		rows, err := d.store.Reader().Notifications(ctx, store.NotificationsQuery{
			UserID: p.UserID, After: p.LastPos, Ascending: true, Limit: 50,
		})
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("read notifications to push", zap.Error(err))
			}
			return
		}
		if len(rows) == 0 {
			return
		}
		for _, n := range rows {
			if !n.Read { // read meanwhile (another device): nothing to alert
				pn, err := d.gatewayNotification(ctx, p, n, format, devData)
				if err != nil {
					d.log.Error("build push notification", zap.String("event_id", n.EventID), zap.Error(err))
				} else if rejected := d.send(ctx, gateway, p, pn); rejected {
					if err := d.store.DeletePusher(ctx, p.UserID, p.AppID, p.PushKey); err != nil {
						d.log.Error("delete rejected pusher", zap.Error(err))
					}
					return
				}
			}
			if ctx.Err() != nil {
				return
			}
			if err := d.store.AdvancePusher(ctx, p.UserID, p.AppID, p.PushKey, n.Pos); err != nil {
				d.log.Error("advance pusher", zap.Error(err))
				return
			}
			p.LastPos = n.Pos
		}
	}
}

// send posts one notification, retrying with backoff; it reports whether
// the gateway rejected the pushkey.
func (d *Dispatcher) send(ctx context.Context, gateway string, p store.Pusher, pn *pushgateway.PushNotification) bool {
	cfg := d.cfg
	backoff := cfg.InitialBackoff
	for attempt := 1; ; attempt++ {
		reqCtx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		err := pn.Push(reqCtx, gateway)
		cancel()
		var rejected *pushgateway.RespPush
		switch {
		case err == nil:
			return false
		case errors.As(err, &rejected):
			for _, k := range rejected.Rejected {
				if k == p.PushKey {
					d.log.Info("push gateway rejected pushkey, removing pusher", zap.String("app_id", p.AppID))
					return true
				}
			}
			return false
		case attempt >= cfg.MaxAttempts || ctx.Err() != nil:
			if ctx.Err() == nil {
				d.log.Warn("push failed, skipping notification", zap.String("event_id", pn.EventID.String()),
					zap.Int("attempts", attempt), zap.Error(err))
			}
			return false
		}
		d.log.Info("push failed, retrying", zap.Duration("backoff", backoff), zap.Error(err))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
}

// gatewayNotification builds the /notify body for one notification: only
// IDs and counts for format event_id_only, the event's details otherwise.
func (d *Dispatcher) gatewayNotification(ctx context.Context, p store.Pusher, n store.NotificationRow, format string, devData map[string]any) (*pushgateway.PushNotification, error) {
	rd := d.store.Reader()
	unread, err := rd.UnreadTotal(ctx, p.UserID)
	if err != nil {
		return nil, err
	}
	var acts []json.RawMessage
	_ = json.Unmarshal(n.Actions, &acts)
	_, highlight, tweaks := push.Tweaks(acts)
	devTweaks := map[pushrules.PushActionTweak]any{}
	for k, v := range tweaks {
		devTweaks[pushrules.PushActionTweak(k)] = v
	}
	var ev struct {
		Type     string          `json:"type"`
		Sender   string          `json:"sender"`
		StateKey *string         `json:"state_key"`
		Content  json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(n.Event.JSON, &ev); err != nil {
		return nil, err
	}
	prio := pushgateway.PushPriorityLow
	if _, sound := tweaks["sound"]; highlight || sound || ev.Type == "m.room.encrypted" {
		prio = pushgateway.PushPriorityHigh
	}
	pn := &pushgateway.PushNotification{
		EventID:  id.EventID(n.EventID),
		RoomID:   id.RoomID(n.RoomID),
		Priority: prio,
		Counts:   &pushgateway.NotificationCounts{Unread: unread},
		Devices: []pushgateway.Device{{
			BaseDevice: pushgateway.BaseDevice{AppID: pushgateway.PusherAppID(p.AppID), PushKey: p.PushKey, PushKeyTS: p.PushKeyTS, Data: devData},
			Tweaks:     devTweaks,
		}},
	}
	if format == string(pushgateway.PushFormatEventIDOnly) {
		return pn, nil
	}
	pn.Type = ev.Type
	pn.Sender = id.UserID(ev.Sender)
	pn.Content = ev.Content
	pn.UserIsTarget = ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == p.UserID
	state, err := rd.CurrentState(ctx, n.RoomID, []string{"m.room.name", "m.room.canonical_alias"})
	if err != nil {
		return nil, err
	}
	if member, err := rd.CurrentStateEvent(ctx, n.RoomID, "m.room.member", ev.Sender); err == nil {
		state = append(state, member)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	for _, st := range state {
		var c struct {
			Name        string `json:"name"`
			Alias       string `json:"alias"`
			DisplayName string `json:"displayname"`
		}
		var e struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(st.JSON, &e) != nil || json.Unmarshal(e.Content, &c) != nil {
			continue
		}
		switch {
		case st.Type == "m.room.name":
			pn.RoomName = c.Name
		case st.Type == "m.room.canonical_alias":
			pn.RoomAlias = id.RoomAlias(c.Alias)
		case st.Type == "m.room.member" && st.StateKey == ev.Sender:
			pn.SenderDisplayName = c.DisplayName
		}
	}
	return pn, nil
}
