package syncapi

import (
	"context"
	"encoding/json"

	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// syncAccountData adds the account data changed after since to a sync
// response — global, and for rooms the user is joined to (or left in this
// response) that the filter's room list allows — and returns the user's
// account data position for next_batch. Filters' account_data sections
// are not applied. The position also covers changes of the user's read
// receipts (push_receipts shares the sequence): a joined room whose
// unread counts changed that way appears, so the new counts reach the
// client. An initial sync always carries m.push_rules (the defaults when
// the user never changed a rule, so nothing is stored). ch is what
// changed after since when the caller read it (nil: it is read here).
func (s *Service) syncAccountData(ctx context.Context, userID string, since int64, initial bool, filter clientevent.Filter, resp *syncResponse, ch *store.AccountDataChanges) (int64, error) {
	rd := s.store.Reader()
	if ch == nil {
		ch = &store.AccountDataChanges{}
		b := &store.Batch{}
		b.AccountDataChanges(userID, since, ch)
		if err := rd.Send(ctx, b); err != nil {
			return 0, err
		}
	}
	rooms := &joinedRoomsCache{userID: userID, rd: rd}
	havePushRules := false
	for _, e := range ch.Entries {
		ev, err := json.Marshal(map[string]any{"type": e.Type, "content": json.RawMessage(e.Content)})
		if err != nil {
			return 0, err
		}
		if e.RoomID == "" {
			havePushRules = havePushRules || e.Type == push.RulesType
			resp.AccountData.Events = append(resp.AccountData.Events, ev)
			continue
		}
		if lr := resp.Rooms.Leave[e.RoomID]; lr != nil && resp.Rooms.Join[e.RoomID] == nil {
			lr.AccountData.Events = append(lr.AccountData.Events, ev)
			continue
		}
		jr, err := s.syncRoomEntry(ctx, rooms, e.RoomID, filter, resp)
		if err != nil {
			return 0, err
		}
		if jr != nil {
			jr.AccountData.Events = append(jr.AccountData.Events, ev)
		}
	}
	if initial && !havePushRules {
		content, err := s.push.RulesContent(ctx, userID)
		if err != nil {
			return 0, err
		}
		ev, err := json.Marshal(map[string]any{"type": push.RulesType, "content": json.RawMessage(content)})
		if err != nil {
			return 0, err
		}
		resp.AccountData.Events = append(resp.AccountData.Events, ev)
	}
	for _, roomID := range ch.ReceiptRooms {
		if _, err := s.syncRoomEntry(ctx, rooms, roomID, filter, resp); err != nil {
			return 0, err
		}
	}
	return max(ch.Latest, ch.ReceiptLatest), nil
}

// joinedRoomsCache reads the user's joined rooms once, when first needed.
type joinedRoomsCache struct {
	userID string
	rd     store.Reader
	joined map[string]bool
}

func (c *joinedRoomsCache) has(ctx context.Context, roomID string) (bool, error) {
	if c.joined == nil {
		rooms, err := c.rd.JoinedRooms(ctx, c.userID)
		if err != nil {
			return false, err
		}
		c.joined = map[string]bool{}
		for _, r := range rooms {
			c.joined[r] = true
		}
	}
	return c.joined[roomID], nil
}

// syncRoomEntry returns the response's entry for a joined room, adding one
// with no new events when the room has none yet; nil for rooms the user is
// not joined to or the filter leaves out (their data is in the next
// initial sync).
func (s *Service) syncRoomEntry(ctx context.Context, rooms *joinedRoomsCache, roomID string, filter clientevent.Filter, resp *syncResponse) (*joinedRoom, error) {
	if jr := resp.Rooms.Join[roomID]; jr != nil {
		return jr, nil
	}
	if resp.Rooms.Leave[roomID] != nil || !filter.AllowsRoom(roomID) {
		return nil, nil
	}
	joined, err := rooms.has(ctx, roomID)
	if err != nil || !joined {
		return nil, err
	}
	summaries, err := rooms.rd.RoomSummaries(ctx, []string{roomID}, rooms.userID)
	if err != nil {
		return nil, err
	}
	jr := &joinedRoom{
		Summary:             toSummary(summaries[roomID]),
		State:               clientevent.EmptyEvents(),
		Timeline:            timelineBatch{Events: []json.RawMessage{}},
		Ephemeral:           clientevent.EmptyEvents(),
		AccountData:         clientevent.EmptyEvents(),
		UnreadNotifications: map[string]int{},
	}
	resp.Rooms.Join[roomID] = jr
	return jr, nil
}
