package notifier

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
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
// or ctx ends. It fails with 503 when the copy cannot get the event now:
// this replica's NATS connection is down, or goes down while it waits.
//
// fresh says the event was committed by the call that just returned, so
// it can only have been stored since that call started: then it is among
// the notifier's recently stored IDs, or its wake is still to come. Only
// when neither settles it within StoredRecheck (the recent IDs overflowed,
// or another replica's wake message was lost: the bus is at most once)
// is the database asked. An older event (a repeated transaction ID) is
// looked up at once. The common case thus costs no query.
func (n *Notifier) AwaitStored(ctx context.Context, eventID string, fresh bool) error {
	if eventID == "" {
		return nil
	}
	n.mu.Lock()
	if fresh && n.recent.has(eventID) {
		n.mu.Unlock()
		return nil
	}
	ch := n.stored.add(eventID)
	n.mu.Unlock()
	waitCtx, cancel := context.WithTimeout(ctx, StoredWaitLimit)
	defer cancel()
	if n.conn != nil {
		var stopWatch func()
		waitCtx, stopWatch = bus.WhileConnected(waitCtx, n.conn)
		defer stopWatch()
	}
	if fresh {
		recheck := time.NewTimer(StoredRecheck)
		select {
		case <-ch:
			recheck.Stop()
			return nil
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
		return nil
	}
	if !n.block(waitCtx, n.stored, eventID, ch) && ctx.Err() == nil && waitCtx.Err() != nil {
		if errors.Is(context.Cause(waitCtx), bus.ErrDisconnected) {
			n.log.Warn("write committed but not readable: NATS is unreachable", zap.String("event_id", eventID))
			return matrixhttp.Unavailable("The event was accepted but cannot be delivered while the event bus is unreachable; retry later (a send retried with the same transaction ID is not sent twice)")
		}
		n.log.Warn("write returned before the client-API stored its event", zap.String("event_id", eventID))
	}
	return nil
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
