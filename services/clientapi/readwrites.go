package clientapi

import (
	"context"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Read your own writes. The room-server commits an event before SendEvent
// returns, but the client-API's copy, which /sync, /messages, /joined_rooms
// and the other reads use, is filled asynchronously from JetStream. So
// that a client's next request sees what it just did (matrix-js-sdk and
// others expect a joined room in /joined_rooms right after /join), the
// endpoints that write an event return only once the event is in the copy,
// or after storedWaitLimit: the write itself has succeeded either way.

// sendOwnEvent sends a client's event through the room-server and returns
// its ID once the client-API's copy has it (awaitStored).
func (s *Service) sendOwnEvent(ctx context.Context, req *roomserverv1.SendEventRequest) (string, error) {
	resp, err := s.rooms.SendEvent(ctx, req)
	if err != nil {
		return "", s.fromGRPC(ctx, "SendEvent", err, nil)
	}
	s.notifier.AwaitStored(ctx, resp.GetEventId(), !resp.GetDeduplicated())
	return resp.GetEventId(), nil
}
