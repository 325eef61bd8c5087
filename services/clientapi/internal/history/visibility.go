package history

// History visibility (client-server API, "Room History Visibility"). The
// rules need, for each event, the room's history_visibility in the state
// at the event and the requesting user's membership at the event. Both
// come from the client-API's own copy, so no endpoint asks the room-server
// per event:
//
//   - sync_events.visibility_before/after: the visibility in the room's
//     state before and after the event, recorded by the consumer from its
//     current_state copy as each event arrives (in stream order);
//   - membership_log: every membership change of every user with its
//     stream position, so the membership at any position, and whether the
//     user joined later, is one small per-user-per-room read.
//
// The recorded state is the room's current state as the client-API saw it
// when the event arrived. For local rooms (a linear graph) that is exactly
// the state before the event; with federation forks it is the resolved
// state at that moment, an approximation of "the state at that event".

import (
	"context"

	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// memberTimeline is one user's membership changes in one room, oldest first.
type memberTimeline []store.MembershipEntry

// at is the membership after every change up to and including pos ("" if
// none): the membership at an event stored at pos.
func (tl memberTimeline) at(pos int64) string {
	m := ""
	for _, e := range tl {
		if e.Pos > pos {
			break
		}
		m = e.Membership
	}
	return m
}

// before is the membership before the change at pos.
func (tl memberTimeline) before(pos int64) string { return tl.at(pos - 1) }

// joinedAfter reports whether the user joined at some point after pos.
func (tl memberTimeline) joinedAfter(pos int64) bool {
	for _, e := range tl {
		if e.Pos > pos && e.Membership == store.MembershipJoin {
			return true
		}
	}
	return false
}

// allowedBy is the spec's rule list for one (visibility, membership) pair.
func allowedBy(visibility, membership string, joinedLater bool) bool {
	switch {
	case visibility == store.VisibilityWorldReadable:
		return true
	case membership == store.MembershipJoin:
		return true
	case visibility == store.VisibilityShared && joinedLater:
		return true
	case visibility == store.VisibilityInvited && membership == store.MembershipInvite:
		return true
	}
	return false
}

// canSee decides whether userID may see e. For m.room.history_visibility
// events the visibility before or after may allow it; for the user's own
// member events the membership before or after may.
func canSee(e store.StoredEvent, userID string, tl memberTimeline) bool {
	if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == userID && tl.at(e.Pos) == store.MembershipLeave {
		// A user always sees their own leave from an invite, a knock or
		// the room (a rejected invite, a withdrawn or refused knock, a
		// leave or kick), whatever the visibility: it is how their client
		// learns the room is gone.
		switch tl.before(e.Pos) {
		case store.MembershipInvite, store.MembershipKnock, store.MembershipJoin:
			return true
		}
	}
	visibilities := []string{e.VisBefore}
	if e.VisAfter != e.VisBefore {
		visibilities = append(visibilities, e.VisAfter)
	}
	memberships := []string{tl.at(e.Pos)}
	if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == userID {
		memberships = append(memberships, tl.before(e.Pos))
	}
	later := tl.joinedAfter(e.Pos)
	for _, v := range visibilities {
		for _, m := range memberships {
			if allowedBy(v, m, later) {
				return true
			}
		}
	}
	return false
}

// VisibilityFilter filters one user's events across rooms.
type VisibilityFilter struct {
	UserID string
	Logs   map[string][]store.MembershipEntry
	// erased maps erased senders to the position of their erasure
	// (erasure.go).
	Erased map[string]int64
}

func (s *Service) newVisibilityFilter(ctx context.Context, rd store.Reader, userID string, rooms []string) (VisibilityFilter, error) {
	erased, err := s.ErasedUsers(ctx)
	if err != nil {
		return VisibilityFilter{}, err
	}
	logs, err := rd.MembershipLog(ctx, userID, rooms)
	return VisibilityFilter{UserID: userID, Logs: logs, Erased: erased}, err
}

func (f VisibilityFilter) canSee(e store.StoredEvent) bool {
	return canSee(e, f.UserID, f.Logs[e.RoomID])
}

// keep returns the events the user may see, in order, each with the
// user's membership at it (membershipAt).
func (f VisibilityFilter) Keep(events []store.StoredEvent) []store.StoredEvent {
	out := events[:0:0]
	for _, e := range events {
		if f.canSee(e) {
			e.Membership = f.membershipAt(e)
			out = append(out, e)
		}
	}
	return out
}

// membershipAt is unsigned.membership of e for the user: their membership
// in the room's state at e, the change e makes included, and "leave" when
// they had none yet (the spec's rule).
func (f VisibilityFilter) membershipAt(e store.StoredEvent) string {
	if m := memberTimeline(f.Logs[e.RoomID]).at(e.Pos); m != "" {
		return m
	}
	return store.MembershipLeave
}
