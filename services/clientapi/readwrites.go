package clientapi

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Read your own writes. The room-server commits an event before SendEvent
// returns, but the client-API's copy, which /sync, /messages, /joined_rooms
// and the other reads use, is filled asynchronously from JetStream. So
// that a client's next request sees what it just did (matrix-js-sdk and
// others expect a joined room in /joined_rooms right after /join), the
// endpoints that write an event return only once the event is in the copy,
// or after storedWaitLimit: the write itself has succeeded either way.
// While this replica's NATS connection is down the copy cannot get the
// event, so the write answers 503 at once instead of waiting (the event
// stays committed and reaches the copy once NATS is back; a client that
// retries a send with the same transaction ID gets the same event).

// storedWaitLimit bounds how long a write waits for the copy. It is only
// reached when the consumer is down or far behind.
const storedWaitLimit = 10 * time.Second

// storedRecheck is how long a write for a new event waits on the
// notifier alone before it also asks the database whether the copy has the
// event (see awaitStored).
const storedRecheck = time.Second

// sendOwnEvent sends a client's event through the room-server and returns
// its ID once the client-API's copy has it (awaitStored).
func (s *Service) sendOwnEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (string, error) {
	resp, err := s.rooms.SendEvent(ctx, req)
	if err != nil {
		return "", s.fromGRPC(ctx, "SendEvent", err, nil)
	}
	if err := s.awaitStored(ctx, resp.GetEventId(), !resp.GetDeduplicated()); err != nil {
		return "", err
	}
	return resp.GetEventId(), nil
}

// awaitStored waits until the event is in the client-API's copy (stored
// by any replica: the wake bus carries event IDs), storedWaitLimit passes,
// or ctx ends. It fails with 503 when the copy cannot get the event now:
// this replica's NATS connection is down, or goes down while it waits.
//
// fresh says the event was committed by the call that just returned, so
// it can only have been stored since that call started: then it is among
// the notifier's recently stored IDs, or its wake is still to come. Only
// when neither settles it within storedRecheck (the recent IDs overflowed,
// or another replica's wake message was lost: the bus is at most once)
// is the database asked. An older event (a repeated transaction ID) is
// looked up at once. The common case thus costs no query.
func (s *Service) awaitStored(ctx context.Context, eventID string, fresh bool) error {
	if eventID == "" {
		return nil
	}
	n := s.notifier
	n.mu.Lock()
	if fresh && n.recent.has(eventID) {
		n.mu.Unlock()
		return nil
	}
	ch := n.stored.add(eventID)
	n.mu.Unlock()
	waitCtx, cancel := context.WithTimeout(ctx, storedWaitLimit)
	defer cancel()
	waitCtx, stopWatch := bus.WhileConnected(waitCtx, s.js.Conn())
	defer stopWatch()
	if fresh {
		recheck := time.NewTimer(storedRecheck)
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
	if ok, err := s.store.Reader().HasEvent(ctx, eventID); err != nil || ok {
		n.mu.Lock()
		n.stored.remove(eventID, ch)
		n.mu.Unlock()
		return nil
	}
	if !n.block(waitCtx, n.stored, eventID, ch) && ctx.Err() == nil && waitCtx.Err() != nil {
		if errors.Is(context.Cause(waitCtx), bus.ErrDisconnected) {
			s.log.Warn("write committed but not readable: NATS is unreachable", zap.String("event_id", eventID))
			return matrixhttp.Unavailable("The event was accepted but cannot be delivered while the event bus is unreachable; retry later (a send retried with the same transaction ID is not sent twice)")
		}
		s.log.Warn("write returned before the client-API stored its event", zap.String("event_id", eventID))
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
