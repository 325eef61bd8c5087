package users

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// registerRequest is the body of POST /register.
type registerRequest struct {
	// Type is m.login.application_service for an appservice's
	// registration (appservice.go); users' go through Auth.
	Type                     string    `json:"type"`
	Auth                     *AuthData `json:"auth"`
	Username                 string    `json:"username"`
	Password                 string    `json:"password"`
	DeviceID                 string    `json:"device_id"`
	InitialDeviceDisplayName string    `json:"initial_device_display_name"`
	InhibitLogin             bool      `json:"inhibit_login"`
	RefreshToken             bool      `json:"refresh_token"`
	// GuestAccessToken upgrades that guest account (guest access module).
	GuestAccessToken string `json:"guest_access_token"`
}

// loginResponse is the body of a successful login or registration.
type loginResponse struct {
	UserID       string         `json:"user_id"`
	AccessToken  string         `json:"access_token,omitempty"`
	DeviceID     string         `json:"device_id,omitempty"`
	RefreshToken string         `json:"refresh_token,omitempty"`
	ExpiresInMS  int64          `json:"expires_in_ms,omitempty"`
	HomeServer   string         `json:"home_server"`
	WellKnown    map[string]any `json:"well_known,omitempty"`
}

// register is POST /register: user accounts through user-interactive auth
// (m.login.dummy when registration is open, m.login.registration_token in
// token mode), guest accounts without auth when guest access is on.
func (s *Accounts) register(r *http.Request, _ *httpapi.Device) (any, error) {
	guest := false
	switch r.URL.Query().Get("kind") {
	case "", "user":
	case "guest":
		guest = true
	default:
		return nil, matrixhttp.InvalidParam("kind must be user or guest")
	}
	if guest && !s.cfg.Registration.GuestAccess {
		return nil, matrixhttp.Forbidden("Guest registration is disabled")
	}
	var req registerRequest
	mode := httpapi.BodyRequired
	if guest {
		mode = httpapi.BodyOptional // guests need send nothing
	}
	if err := httpapi.DecodeBody(r, mode, &req); err != nil {
		return nil, err
	}
	// Application services register whatever the registration mode.
	if !guest && req.Type == loginTypeAppservice {
		if len(req.DeviceID) > 255 {
			return nil, matrixhttp.InvalidParam("device_id too long")
		}
		return s.registerAppservice(r, req)
	}
	if !guest && s.cfg.Registration.Mode == RegistrationClosed {
		return nil, matrixhttp.Forbidden("Registration is disabled")
	}
	if len(req.Password) > maxPasswordBytes {
		return nil, matrixhttp.InvalidParam("Password too long")
	}
	if len(req.DeviceID) > 255 {
		return nil, matrixhttp.InvalidParam("device_id too long")
	}
	ctx := r.Context()
	if guest {
		return s.registerGuest(r, req)
	}
	if req.GuestAccessToken != "" {
		return s.upgradeGuest(r, req)
	}
	localpart := ""
	if req.Username != "" {
		if err := s.checkNotExclusive(s.userID(strings.ToLower(req.Username)), nil); err != nil {
			return nil, err
		}
		lp, err := s.normaliseUsername(req.Username)
		if err != nil {
			return nil, err
		}
		taken, err := s.accounts.AccountExists(ctx, lp)
		if err != nil {
			return nil, err
		}
		if taken {
			return nil, matrixhttp.UserInUse("User ID already taken")
		}
		localpart = lp
	}
	sess, err := s.RunUIA(ctx, purposeRegister, "", req.Auth)
	if err != nil {
		return nil, err
	}
	hash, err := optionalPasswordHash(req.Password)
	if err != nil {
		return nil, err
	}
	acct := accounts.NewAccount{Localpart: localpart, UIASession: sess.ID, PasswordHash: hash}
	return s.createAndLogin(r, acct, !req.InhibitLogin, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
}

// registerGuest creates a guest account: a numeric localpart (reserved
// for guests), no password, and always a login on a server-chosen device.
// The spec has the server ignore every body field but
// initial_device_display_name.
func (s *Accounts) registerGuest(r *http.Request, req registerRequest) (any, error) {
	acct := accounts.NewAccount{Guest: true}
	return s.createAndLogin(r, acct, true, "", req.InitialDeviceDisplayName, false)
}

// upgradeGuest is POST /register with guest_access_token: the guest account
// becomes a full account (same user ID, so rooms and history stay), after
// the same user-interactive auth as a new registration. The spec requires
// username, set to the guest's localpart.
func (s *Accounts) upgradeGuest(r *http.Request, req registerRequest) (any, error) {
	ctx := r.Context()
	owner, err := s.accounts.LookupToken(ctx, hashToken(req.GuestAccessToken))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !owner.Guest) {
		return nil, matrixhttp.Forbidden("Invalid guest access token")
	}
	if err != nil {
		return nil, err
	}
	lp, _ := s.localpartOf(owner.UserID)
	if req.Username == "" {
		return nil, matrixhttp.MissingParam("username is required to upgrade a guest account")
	}
	if strings.ToLower(req.Username) != lp {
		return nil, matrixhttp.Forbidden("username must be the guest's own localpart")
	}
	sess, err := s.RunUIA(ctx, purposeRegister, "", req.Auth)
	if err != nil {
		return nil, err
	}
	hash, err := optionalPasswordHash(req.Password)
	if err != nil {
		return nil, err
	}
	l, toks := s.firstLogin(r, owner.UserID, !req.InhibitLogin, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err := s.accounts.UpgradeGuest(ctx, lp, hash, sess.ID, l); errors.Is(err, store.ErrNotFound) {
		return nil, matrixhttp.Forbidden("Invalid guest access token")
	} else if err != nil {
		return nil, err
	}
	resp := loginResponse{UserID: owner.UserID, HomeServer: s.serverName}
	if l != nil {
		toks.fill(&resp, l.DeviceID)
	}
	return resp, nil
}

// createAndLogin creates the account (generating a localpart when empty)
// and, when login is set, its first device and tokens.
func (s *Accounts) createAndLogin(r *http.Request, acct accounts.NewAccount, login bool, deviceID, deviceName string, refresh bool) (loginResponse, error) {
	ctx := r.Context()
	l, toks := s.firstLogin(r, "", login, deviceID, deviceName, refresh)
	localpart, err := s.createAccount(ctx, acct, l)
	if err != nil {
		return loginResponse{}, err
	}
	resp := loginResponse{UserID: s.userID(localpart), HomeServer: s.serverName}
	if l != nil {
		toks.fill(&resp, l.DeviceID)
	}
	return resp, nil
}

// firstLogin prepares the login a registration issues (nil when login is
// false), on deviceID or a new device.
func (s *Accounts) firstLogin(r *http.Request, userID string, login bool, deviceID, deviceName string, refresh bool) (*accounts.Login, issuedTokens) {
	if !login {
		return nil, issuedTokens{}
	}
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	l, t := s.newLogin(r, userID, deviceID, deviceName, refresh)
	return &l, t
}

// optionalPasswordHash hashes a registration's password; none gives nil.
func optionalPasswordHash(password string) (*string, error) {
	if password == "" {
		return nil, nil
	}
	h, err := hashPassword(password)
	if err != nil {
		return nil, err
	}
	return &h, nil
}

// createAccount stores the account; an empty localpart is generated
// (letters and digits for users, digits only for guests).
func (s *Accounts) createAccount(ctx context.Context, acct accounts.NewAccount, login *accounts.Login) (string, error) {
	generated := acct.Localpart == ""
	for attempt := 0; attempt < 10; attempt++ {
		if generated && acct.Guest {
			acct.Localpart = randomFrom("0123456789", 12)
		} else if generated {
			acct.Localpart = "u" + randomFrom("abcdefghijklmnopqrstuvwxyz0123456789", 12)
		}
		if login != nil {
			login.UserID = s.userID(acct.Localpart)
		}
		err := s.accounts.CreateAccount(ctx, acct, login)
		if errors.Is(err, store.ErrUserExists) {
			if generated {
				continue
			}
			return "", matrixhttp.UserInUse("User ID already taken")
		}
		return acct.Localpart, err
	}
	return "", errors.New("could not generate a free user ID")
}

// registerAvailable is GET /register/available.
func (s *Accounts) registerAvailable(r *http.Request, _ *httpapi.Device) (any, error) {
	username := r.URL.Query().Get("username")
	if username == "" {
		return nil, matrixhttp.MissingParam("username is required")
	}
	if err := s.checkNotExclusive(s.userID(strings.ToLower(username)), nil); err != nil {
		return nil, err
	}
	lp, err := s.normaliseUsername(username)
	if err != nil {
		return nil, err
	}
	taken, err := s.accounts.AccountExists(r.Context(), lp)
	if err != nil {
		return nil, err
	}
	if taken {
		return nil, matrixhttp.UserInUse("User ID already taken")
	}
	return map[string]bool{"available": true}, nil
}

// registrationTokenValidity is GET /v1/register/m.login.registration_token/validity.
func (s *Accounts) registrationTokenValidity(r *http.Request, _ *httpapi.Device) (any, error) {
	if s.cfg.Registration.Mode != RegistrationToken {
		return nil, matrixhttp.Forbidden("Registration tokens are not in use")
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return nil, matrixhttp.MissingParam("token is required")
	}
	ok, err := s.accounts.RegistrationTokenValid(r.Context(), token, s.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	return map[string]bool{"valid": ok}, nil
}
