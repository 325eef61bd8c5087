package history

// Backfill: a room joined over federation starts, in the client-API's
// copy, at the join (its state came with send_join). When /messages pages
// back past the copy's earliest event of such a room, the history before
// it is asked of the servers in the room (the federation sender's
// Backfill, which hands what they answer to the room-server as BACKFILL
// input; the room-server publishes it and the copy stores it before the
// room's earliest event), and the page is read again.

import (
	"context"
	"time"

	"go.uber.org/zap"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Federation is the federation sender's API (nil: federation is off, and
// history ends where the copy's does).
type Federation = fedsenderv1.FederationSenderServiceClient

const (
	// backfillWait bounds how long /messages waits for the copy to store
	// backfilled events (they come through JetStream).
	backfillWait = 5 * time.Second
	// backfillPoll is how often it looks.
	backfillPoll = 25 * time.Millisecond
)

// backfill asks other servers for the room's history before the earliest
// event the copy holds, unless that is the room's creation, and waits for
// the copy to store what the room-server took. It reports whether the
// copy's history of the room now starts earlier.
func (s *Service) backfill(ctx context.Context, roomID string, limit int) bool {
	if s.fed == nil {
		return false
	}
	reader := s.store.Reader()
	earliest, found, err := reader.EarliestEvent(ctx, roomID)
	if err != nil || !found || earliest.Type == "m.room.create" {
		return false
	}
	resp, err := s.fed.Backfill(ctx, &fedsenderv1.BackfillRequest{RoomId: roomID, EventIds: []string{earliest.EventID}, Limit: int32(min(max(limit, 10), 100))})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Info("backfill failed; history ends here for now", zap.String("room_id", roomID), zap.Error(err))
		}
		return false
	}
	// Of the events the room-server holds, those in the room's graph
	// (not outliers, rejected or soft-failed) are published to the copy;
	// the others (such as the state that came with send_join, which the
	// room-server keeps as outliers) never reach it.
	var wait []string
	if ids := resp.GetEventIds(); len(ids) > 0 {
		evs, err := s.rooms.QueryEvents(ctx, &roomserverv1.QueryEventsRequest{EventIds: ids})
		if err != nil {
			return false
		}
		for _, ev := range evs.GetEvents() {
			if !ev.GetOutlier() && !ev.GetRejected() && !ev.GetSoftFailed() {
				wait = append(wait, ev.GetEventId())
			}
		}
	}
	if len(wait) == 0 {
		return false
	}
	deadline := time.Now().Add(backfillWait)
	for !s.allStored(ctx, wait) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(backfillPoll)
	}
	now, found, err := reader.EarliestEvent(ctx, roomID)
	return err == nil && found && now.EventID != earliest.EventID
}

// allStored reports whether the copy has every one of the events.
func (s *Service) allStored(ctx context.Context, ids []string) bool {
	for _, id := range ids {
		if ok, err := s.store.Reader().HasEvent(ctx, id); err != nil || !ok {
			return false
		}
	}
	return true
}
