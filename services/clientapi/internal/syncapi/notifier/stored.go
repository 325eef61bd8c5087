package notifier

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Read your own writes. The room-server commits an event before SendEvent
// returns, but the client-API's copy, which /sync, /messages, /joined_rooms
// and the other reads use, is filled asynchronously from JetStream. So
// that a client's next request sees what it just did (matrix-js-sdk and
// others expect a joined room in /joined_rooms right after /join), the
// endpoints that write an event return only once the event is in the copy
// (AwaitStored), or after StoredWaitLimit: the write itself has succeeded
// either way.

// StoredWaitLimit bounds how long a write waits for the copy. It is only
// reached when the consumer is down or far behind.
const StoredWaitLimit = 10 * time.Second

// StoredRecheck is how long a write for a new event waits on the
// notifier alone before it also asks the database whether the copy has the
// event (see AwaitStored).
const StoredRecheck = time.Second

// AwaitStored waits until the event is in the client-API's copy (stored
// by any replica: the wake bus carries event IDs), StoredWaitLimit passes,
// or ctx ends.
//
// fresh says the event was committed by the call that just returned, so
// it can only have been stored since that call started: then it is among
// the notifier's recently stored IDs, or its wake is still to come. Only
// when neither settles it within StoredRecheck (the recent IDs overflowed,
// or another replica's wake message was lost: the bus is at most once)
// is the database asked. An older event (a repeated transaction ID) is
// looked up at once. The common case thus costs no query.
func (n *Notifier) AwaitStored(ctx context.Context, eventID string, fresh bool) {
	if eventID == "" {
		return
	}
	n.mu.Lock()
	if fresh && n.recent.has(eventID) {
		n.mu.Unlock()
		return
	}
	ch := n.stored.add(eventID)
	n.mu.Unlock()
	waitCtx, cancel := context.WithTimeout(ctx, StoredWaitLimit)
	defer cancel()
	if fresh {
		recheck := time.NewTimer(StoredRecheck)
		select {
		case <-ch:
			recheck.Stop()
			return
		case <-recheck.C:
		case <-waitCtx.Done():
		case <-n.done:
		}
	}
	// Registered first, checked second: a store in between is not missed.
	if ok, err := n.hasEvent(ctx, eventID); err != nil || ok {
		n.mu.Lock()
		n.stored.remove(eventID, ch)
		n.mu.Unlock()
		return
	}
	if !n.block(waitCtx, n.stored, eventID, ch) && ctx.Err() == nil && waitCtx.Err() != nil {
		n.log.Warn("write returned before the client-API stored its event", zap.String("event_id", eventID))
	}
}

// recentStoredCap is how many stored event IDs the notifier remembers:
// many seconds of events at any rate this server reaches, so a new event
// stored before its write started waiting is still there.
const recentStoredCap = 16384

// recentIDs is a set of the last recentStoredCap event IDs added (the
// notifier's mutex guards it).
type recentIDs struct {
	count map[string]int // an ID redelivered is in the ring twice
	ring  []string
	next  int
}

func (r *recentIDs) add(id string) {
	if r.ring == nil {
		r.count = make(map[string]int, recentStoredCap)
		r.ring = make([]string, recentStoredCap)
	}
	if old := r.ring[r.next]; old != "" {
		if r.count[old]--; r.count[old] == 0 {
			delete(r.count, old)
		}
	}
	r.ring[r.next] = id
	r.count[id]++
	r.next = (r.next + 1) % len(r.ring)
}

func (r *recentIDs) has(id string) bool { return r.count[id] > 0 }

// ForgetRecent forgets the recently stored event IDs, as if their wake
// messages had been lost (tests of AwaitStored's database recheck).
func (n *Notifier) ForgetRecent() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.recent = recentIDs{}
}
