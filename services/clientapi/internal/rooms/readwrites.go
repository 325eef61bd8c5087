package rooms

import (
	"context"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Read your own writes: the endpoints that write an event return only once
// the event is in the client-API's copy (notifier.AwaitStored).

// sendOwnEvent sends a client's event through the room-server and returns
// its ID once the client-API's copy has it (notifier.AwaitStored).
func (s *Rooms) sendOwnEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (string, error) {
	resp, err := s.rooms.SendEvent(ctx, req)
	if err != nil {
		return "", s.fromGRPC(ctx, "SendEvent", err, nil)
	}
	if err := s.notifier.AwaitStored(ctx, resp.GetEventId(), !resp.GetDeduplicated()); err != nil {
		return "", err
	}
	return resp.GetEventId(), nil
}
