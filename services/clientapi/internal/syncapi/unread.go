package syncapi

import (
	"context"
	"slices"

	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// threadCounts is a room's or thread's unread counts in /sync.
type threadCounts struct {
	NotificationCount int `json:"notification_count"`
	HighlightCount    int `json:"highlight_count"`
}

// unreadRead is what a caller already read of unread counts: those of
// rooms, counted up to the same position.
type unreadRead struct {
	rooms  map[string]bool
	counts []store.UnreadCount
}

// addUnreadCounts sets unread_notifications (and, when the filter asks
// for unread_thread_notifications, the per-thread counts, leaving the main
// timeline's in unread_notifications) of every joined room in resp,
// counting events up to pos. Rooms pre covers are not read again.
func (s *Service) addUnreadCounts(ctx context.Context, userID string, filter clientevent.Filter, pos int64, resp *syncResponse, pre *unreadRead) error {
	if len(resp.Rooms.Join) == 0 {
		return nil
	}
	if pre == nil {
		pre = &unreadRead{}
	}
	rooms := make([]string, 0, len(resp.Rooms.Join))
	var missing []string
	for id := range resp.Rooms.Join {
		rooms = append(rooms, id)
		if !pre.rooms[id] {
			missing = append(missing, id)
		}
	}
	counts := pre.counts
	if len(missing) > 0 {
		more, err := s.store.Reader().UnreadCounts(ctx, userID, missing, pos)
		if err != nil {
			return err
		}
		counts = append(slices.Clip(counts), more...)
	}
	perThread := filter.UnreadThreadNotifications()
	total := map[string]*threadCounts{}
	for _, id := range rooms {
		total[id] = &threadCounts{}
	}
	for _, c := range counts {
		jr := resp.Rooms.Join[c.RoomID]
		if jr == nil {
			continue // read with the snapshot, left out of the response since
		}
		if perThread && c.ThreadID != push.ThreadMain {
			if jr.UnreadThreadNotifications == nil {
				jr.UnreadThreadNotifications = map[string]threadCounts{}
			}
			jr.UnreadThreadNotifications[c.ThreadID] = threadCounts{NotificationCount: c.Notify, HighlightCount: c.Highlight}
			continue
		}
		total[c.RoomID].NotificationCount += c.Notify
		total[c.RoomID].HighlightCount += c.Highlight
	}
	for id, t := range total {
		resp.Rooms.Join[id].UnreadNotifications = map[string]int{
			"notification_count": t.NotificationCount, "highlight_count": t.HighlightCount,
		}
	}
	return nil
}
