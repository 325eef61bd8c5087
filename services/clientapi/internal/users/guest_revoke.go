package users

import (
	"context"
	"encoding/json"
	"errors"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// The guest access module: "If the m.room.guest_access event is changed to
// stop [guest_access being can_join], the server MUST set those users'
// m.room.member state to leave." Guests are an account property the
// client-API owns, so the client-API's consumer does it: after storing a
// batch with such a change, it sends a leave for every joined local guest
// before acknowledging the batch. Redelivery (also of a batch stored before
// a crash) repeats the check, and a guest who already left is skipped, so
// the work is idempotent.

// GuestAccessChanged reports the rooms in which an event of the batch set
// m.room.guest_access to anything but can_join.
func GuestAccessChanged(inputs []store.Input) []string {
	var rooms []string
	for _, in := range inputs {
		ev := in.Event
		if ev.Type != "m.room.guest_access" || ev.StateKey == nil || *ev.StateKey != "" {
			continue
		}
		if !guestsCanJoin(ev.JSON) {
			rooms = append(rooms, ev.RoomID)
		}
	}
	return rooms
}

// removeGuests sends a leave for each local guest still joined to the
// rooms. It returns the first error, so the consumer retries the batch.
func (s *Profiles) RemoveGuests(ctx context.Context, rooms []string) error {
	for _, roomID := range rooms {
		// The current state decides, not the batch: a later event may have
		// reopened the room to guests.
		if open, err := s.guestsMayJoin(ctx, roomID); err != nil || open {
			return err
		}
		byLocalpart := map[string]string{}
		var localparts []string
		for _, u := range s.notifier.Members(roomID) {
			if lp, ok := s.localpartOf(u); ok {
				byLocalpart[lp] = u
				localparts = append(localparts, lp)
			}
		}
		if len(localparts) == 0 {
			continue
		}
		guests, err := s.accounts.GuestLocalparts(ctx, localparts)
		if err != nil {
			return err
		}
		for _, lp := range guests {
			userID := byLocalpart[lp]
			s.log.Info("guest access revoked: removing guest", logging.UserID(userID), logging.RoomID(roomID))
			if err := s.sendMember(ctx, roomID, userID, map[string]any{"membership": store.MembershipLeave}); err != nil {
				if transient(err) {
					return err
				}
				// Refused for good (it should not be: leaving is always
				// allowed): retrying would stall the consumer.
				s.log.Error("remove guest", logging.UserID(userID), logging.RoomID(roomID), zap.Error(err))
			}
		}
	}
	return nil
}

// transient reports whether a failed peer call may succeed if retried.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

// guestsMayJoin reports whether the room's current m.room.guest_access is
// can_join.
func (s *Profiles) guestsMayJoin(ctx context.Context, roomID string) (bool, error) {
	ev, err := s.store.Reader().CurrentStateEvent(ctx, roomID, "m.room.guest_access", "")
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return guestsCanJoin(ev.JSON), nil
}

// guestsCanJoin reports whether a client-format m.room.guest_access event
// says can_join.
func guestsCanJoin(eventJSON []byte) bool {
	var parsed struct {
		Content struct {
			GuestAccess string `json:"guest_access"`
		} `json:"content"`
	}
	return json.Unmarshal(eventJSON, &parsed) == nil && parsed.Content.GuestAccess == "can_join"
}
