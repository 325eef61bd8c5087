package clientapi

import (
	"context"
	"time"

	"go.uber.org/zap"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Read your own writes. The room-server commits an event before SendEvent
// returns, but the client-API's copy, which /sync, /messages, /joined_rooms
// and the other reads use, is filled asynchronously from JetStream. So
// that a client's next request sees what it just did (matrix-js-sdk and
// others expect a joined room in /joined_rooms right after /join), the
// endpoints that write an event return only once the event is in the copy,
// or after storedWaitLimit: the write itself has succeeded either way.

// storedWaitLimit bounds how long a write waits for the copy. It is only
// reached when the consumer is down or far behind.
const storedWaitLimit = 10 * time.Second

// sendOwnEvent sends a client's event through the room-server and returns
// its ID once the client-API's copy has it (awaitStored).
func (s *Service) sendOwnEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (string, error) {
	resp, err := s.rooms.SendEvent(ctx, req)
	if err != nil {
		return "", s.fromGRPC(ctx, "SendEvent", err, nil)
	}
	s.awaitStored(ctx, resp.GetEventId())
	return resp.GetEventId(), nil
}

// awaitStored waits until the event is in the client-API's copy (stored
// by any replica: the wake bus carries event IDs), storedWaitLimit passes,
// or ctx ends.
func (s *Service) awaitStored(ctx context.Context, eventID string) {
	if eventID == "" {
		return
	}
	n := s.notifier
	n.mu.Lock()
	ch := n.stored.add(eventID)
	n.mu.Unlock()
	// Registered first, checked second: a store in between is not missed.
	if ok, err := s.store.Reader().HasEvent(ctx, eventID); err != nil || ok {
		n.mu.Lock()
		n.stored.remove(eventID, ch)
		n.mu.Unlock()
		return
	}
	waitCtx, cancel := context.WithTimeout(ctx, storedWaitLimit)
	defer cancel()
	if !n.block(waitCtx, n.stored, eventID, ch) && ctx.Err() == nil && waitCtx.Err() != nil {
		s.log.Warn("write returned before the client-API stored its event", zap.String("event_id", eventID))
	}
}
