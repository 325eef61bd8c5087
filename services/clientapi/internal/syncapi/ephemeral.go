package syncapi

import (
	"context"
	"encoding/json"
	"time"

	"go.uber.org/zap"

	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// addEphemeral adds the presence service's data to a /sync response:
// m.typing and m.receipt in each joined room's ephemeral events, the
// m.fully_read marker in the room's account data, and m.presence events.
// pos is the room-event position the response covers. It returns the
// ephemeral position for next_batch. The presence service being
// unreachable does not fail the sync: the response goes out without
// ephemeral data and the old ephemeral position, so nothing is lost.
//
// memberships are the user's as of pos when the caller has them (nil: they
// are read here).
func (s *Service) addEphemeral(ctx context.Context, dev *httpapi.Device, opts syncOptions, resp *syncResponse, pos int64, memberships []store.Membership) (int64, error) {
	var since int64
	if opts.since != nil {
		since = opts.since.EPos
	}
	if s.presence == nil {
		return since, nil
	}
	rd := s.store.Reader()
	if memberships == nil {
		var err error
		if memberships, err = rd.Memberships(ctx, dev.UserID); err != nil {
			return 0, err
		}
	}
	// The rooms this response treats as joined: joined at or before pos
	// (a later join is not in the response yet).
	var rooms, full []string
	for _, m := range memberships {
		if m.Membership == store.MembershipJoin && m.JoinPos <= pos && opts.filter.AllowsRoom(m.RoomID) {
			rooms = append(rooms, m.RoomID)
			if opts.since != nil && m.JoinPos > opts.since.Pos {
				full = append(full, m.RoomID) // newly joined: send its current data
			}
		}
	}
	callCtx, cancel := context.WithTimeout(ctx, presenceSyncTimeout)
	defer cancel()
	out, err := s.presence.SyncEphemeral(callCtx, &presencev1.SyncEphemeralRequest{
		UserId: dev.UserID, RoomIds: rooms, Since: since, Initial: opts.since == nil, FullRoomIds: full,
	})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("presence SyncEphemeral failed; sync without ephemeral data", zap.Error(err))
		}
		return since, nil
	}

	var quiet []string // rooms with ephemeral changes only
	for _, re := range out.GetRooms() {
		if resp.Rooms.Join[re.GetRoomId()] == nil {
			quiet = append(quiet, re.GetRoomId())
		}
	}
	summaries, err := rd.RoomSummaries(ctx, quiet, dev.UserID)
	if err != nil {
		return 0, err
	}
	for _, re := range out.GetRooms() {
		jr := resp.Rooms.Join[re.GetRoomId()]
		if jr == nil {
			jr = &joinedRoom{
				Summary:             toSummary(summaries[re.GetRoomId()]),
				State:               clientevent.EmptyEvents(),
				Timeline:            timelineBatch{Events: []json.RawMessage{}, PrevBatch: clientevent.StreamToken{Pos: pos}.String()},
				Ephemeral:           clientevent.EmptyEvents(),
				AccountData:         clientevent.EmptyEvents(),
				UnreadNotifications: map[string]int{},
			}
			resp.Rooms.Join[re.GetRoomId()] = jr
		}
		if err := renderRoomEphemeral(re, jr); err != nil {
			return 0, err
		}
	}
	for _, p := range out.GetPresence() {
		raw, err := json.Marshal(presenceEvent(p))
		if err != nil {
			return 0, err
		}
		resp.Presence.Events = append(resp.Presence.Events, raw)
	}
	return out.GetPosition(), nil
}

// renderRoomEphemeral renders one room's typing, receipts and marker.
func renderRoomEphemeral(re *presencev1.RoomEphemeral, jr *joinedRoom) error {
	add := func(list *clientevent.EventList, typ string, content any) error {
		raw, err := json.Marshal(map[string]any{"type": typ, "content": content})
		if err == nil {
			list.Events = append(list.Events, raw)
		}
		return err
	}
	if re.GetTypingChanged() {
		users := re.GetTypingUserIds()
		if users == nil {
			users = []string{}
		}
		if err := add(&jr.Ephemeral, "m.typing", map[string]any{"user_ids": users}); err != nil {
			return err
		}
	}
	if len(re.GetReceipts()) > 0 {
		// {event_id: {receipt_type: {user_id: {ts, thread_id}}}}
		content := map[string]map[string]map[string]map[string]any{}
		for _, r := range re.GetReceipts() {
			byType := content[r.GetEventId()]
			if byType == nil {
				byType = map[string]map[string]map[string]any{}
				content[r.GetEventId()] = byType
			}
			byUser := byType[r.GetReceiptType()]
			if byUser == nil {
				byUser = map[string]map[string]any{}
				byType[r.GetReceiptType()] = byUser
			}
			info := map[string]any{"ts": r.GetTs()}
			if r.GetThreadId() != "" {
				info["thread_id"] = r.GetThreadId()
			}
			byUser[r.GetUserId()] = info
		}
		if err := add(&jr.Ephemeral, "m.receipt", content); err != nil {
			return err
		}
	}
	if id := re.GetFullyReadEventId(); id != "" {
		if err := add(&jr.AccountData, "m.fully_read", map[string]string{"event_id": id}); err != nil {
			return err
		}
	}
	return nil
}

// presenceEvent is an m.presence event for /sync.
func presenceEvent(p *presencev1.Presence) map[string]any {
	content := map[string]any{"presence": p.GetPresence()}
	if p.StatusMsg != nil {
		content["status_msg"] = p.GetStatusMsg()
	}
	if p.LastActiveAgo != nil {
		content["last_active_ago"] = p.GetLastActiveAgo()
		content["currently_active"] = p.GetCurrentlyActive()
	}
	return map[string]any{"type": "m.presence", "sender": p.GetUserId(), "content": content}
}

// presenceSyncTimeout bounds the presence calls a /sync makes. Ephemeral
// data is not worth holding a sync for: when the presence service is down
// or slow, /sync answers without it.
const presenceSyncTimeout = 2 * time.Second

// markActive tells the presence service about a /sync (set_presence).
// Presence is not worth failing a sync for: errors are logged.
func (s *Service) markActive(ctx context.Context, userID, setPresence string) {
	if s.presence == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, presenceSyncTimeout)
	defer cancel()
	if _, err := s.presence.MarkActive(ctx, &presencev1.MarkActiveRequest{UserId: userID, SetPresence: setPresence}); err != nil && ctx.Err() == nil {
		s.log.Warn("presence MarkActive failed", zap.Error(err))
	}
}
