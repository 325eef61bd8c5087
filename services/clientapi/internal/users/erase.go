package users

import (
	"context"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
)

// erase records the erasure of a deactivated user (after their leave
// events are stored, so its position covers them), deletes their data
// kept outside events, and clears their presence status message.
func (s *Accounts) erase(ctx context.Context, userID string) error {
	if err := s.store.Erase(ctx, userID); err != nil {
		return err
	}
	s.history.ForgetErasures()
	if s.presence != nil {
		empty := ""
		if _, err := s.presence.SetPresence(ctx, &presencev1.SetPresenceRequest{
			Origin: s.serverName, UserId: userID, Presence: "offline", StatusMsg: &empty,
		}); err != nil {
			// The account is gone either way; the status message stays
			// visible to users sharing a room (there are none after the
			// leaves) until presence is set again.
			s.log.Warn("erasure: clear presence status", logging.UserID(userID), zap.Error(err))
		}
	}
	return nil
}
