package users

import (
	"context"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// changePassword is POST /account/password, behind user-interactive auth
// (m.login.password with the current password). logout_devices (default
// true) logs out every other device.
func (s *Accounts) changePassword(r *http.Request, dev *httpapi.Device) (any, error) {
	if dev.IsGuest {
		return nil, httpapi.GuestForbidden("Guests have no password")
	}
	var req struct {
		Auth          *AuthData `json:"auth"`
		NewPassword   *string   `json:"new_password"`
		LogoutDevices *bool     `json:"logout_devices"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.NewPassword == nil || *req.NewPassword == "" {
		return nil, matrixhttp.MissingParam("new_password is required")
	}
	if len(*req.NewPassword) > maxPasswordBytes {
		return nil, matrixhttp.InvalidParam("Password too long")
	}
	ctx := r.Context()
	sess, err := s.RunUIA(ctx, purposePassword, dev.UserID, req.Auth)
	if err != nil {
		return nil, err
	}
	hash, err := hashPassword(*req.NewPassword)
	if err != nil {
		return nil, err
	}
	var logoutExcept *string
	if req.LogoutDevices == nil || *req.LogoutDevices {
		logoutExcept = &dev.DeviceID
	}
	lp, _ := s.localpartOf(dev.UserID)
	if err := s.accounts.SetPassword(ctx, lp, dev.UserID, hash, logoutExcept); err != nil {
		return nil, err
	}
	if logoutExcept != nil {
		s.keys.SendForRequest(ctx, dev.UserID) // the other devices' keys go with them
	}
	if err := s.FinishUIA(ctx, sess); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deactivate is POST /account/deactivate, behind user-interactive auth.
// The user leaves every room they are joined to, invited to or knocking
// on (through the room-server, as ordinary leave events), then the
// account loses its password, profile, devices and tokens for good; the
// user ID is never reissued. With erase, the user's events are served
// redacted to users who join later, and their other data goes
// (erase.go; the readers' side is internal/history/erasure.go).
func (s *Accounts) deactivate(r *http.Request, dev *httpapi.Device) (any, error) {
	var req struct {
		Auth  *AuthData `json:"auth"`
		Erase bool      `json:"erase"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	ctx := r.Context()
	sess, err := s.RunUIA(ctx, purposeDeactivate, dev.UserID, req.Auth)
	if err != nil {
		return nil, err
	}
	members, err := s.store.Reader().Memberships(ctx, dev.UserID)
	if err != nil {
		return nil, err
	}
	for _, m := range members {
		switch m.Membership {
		case store.MembershipJoin, store.MembershipInvite, "knock":
		default:
			continue
		}
		if err := s.sendMember(ctx, m.RoomID, dev.UserID, map[string]any{"membership": store.MembershipLeave}); err != nil {
			// Keep going: a room that refuses must not keep the account alive.
			s.log.Warn("deactivation: leave room", logging.UserID(dev.UserID), logging.RoomID(m.RoomID), zap.Error(err))
		}
	}
	lp, _ := s.localpartOf(dev.UserID)
	if err := s.accounts.Deactivate(ctx, lp, dev.UserID); err != nil {
		return nil, err
	}
	s.keys.SendForRequest(ctx, dev.UserID)
	if req.Erase {
		// The account is gone now; the erasure must not be lost to a
		// client that hung up.
		if err := s.erase(context.WithoutCancel(ctx), dev.UserID); err != nil {
			return nil, err
		}
	}
	if err := s.FinishUIA(ctx, sess); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return map[string]string{"id_server_unbind_result": "no-support"}, nil
}
