package users

// Application services' side of accounts: the users they act as (the
// HTTP edge's as_token authentication), their sender users, registration
// and login with m.login.application_service, and the exclusive user
// namespaces other users may not register in (M_EXCLUSIVE).

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// loginTypeAppservice is the login and registration type of application
// services.
const loginTypeAppservice = "m.login.application_service"

// AppserviceDevice is the device an application service acts as: the
// user's (httpapi.ErrUnknownUser unless it is an active local account),
// on deviceID when set (httpapi.ErrUnknownDevice unless it is one of the
// user's devices) or on no device.
func (s *Accounts) AppserviceDevice(ctx context.Context, userID, deviceID string) (*httpapi.Device, error) {
	lp, ok := s.localpartOf(userID)
	if !ok || s.userID(lp) != userID {
		return nil, httpapi.ErrUnknownUser
	}
	m, err := s.accounts.AccountModeration(ctx, lp)
	if errors.Is(err, store.ErrNotFound) {
		return nil, httpapi.ErrUnknownUser
	}
	if err != nil {
		return nil, err
	}
	if deviceID != "" {
		if _, err := s.accounts.Device(ctx, userID, deviceID); errors.Is(err, store.ErrNotFound) {
			return nil, httpapi.ErrUnknownDevice
		} else if err != nil {
			return nil, err
		}
	}
	return &httpapi.Device{UserID: userID, DeviceID: deviceID, IsAdmin: m.Admin, Locked: m.Locked, Suspended: m.Suspended}, nil
}

// EnsureAppserviceSenders creates each application service's sender user
// (sender_localpart) when it does not exist yet: a passwordless account
// named by its localpart, like the users the appservices register.
func (s *Accounts) EnsureAppserviceSenders(ctx context.Context) error {
	for _, reg := range s.appservices.List() {
		lp := reg.SenderUserID().Localpart()
		err := s.accounts.CreateAccount(ctx, accounts.NewAccount{Localpart: lp, DisplayName: lp}, nil)
		if err != nil && !errors.Is(err, store.ErrUserExists) {
			return fmt.Errorf("appservice %s: create sender %s: %w", reg.ID, reg.SenderUserID(), err)
		}
	}
	return nil
}

// checkNotExclusive refuses a user ID an application service other than
// self holds exclusively (400 M_EXCLUSIVE); self is nil for users.
func (s *base) checkNotExclusive(userID string, self *appservice.Registration) error {
	if owner := s.appservices.ExclusiveUserOwner(userID); owner != nil && owner != self {
		return httpapi.Exclusive("This user ID is reserved by an application service")
	}
	return nil
}

// requestAppservice is the application service whose as_token the
// request carries, as /register and /login (which do not authenticate
// otherwise) need it: 401 M_MISSING_TOKEN without a token, 401
// M_UNKNOWN_TOKEN when it is no appservice's.
func requestAppservice(r *http.Request, set *appservice.Set) (*appservice.Registration, error) {
	token, ok := httpapi.RequestToken(r)
	if !ok {
		return nil, matrixhttp.MissingToken("Missing application service token")
	}
	reg := set.ByASToken(token)
	if reg == nil {
		e := matrixhttp.UnknownToken("Unrecognised application service token")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	return reg, nil
}

// registerAppservice is POST /register with type
// m.login.application_service: no user-interactive auth, no password; the
// user must be in the appservice's users namespaces (M_EXCLUSIVE
// otherwise, as when another appservice holds it exclusively). A login is
// made unless inhibit_login is set.
func (s *Accounts) registerAppservice(r *http.Request, req registerRequest) (any, error) {
	reg, err := requestAppservice(r, s.appservices)
	if err != nil {
		return nil, err
	}
	if req.Username == "" {
		return nil, matrixhttp.MissingParam("username is required")
	}
	lp := req.Username
	if !validLocalpart(lp) {
		return nil, matrixhttp.InvalidUsername("User ID can only contain characters a-z, 0-9, or '._=-/+'")
	}
	userID := s.userID(lp)
	if len(userID) > 255 {
		return nil, matrixhttp.InvalidUsername("User ID is too long")
	}
	if !reg.IsInterestedInUser(userID) {
		return nil, httpapi.Exclusive("User ID is outside the application service's namespaces")
	}
	if err := s.checkNotExclusive(userID, reg); err != nil {
		return nil, err
	}
	// The localpart is the first display name, as Synapse gives every
	// account: bridges (mautrix's IntentAPI.SetDisplayName) read the
	// current name before they set one, and a 404 stops them.
	acct := accounts.NewAccount{Localpart: lp, DisplayName: lp}
	return s.createAndLogin(r, acct, !req.InhibitLogin, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
}

// appserviceLoginUser is the localpart POST /login with
// m.login.application_service logs in as: a user in the appservice's
// namespaces (403 M_EXCLUSIVE otherwise).
func (s *Accounts) appserviceLoginUser(r *http.Request, user string) (string, error) {
	reg, err := requestAppservice(r, s.appservices)
	if err != nil {
		return "", err
	}
	if user == "" {
		return "", matrixhttp.MissingParam("No user given")
	}
	lp, ok := s.localpartOf(user)
	if !ok {
		return "", errBadLogin()
	}
	if !reg.IsInterestedInUser(s.userID(lp)) {
		return "", matrixhttp.Errorf(http.StatusForbidden, "M_EXCLUSIVE", "User ID is outside the application service's namespaces")
	}
	if exists, err := s.accounts.AccountExists(r.Context(), lp); err != nil {
		return "", err
	} else if !exists {
		return "", errBadLogin()
	}
	return lp, nil
}
