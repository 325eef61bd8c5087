package presence

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// Presence states.
const (
	Online      = "online"
	Unavailable = "unavailable"
	Offline     = "offline"
)

func validState(s string) bool { return s == Online || s == Unavailable || s == Offline }

// effectiveState applies the idle rules to a stored row at now: an online
// user inactive for idle_timeout is unavailable, and an online or
// unavailable user inactive for offline_timeout is offline. The idle sweep
// stores the same result (so that it gets a position and is published);
// readers apply it too so they never show a state the clock has passed.
func (s *Service) effectiveState(p store.Presence, now time.Time) string {
	if p.LastActiveTS == nil || p.State == Offline {
		return p.State
	}
	idle := now.Sub(time.UnixMilli(*p.LastActiveTS))
	switch {
	case idle >= s.cfg.OfflineTimeout:
		return Offline
	case p.State == Online && idle >= s.cfg.IdleTimeout:
		return Unavailable
	}
	return p.State
}

// render turns a row into the client's view at now.
func (s *Service) render(p store.Presence, now time.Time) *presencev1.Presence {
	state := s.effectiveState(p, now)
	out := &presencev1.Presence{UserId: p.UserID, Presence: state, StatusMsg: p.StatusMsg}
	if p.LastActiveTS != nil {
		ago := max(now.UnixMilli()-*p.LastActiveTS, 0)
		out.LastActiveAgo = &ago
	}
	// Currently active: online and not idle (the spec leaves the window to
	// the server; idle_timeout is the one this server has).
	out.CurrentlyActive = state == Online
	return out
}

