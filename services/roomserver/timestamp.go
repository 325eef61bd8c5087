package roomserver

import (
	"context"
	"errors"
	"fmt"

	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// queryEventByTimestamp finds the room's event closest to a timestamp in
// a direction (federation's /timestamp_to_event).
func (s fedQuery) queryEventByTimestamp(ctx context.Context, req *roomserverv1.QueryEventByTimestampRequest) (*roomserverv1.QueryEventByTimestampResponse, error) {
	var forward bool
	switch req.GetDirection() {
	case "f":
		forward = true
	case "b":
	default:
		return nil, fmt.Errorf("%w: direction must be f or b", ErrBadRequest)
	}
	room, err := s.room(ctx, req.GetRoomId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotFound, req.GetRoomId())
	}
	if err != nil {
		return nil, err
	}
	id, ts, err := s.store.EventNearTimestamp(ctx, room.NID, req.GetTs(), forward)
	if errors.Is(err, store.ErrNotFound) {
		return &roomserverv1.QueryEventByTimestampResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	return &roomserverv1.QueryEventByTimestampResponse{Found: true, EventId: id, OriginServerTs: ts}, nil
}
