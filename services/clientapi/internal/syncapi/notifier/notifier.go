// Package notifier wakes what waits for the client-API's copy of events
// and for the other streams /sync follows: long-polling /sync and /events
// requests (per user, per room for peeking), and writes waiting to read
// their own event (AwaitStored). It keeps each room's joined members in
// memory, loaded at start and updated from the stored batches, so it
// wakes only the users a change concerns. It is fed by the room event
// consumer, the other replicas' wake messages (wakebus) and the ephemeral
// and key change consumers.
package notifier

import (
	"context"
	"math"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/nats-io/nats.go"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Notifier wakes long-polling /sync requests. The consumer calls Committed
// after each batch is stored; only users the batch concerns are woken: the
// joined members of each room that got an event, and the target of every
// membership change. It keeps each room's joined members in memory, loaded
// at start and updated from the batches.
type Notifier struct {
	mu     sync.Mutex
	joined map[string]map[string]struct{} // room ID -> joined user IDs
	// userRooms is joined inverted: user ID -> the rooms they are joined
	// to (setJoined keeps both).
	userRooms map[string]map[string]struct{}
	// userPos: user ID -> latest membership change of theirs; with the
	// positions of their rooms (roomPos), the latest position that
	// concerned them (latestPos).
	userPos map[string]int64
	// userEPos is the same for the presence service's ephemeral stream
	// (typing, receipts, presence), fed by internal/consumers/ephemeral.go.
	userEPos map[string]int64
	// wakes counts changes outside both streams (account data), per user
	// (wake.go).
	wakes   map[string]uint64
	waiters waitList // user ID -> waiting requests
	// stored: event ID -> requests waiting for it to be stored
	// (stored.go).
	stored waitList
	// recent: the event IDs stored lately, so that a write whose event
	// was stored before it started waiting need not ask the database
	// (stored.go).
	recent recentIDs
	// roomPos and roomWaiters serve peeking long polls (GET /events with
	// room_id, room.go), which wait on a room, not a user.
	roomPos     map[string]int64
	roomWaiters waitList
	done        chan struct{}
	closed      bool
	// hasEvent asks the store whether the copy has an event (AwaitStored).
	hasEvent func(ctx context.Context, eventID string) (bool, error)
	// conn is this replica's NATS connection: while it is down the copy
	// cannot get new events (AwaitStored).
	conn *nats.Conn
	log  *zap.Logger
}

// New returns a notifier that knows the rooms' joined members (room ID
// to users), asks hasEvent whether the copy has an event, watches conn
// (the replica's NATS connection) while writes wait, and logs to log.
func New(joined map[string][]string, hasEvent func(ctx context.Context, eventID string) (bool, error), conn *nats.Conn, log *zap.Logger) *Notifier {
	n := &Notifier{
		hasEvent:    hasEvent,
		conn:        conn,
		log:         log,
		joined:      map[string]map[string]struct{}{},
		userRooms:   map[string]map[string]struct{}{},
		userPos:     map[string]int64{},
		userEPos:    map[string]int64{},
		wakes:       map[string]uint64{},
		waiters:     waitList{},
		stored:      waitList{},
		roomPos:     map[string]int64{},
		roomWaiters: waitList{},
		done:        make(chan struct{}),
	}
	for room, users := range joined {
		for _, u := range users {
			n.SetJoined(room, u, true)
		}
	}
	return n
}

// setJoined records that user is (or is no longer) joined to room, in
// joined and userRooms. Caller holds mu (or owns n).
func (n *Notifier) SetJoined(room, user string, join bool) {
	if join {
		if n.joined[room] == nil {
			n.joined[room] = map[string]struct{}{}
		}
		n.joined[room][user] = struct{}{}
		if n.userRooms[user] == nil {
			n.userRooms[user] = map[string]struct{}{}
		}
		n.userRooms[user][room] = struct{}{}
		return
	}
	if members := n.joined[room]; members != nil {
		delete(members, user)
		if len(members) == 0 {
			delete(n.joined, room)
		}
	}
	if rooms := n.userRooms[user]; rooms != nil {
		delete(rooms, room)
		if len(rooms) == 0 {
			delete(n.userRooms, user)
		}
	}
}

// committed records a stored batch and wakes the users it concerns.
func (n *Notifier) Committed(applied []store.Applied) {
	n.mu.Lock()
	defer n.mu.Unlock()
	woken := map[string]struct{}{}
	for _, a := range applied {
		n.stored.release(a.Event.EventID)
		n.recent.add(a.Event.EventID)
		room := a.Event.RoomID
		// The room's position stands for its joined members' (latestPos),
		// and only those of them with a waiter are woken, found from
		// whichever is smaller: the room's members or the waiters. So an
		// event costs the same in a room of 2 and of 10,000 (#20).
		n.roomCommittedLocked(room, a.Pos)
		members := n.joined[room]
		if len(n.waiters) < len(members) {
			for u := range n.waiters {
				if _, ok := members[u]; ok {
					woken[u] = struct{}{}
				}
			}
		} else {
			for u := range members {
				if _, ok := n.waiters[u]; ok {
					woken[u] = struct{}{}
				}
			}
		}
		for _, c := range a.Changes {
			n.userPos[c.UserID] = a.Pos
			woken[c.UserID] = struct{}{}
			n.SetJoined(c.RoomID, c.UserID, c.Membership == store.MembershipJoin)
		}
	}
	n.wakeLocked(woken)
}

// wakeLocked releases the waiters of the given users.
func (n *Notifier) wakeLocked(users map[string]struct{}) {
	for u := range users {
		n.waiters.release(u)
	}
}

// wait blocks until a room event that concerns the user is committed at a
// position after `after`, ctx ends, or the notifier closes.
func (n *Notifier) Wait(ctx context.Context, userID string, after int64) {
	n.WaitSync(ctx, userID, SyncCursor{Pos: after, EPos: math.MaxInt64, Wakes: n.WakeCount(userID)})
}

// SyncCursor is what a /sync response covered: the room stream up to pos,
// the ephemeral stream up to epos, and the user's wake counter as read
// before the response was built.
type SyncCursor struct {
	Pos, EPos int64
	Wakes     uint64
}

// waitSync blocks until something the user has not seen in c happens: a
// room event after c.pos, ephemeral data after c.epos, or a wake (the
// counter moved past c.wakes); or until ctx ends or the notifier closes.
// The checks and the registration happen under one lock, so a change that
// lands between building a response and waiting is not missed.
func (n *Notifier) WaitSync(ctx context.Context, userID string, c SyncCursor) {
	n.mu.Lock()
	if n.closed || n.latestPos(userID) > c.Pos || n.userEPos[userID] > c.EPos || n.wakes[userID] != c.Wakes {
		n.mu.Unlock()
		return
	}
	ch := n.waiters.add(userID)
	n.mu.Unlock()
	n.block(ctx, n.waiters, userID, ch)
}

// latestPos is the latest position that concerned the user: their own
// membership changes and the events of the rooms they are joined to.
// Caller holds mu.
func (n *Notifier) latestPos(userID string) int64 {
	p := n.userPos[userID]
	for room := range n.userRooms[userID] {
		p = max(p, n.roomPos[room])
	}
	return p
}

// waitList holds the requests waiting on each key (a user, a room, an
// event ID). The Notifier's mutex guards it.
type waitList map[string][]chan struct{}

// add registers a waiter for key.
func (w waitList) add(key string) chan struct{} {
	ch := make(chan struct{})
	w[key] = append(w[key], ch)
	return ch
}

// release wakes and forgets every waiter for key.
func (w waitList) release(key string) {
	for _, ch := range w[key] {
		close(ch)
	}
	delete(w, key)
}

// remove forgets one waiter that was not released.
func (w waitList) remove(key string, ch chan struct{}) {
	list := slices.DeleteFunc(w[key], func(c chan struct{}) bool { return c == ch })
	if len(list) == 0 {
		delete(w, key)
	} else {
		w[key] = list
	}
}

// block waits until ch (registered in list under key) is released, ctx
// ends or the notifier closes. It reports whether ch was released; if not,
// it removes ch.
func (n *Notifier) block(ctx context.Context, list waitList, key string, ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-ctx.Done():
	case <-n.done:
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	list.remove(key, ch)
	return false
}

// close releases every waiter; later waits return at once.
func (n *Notifier) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.done)
	}
}

// members returns a room's joined users (for tests and diagnostics).
func (n *Notifier) Members(roomID string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.joined[roomID]))
	for u := range n.joined[roomID] {
		out = append(out, u)
	}
	return out
}

// isClosed reports whether close was called.
func (n *Notifier) IsClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

// sharers returns the users who share a joined room with userID (userID
// included when joined anywhere), from the in-memory membership copy.
func (n *Notifier) Sharers(userID string) map[string]struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]struct{}{}
	for room := range n.userRooms[userID] {
		for u := range n.joined[room] {
			out[u] = struct{}{}
		}
	}
	return out
}

// sharesRoom reports whether a and b are both joined to some room.
func (n *Notifier) SharesRoom(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ra, rb := n.userRooms[a], n.userRooms[b]
	if len(rb) < len(ra) {
		ra, rb = rb, ra
	}
	for room := range ra {
		if _, ok := rb[room]; ok {
			return true
		}
	}
	return false
}

// Waiting reports whether user has a registered, not yet woken waiter.
func (n *Notifier) Waiting(user string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ch := range n.waiters[user] {
		select {
		case <-ch:
		default:
			return true
		}
	}
	return false
}