// setPresence stores a presence change and publishes it. Setting online or
// unavailable counts as activity.
func (s *Service) setPresence(ctx context.Context, origin, userID, state string, statusMsg *string, keepMsg bool) (int64, error) {
	if !validState(state) {
		return 0, fmt.Errorf("%w: presence must be online, unavailable or offline", ErrBadRequest)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.setPresenceLocked(ctx, origin, userID, state, statusMsg, keepMsg)
}

// setPresenceLocked is setPresence with writeMu held.
func (s *Service) setPresenceLocked(ctx context.Context, origin, userID, state string, statusMsg *string, keepMsg bool) (int64, error) {
	now := s.clock.Now()
	cur, err := s.store.GetPresence(ctx, userID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	next := store.Presence{UserID: userID, State: state, StatusMsg: statusMsg, LastActiveTS: cur.LastActiveTS, Origin: origin}
	if keepMsg {
		next.StatusMsg = cur.StatusMsg
	}
	if state != Offline {
		ts := now.UnixMilli()
		next.LastActiveTS = &ts
	}
	return s.writePresenceLocked(ctx, next, now)
}

// writePresenceLocked stores a row under a new position and publishes it.
// Called with writeMu held.
func (s *Service) writePresenceLocked(ctx context.Context, p store.Presence, now time.Time) (int64, error) {
	pos, err := s.store.PutPresence(ctx, p)
	if err != nil {
		return 0, err
	}
	p.Pos = pos
	s.pos.Store(pos)
	s.activity.forget(p.UserID)
	kick(s.idleKick)
	s.publish(ctx, bus.PresenceSubject(p.UserID), &presencev1.PresenceUpdate{Presence: s.render(p, now), Position: pos})
	return pos, nil
}

// markActive records a sync or other activity. set_presence "offline"
// records nothing (the client does not want to appear online); online
// (the default) and unavailable set that state when it differs, and
// otherwise only refresh the activity time, which wakes nobody.
func (s *Service) markActive(ctx context.Context, userID, setPresence string) error {
	switch setPresence {
	case "":
		setPresence = Online
	case Offline:
		return nil
	case Online, Unavailable:
	default:
		return fmt.Errorf("%w: set_presence must be online, unavailable or offline", ErrBadRequest)
	}
	now := s.clock.Now()
	// Fastest path: the same state was recorded recently; last_active_ago
	// may then be up to touchInterval stale, which saves a database write
	// per /sync.
	if s.activity.recent(userID, setPresence, now, s.touchInterval()) {
		return nil
	}
	// Under the write lock, so the idle sweep cannot interleave.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	// Fast path: already in that state and not past a timer.
	cur, err := s.store.GetPresence(ctx, userID)
	if err == nil && cur.State == setPresence && s.effectiveState(cur, now) == setPresence {
		touched, err := s.store.TouchActive(ctx, userID, setPresence, now.UnixMilli())
		if err == nil && touched {
			s.activity.record(userID, setPresence, now)
		}
		return err
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	_, err = s.setPresenceLocked(ctx, s.serverName, userID, setPresence, nil, true)
	return err
}

// runIdleSweep stores the transitions the idle rules make as the clock
// passes each user's deadline, so they get positions and are published.
func (s *Service) runIdleSweep(ctx context.Context) error {
	for {
		next, err := s.store.NextIdleDeadline(ctx, s.cfg.IdleTimeout.Milliseconds(), s.cfg.OfflineTimeout.Milliseconds())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Error("idle sweep", zap.Error(err))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		var at <-chan struct{}
		if next != nil {
			at = s.clock.At(time.UnixMilli(*next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.idleKick:
			continue
		case <-at:
		}
		if err := s.sweepIdle(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("idle sweep", zap.Error(err))
		}
	}
}

func (s *Service) sweepIdle(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	now := s.clock.Now()
	rows, err := s.store.IdleCandidates(ctx, now.Add(-s.cfg.IdleTimeout).UnixMilli(), now.Add(-s.cfg.OfflineTimeout).UnixMilli())
	if err != nil {
		return err
	}
	for _, p := range rows {
		state := s.effectiveState(p, now)
		if state == p.State {
			continue
		}
		p.State = state
		p.Origin = s.serverName
		if _, err := s.writePresenceLocked(ctx, p, now); err != nil {
			return err
		}
	}
	// Drain the kicks this sweep caused: the loop recomputes anyway.
	select {
	case <-s.idleKick:
	default:
	}
	return nil
}

// touchInterval is how stale a recorded activity time may get before a
// sync writes it again: a small fraction of the idle timeout.
func (s *Service) touchInterval() time.Duration {
	return min(s.cfg.IdleTimeout/20, 15*time.Second)
}

// activityCache remembers, per user, the state and time of the last
// activity written, so that frequent syncs do not each write.
type activityCache struct {
	mu    sync.Mutex
	users map[string]activity
}

type activity struct {
	state string
	at    time.Time
}

func (c *activityCache) recent(userID, state string, now time.Time, within time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.users[userID]
	return ok && a.state == state && now.Sub(a.at) < within && !now.Before(a.at)
}

func (c *activityCache) record(userID, state string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users == nil {
		c.users = map[string]activity{}
	}
	c.users[userID] = activity{state: state, at: at}
}

// forget drops a user's entry after a state change (including the idle
// sweep's), so the next activity goes to the database.
func (c *activityCache) forget(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.users, userID)
}

// setRemotePresence stores the presence another server reports for one of
// its users (an m.presence EDU). The user's last activity is dated from
// last_active_ago; offline records no activity.
func (s *Service) setRemotePresence(ctx context.Context, origin, userID, state string, statusMsg *string, lastActiveAgo int64) (int64, error) {
	if !validState(state) {
		return 0, fmt.Errorf("%w: presence must be online, unavailable or offline", ErrBadRequest)
	}
	uid, err := spec.NewUserID(userID, true)
	if err != nil || string(uid.Domain()) != origin || origin == s.serverName {
		return 0, fmt.Errorf("%w: %q is not a user of the remote server %q", ErrBadRequest, userID, origin)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	now := s.clock.Now()
	next := store.Presence{UserID: userID, State: state, StatusMsg: statusMsg, Origin: origin}
	if state != Offline {
		ts := now.UnixMilli() - max(lastActiveAgo, 0)
		next.LastActiveTS = &ts
	} else if cur, err := s.store.GetPresence(ctx, userID); err == nil {
		next.LastActiveTS = cur.LastActiveTS
	} else if !errors.Is(err, store.ErrNotFound) {
		return 0, err
	}
	return s.writePresenceLocked(ctx, next, now)
}
