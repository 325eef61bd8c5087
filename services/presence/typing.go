package presence

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
)

// Typing notifications live in memory only (they expire within minutes;
// a restart forgets them, as the spec allows). Their positions come from
// the same sequence as receipts and presence, so one sync token component
// covers all three.

// typingState is every room's typing users with their expiry.
type typingState struct {
	mu    sync.Mutex
	rooms map[string]map[string]time.Time // room -> user -> expiry
	pos   map[string]int64                // room -> position of the last change
	// shown is each room's list as last published: a change is a
	// difference from it, whatever caused it (stop, start, expiry).
	shown map[string][]string
	kick  chan struct{} // wakes the expiry loop
}

func newTypingState() *typingState {
	return &typingState{rooms: map[string]map[string]time.Time{}, pos: map[string]int64{}, shown: map[string][]string{}, kick: make(chan struct{}, 1)}
}

// users lists a room's typing users at now, sorted.
func (t *typingState) usersLocked(roomID string, now time.Time) []string {
	out := []string{}
	for u, exp := range t.rooms[roomID] {
		if now.Before(exp) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// drop removes a user's typing notification in a room, if any.
func (t *typingState) drop(roomID, userID string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.rooms[roomID][userID]; !ok {
		return false
	}
	delete(t.rooms[roomID], userID)
	if len(t.rooms[roomID]) == 0 {
		delete(t.rooms, roomID)
	}
	return true
}

// setTyping starts or stops a user's typing.
func (s *Service) setTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) (int64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	t := s.typing
	now := s.clock.Now()
	t.mu.Lock()
	if typing {
		if t.rooms[roomID] == nil {
			t.rooms[roomID] = map[string]time.Time{}
		}
		t.rooms[roomID][userID] = now.Add(timeout)
	} else if t.rooms[roomID] != nil {
		delete(t.rooms[roomID], userID)
		if len(t.rooms[roomID]) == 0 {
			delete(t.rooms, roomID)
		}
	}
	t.mu.Unlock()
	kick(t.kick)
	return s.typingChangedLocked(ctx, roomID)
}

// typingChangedLocked compares a room's typing list with the one last
// published; when it differs (a start, a stop or an expiry), the change
// gets a position and the new list is published. A refresh of an ongoing
// notification only moves its expiry, so it spends no position and wakes
// nobody. Called with writeMu held.
func (s *Service) typingChangedLocked(ctx context.Context, roomID string) (int64, error) {
	t := s.typing
	t.mu.Lock()
	users := t.usersLocked(roomID, s.clock.Now())
	same := slices.Equal(users, t.shown[roomID])
	t.mu.Unlock()
	if same {
		return s.pos.Load(), nil
	}
	pos, err := s.store.NextPosition(ctx)
	if err != nil {
		return 0, err
	}
	t.mu.Lock()
	t.pos[roomID] = pos
	if len(users) == 0 {
		delete(t.shown, roomID)
	} else {
		t.shown[roomID] = users
	}
	t.mu.Unlock()
	s.pos.Store(pos)
	s.publish(ctx, bus.TypingSubject(roomID), &presencev1.TypingUpdate{RoomId: roomID, UserIds: users, Position: pos})
	return pos, nil
}

// runTypingExpiry removes expired notifications when the clock reaches
// them, so that readers see the stop as a change.
func (s *Service) runTypingExpiry(ctx context.Context) error {
	t := s.typing
	for {
		t.mu.Lock()
		var next time.Time
		for _, users := range t.rooms {
			for _, exp := range users {
				if next.IsZero() || exp.Before(next) {
					next = exp
				}
			}
		}
		t.mu.Unlock()
		var at <-chan struct{}
		if !next.IsZero() {
			at = s.clock.At(next)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.kick:
			continue
		case <-at:
		}
		s.expireTyping(ctx)
	}
}

func (s *Service) expireTyping(ctx context.Context) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	t := s.typing
	now := s.clock.Now()
	var changed []string
	t.mu.Lock()
	for room, users := range t.rooms {
		for u, exp := range users {
			if !now.Before(exp) {
				delete(users, u)
			}
		}
		if len(users) == 0 {
			delete(t.rooms, room)
		}
	}
	for room := range t.shown {
		changed = append(changed, room)
	}
	t.mu.Unlock()
	for _, room := range changed {
		if _, err := s.typingChangedLocked(ctx, room); err != nil && ctx.Err() == nil {
			s.log.Error("typing expiry", zap.String("room_id", room), zap.Error(err))
		}
	}
}

// typingSince returns, for each room whose typing list changed after
// since (or, when initial, that has someone typing), the current list.
func (s *Service) typingSince(rooms []string, since int64, initial bool) map[string][]string {
	t := s.typing
	now := s.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string][]string{}
	for _, room := range rooms {
		users := t.usersLocked(room, now)
		if (initial && len(users) > 0) || (!initial && t.pos[room] > since) {
			out[room] = users
		}
	}
	return out
}

// publish sends a change notification. Failure to publish is logged, not
// returned: the change is stored, and readers see it on their next sync.
func (s *Service) publish(ctx context.Context, subject string, msg proto.Message) {
	data, err := proto.Marshal(msg)
	if err == nil {
		_, err = s.js.Publish(ctx, subject, data)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("publish ephemeral change", zap.String("subject", subject), zap.Error(err))
	}
}
