package syncapi

import (
	"context"
	"slices"
	"time"

	"github.com/myelin-chat/myelin/pkg/lru"
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

// unreadBaseTTL is how long counts are built on before they are counted
// afresh. Counting on is exact while the receipts and the join stay (the
// query checks them), but it does not see notifications that go away:
// those pruned after push.notification_retention, and an erased user's.
// A fresh count at least this often lets those go.
const unreadBaseTTL = time.Minute

// unreadCache remembers each user's last unread counts per room, so that
// the next /sync counts only the notifications since (the room's base;
// store.UnreadCountsSince) rather than every notification since the
// user's last receipt. A user who never reads a busy room would otherwise
// make every /sync count more, and an incremental /sync woken by each new
// message would count them all again each time. Bounded by
// sync.unread_cache_rooms; nil (0) remembers nothing.
type unreadCache struct {
	entries *lru.Cache[unreadKey, unreadEntry]
	now     func() time.Time
}

type unreadKey struct{ user, room string }

type unreadEntry struct {
	base store.UnreadBase
	// fresh is when the counts this base builds on were counted afresh.
	fresh time.Time
}

func newUnreadCache(size int) *unreadCache {
	if size <= 0 {
		return nil
	}
	return &unreadCache{entries: lru.New[unreadKey, unreadEntry](size), now: time.Now}
}

// bases are the remembered counts of rooms that are still recent enough
// to build on.
func (c *unreadCache) bases(userID string, rooms []string) map[string]store.UnreadBase {
	if c == nil {
		return nil
	}
	out := map[string]store.UnreadBase{}
	now := c.now()
	for _, room := range rooms {
		if e, ok := c.entries.Get(unreadKey{userID, room}); ok && now.Sub(e.fresh) < unreadBaseTTL {
			out[room] = e.base
		}
	}
	return out
}

// put remembers the new counts (next, from UnreadCountsSince) and returns
// them as a list. A room counted on from its base keeps the base's time
// of its fresh count.
func (c *unreadCache) put(userID string, next map[string]store.UnreadBase) []store.UnreadCount {
	var out []store.UnreadCount
	now := time.Time{}
	if c != nil {
		now = c.now()
	}
	for room, nb := range next {
		out = append(out, nb.Counts...)
		if c == nil {
			continue
		}
		k := unreadKey{userID, room}
		fresh := now
		if old, ok := c.entries.Get(k); ok && nb.Incremental {
			fresh = old.fresh
		}
		c.entries.Put(k, unreadEntry{base: nb, fresh: fresh})
	}
	return out
}
