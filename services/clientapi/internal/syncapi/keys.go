package syncapi

// The end-to-end extensions of /sync: the device's one-time key counts and
// unused fallback key types, and device_lists.
//
// Device lists: every change to a user's identity or cross-signing keys,
// and every deletion of a device with keys, is a change in the
// key-server's log, whose position is the sync token's "_k" component. An
// incremental /sync lists as changed the users with changes since the
// token who share a room with the requester, plus the users who newly
// share one (they or the requester joined since); as left, the users who
// left a room shared with the requester (or were in a room the requester
// left) and now share none. Sharing is the client-API's business (it owns
// memberships): read from the sync's own snapshot where it can be, else
// from the notifier's in-memory membership copy.

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// syncDeviceKeys fills the end-to-end extensions of a sync response from
// the key-server's answer: the device's one-time key counts and unused
// fallback key types, and, for an incremental sync, device_lists. It
// returns the device list position for next_batch. Without an answer (the
// key-server is unreachable) the response goes out without them and with
// the since token's position, so nothing is lost.
func (s *Service) syncDeviceKeys(ctx context.Context, dev *httpapi.Device, since *clientevent.StreamToken, resp *syncResponse, d syncData, call *keys.SyncKeysCall) int64 {
	var after int64
	if since != nil {
		after = since.KPos
	}
	if call == nil {
		return after
	}
	st, err := call.Wait()
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("key-server SyncKeys failed; sync without key data", zap.Error(err))
		}
		return after
	}
	resp.DeviceOneTimeKeysCount = keys.WithDefaultCount(st.GetOneTimeKeyCounts())
	unused := st.GetUnusedFallbackKeyTypes()
	if unused == nil {
		unused = []string{}
	}
	resp.DeviceUnusedFallbackKeyTypes = &unused
	if since == nil {
		return st.GetPosition()
	}
	resp.DeviceLists = deviceListsFor(s.notifier, dev.UserID, st.GetChangedUserIds(), d)
	return st.GetPosition()
}

// deviceListsFor computes device_lists for user me from the users whose
// keys changed in the range, the membership changes this sync read, and
// the notifier's membership copy.
func deviceListsFor(n *notifier.Notifier, me string, users []string, d syncData) *deviceLists {
	// joined: users who newly share a room with me (they or I joined);
	// leaving: users who left a room of mine, or were in one I left.
	joined, leaving := map[string]bool{}, map[string]bool{}
	// sharing: users known from this snapshot to share a room with me now.
	sharing := map[string]bool{}
	for _, sr := range d.rooms {
		room := sr.rng.RoomID
		switch sr.kind {
		case kindFull: // joined (by me) since the token: its members share it
			for _, u := range n.Members(room) {
				if u != me {
					sharing[u] = true
				}
			}
		case kindLeft:
			for _, u := range n.Members(room) {
				leaving[u] = true
			}
		}
		// Each user's last membership change in the range, in stream
		// order. A user whose last change in a room I am joined to is a
		// join shares that room now, whatever the in-memory copy (which
		// may not have caught up with this snapshot) says.
		events := slices.Concat(d.gaps[room], d.timelines[room].Events)
		slices.SortStableFunc(events, func(a, b store.StoredEvent) int { return cmp.Compare(a.Pos, b.Pos) })
		last := map[string]string{}
		for _, e := range events {
			if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey != me {
				last[*e.StateKey] = storedMembership(e)
			}
		}
		for u, m := range last {
			switch {
			case m == store.MembershipJoin && sr.kind != kindLeft:
				sharing[u] = true
			case m == store.MembershipJoin:
				joined[u] = true
			case m == store.MembershipLeave || m == "ban":
				leaving[u] = true
			}
		}
	}
	// Changed: my own keys, and those of users sharing a room with me now
	// whose keys changed or who newly share one. Left: users a membership
	// change concerned who share no room with me now (a user who joined and
	// left again in the range included). Key changes of anyone else are
	// not shown.
	lists := &deviceLists{Changed: []string{}, Left: []string{}}
	changed := map[string]bool{}
	for u := range sharing {
		changed[u] = true
	}
	for _, u := range users {
		if u == me || sharing[u] || n.SharesRoom(me, u) {
			changed[u] = true
		}
	}
	for u := range joined {
		if u == me {
			continue
		}
		if n.SharesRoom(me, u) {
			changed[u] = true
		} else {
			leaving[u] = true
		}
	}
	for u := range changed {
		lists.Changed = append(lists.Changed, u)
	}
	for u := range leaving {
		if u != me && !changed[u] && !n.SharesRoom(me, u) {
			lists.Left = append(lists.Left, u)
		}
	}
	slices.Sort(lists.Changed)
	slices.Sort(lists.Left)
	return lists
}

// storedMembership is content.membership of a stored m.room.member event.
func storedMembership(e store.StoredEvent) string {
	var ev struct {
		Content struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	_ = json.Unmarshal(e.JSON, &ev)
	return ev.Content.Membership
}
