package syncapi

import (
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// knockedRoom is an entry of /sync's rooms.knock: the stripped state of a
// room the user knocked on, their own knock included.
type knockedRoom struct {
	KnockState clientevent.EventList `json:"knock_state"`
}

// isKnock reports whether the stripped state read for a pending room
// (readSync reads invites and knocks alike) ends in the user's own knock.
func isKnock(events []store.CurrentStateEvent, userID string) bool {
	for _, e := range events {
		if e.Type == "m.room.member" && e.StateKey == userID {
			return e.Membership == store.MembershipKnock
		}
	}
	return false
}
