package users

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// refreshTokenPrefix and loginTokenPrefix start the other tokens Myelin
// issues, so a token pasted in the wrong place is recognisable.
const (
	refreshTokenPrefix = "mylr_"
	loginTokenPrefix   = "myll_"
)

// issuedTokens are the plaintext tokens of a new login, returned once.
type issuedTokens struct {
	access    string
	refresh   string
	expiresIn time.Duration
}

func (t issuedTokens) fill(resp *loginResponse, deviceID string) {
	resp.AccessToken, resp.DeviceID = t.access, deviceID
	if t.refresh != "" {
		resp.RefreshToken, resp.ExpiresInMS = t.refresh, t.expiresIn.Milliseconds()
	}
}

// newLogin makes the tokens of a login. Clients that ask for a refresh
// token get an access token that expires after
// registration.access_token_lifetime; others get one that never expires.
func (s *Accounts) newLogin(r *http.Request, userID, deviceID, displayName string, refresh bool) (accounts.Login, issuedTokens) {
	var t issuedTokens
	l := accounts.Login{UserID: userID, DeviceID: deviceID, DisplayName: displayName, IP: httpapi.ClientIP(r, s.cfg.RateLimit.TrustForwardedFor)}
	t.access, l.TokenHash = newAccessToken()
	if refresh {
		t.refresh = refreshTokenPrefix + randomBase64(32)
		l.RefreshHash = hashToken(t.refresh)
		t.expiresIn = s.cfg.Registration.AccessTokenLifetime
		l.ExpiresAt = s.now().Add(t.expiresIn)
	}
	return l, t
}

// loginFlows is GET /login.
func (s *Accounts) loginFlows(*http.Request, *httpapi.Device) (any, error) {
	return map[string]any{"flows": []map[string]any{
		{"type": "m.login.password"},
		{"type": "m.login.token", "get_login_token": true},
		{"type": loginTypeAppservice},
	}}, nil
}

// loginRequest is the body of POST /login.
type loginRequest struct {
	Type                     string          `json:"type"`
	Identifier               *userIdentifier `json:"identifier"`
	User                     string          `json:"user"`
	Password                 string          `json:"password"`
	Token                    string          `json:"token"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	RefreshToken             bool            `json:"refresh_token"`
}

// errBadLogin is the one answer to every failed credential check, so that
// it does not reveal which part was wrong.
func errBadLogin() error { return matrixhttp.Forbidden("Invalid username or password") }

// login is POST /login with m.login.password or m.login.token.
func (s *Accounts) login(r *http.Request, _ *httpapi.Device) (any, error) {
	var req loginRequest
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if len(req.DeviceID) > 255 {
		return nil, matrixhttp.InvalidParam("device_id too long")
	}
	ctx := r.Context()
	var localpart string
	switch req.Type {
	case "m.login.password":
		user := req.User
		if req.Identifier != nil {
			switch req.Identifier.Type {
			case "m.id.user":
				user = req.Identifier.User
			case "m.id.thirdparty", "m.id.phone":
				// No third-party identifiers are bound to accounts here;
				// the spec answers an unknown 3PID with 403.
				return nil, matrixhttp.Forbidden("Third-party identifiers are not supported on this server")
			default:
				return nil, httpapi.UnknownError(http.StatusBadRequest, "Unsupported identifier type")
			}
		}
		if user == "" {
			return nil, matrixhttp.MissingParam("No user given")
		}
		lp, ok := s.localpartOf(user)
		if !ok {
			return nil, errBadLogin()
		}
		hash, err := s.accounts.PasswordHash(ctx, lp)
		if errors.Is(err, store.ErrNotFound) {
			checkPassword(dummyHash(), req.Password)
			return nil, errBadLogin()
		}
		if err != nil {
			return nil, err
		}
		if !checkPassword(hash, req.Password) {
			return nil, errBadLogin()
		}
		localpart = lp
	case "m.login.token":
		if req.Token == "" {
			return nil, matrixhttp.MissingParam("token is required")
		}
		userID, err := s.accounts.ConsumeLoginToken(ctx, hashToken(req.Token), s.now())
		if errors.Is(err, store.ErrNotFound) {
			return nil, matrixhttp.Forbidden("Invalid or expired login token")
		}
		if err != nil {
			return nil, err
		}
		lp, _ := s.localpartOf(userID)
		localpart = lp
	case loginTypeAppservice:
		user := req.User
		if req.Identifier != nil {
			if req.Identifier.Type != "m.id.user" {
				return nil, httpapi.UnknownError(http.StatusBadRequest, "Unsupported identifier type")
			}
			user = req.Identifier.User
		}
		lp, err := s.appserviceLoginUser(r, user)
		if err != nil {
			return nil, err
		}
		localpart = lp
	default:
		return nil, httpapi.UnknownError(http.StatusBadRequest, "Unknown login type")
	}
	acct, err := s.accounts.Account(ctx, localpart)
	if err != nil {
		return nil, err
	}
	if acct.Deactivated {
		return nil, matrixhttp.Errorf(http.StatusForbidden, "M_USER_DEACTIVATED", "This account has been deactivated")
	}
	if acct.Locked {
		return nil, httpapi.ErrLocked()
	}
	deviceID := req.DeviceID
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	l, toks := s.newLogin(r, s.userID(localpart), deviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err := s.accounts.AddLogin(ctx, l); err != nil {
		return nil, err
	}
	resp := loginResponse{
		UserID: l.UserID, HomeServer: s.serverName,
		WellKnown: map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}},
	}
	toks.fill(&resp, deviceID)
	return resp, nil
}

// refresh is POST /v3/refresh: a refresh token buys a new access token
// and a new refresh token for the same device. The old refresh token stays
// valid until one of the new tokens is used (store.Refresh), as the spec
// asks, so a client that lost this answer can refresh again. A spent
// refresh token that comes back is refused and logged. A locked account
// gets M_USER_LOCKED.
func (s *Accounts) refresh(r *http.Request, _ *httpapi.Device) (any, error) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyRequired, &req); err != nil {
		return nil, err
	}
	if req.RefreshToken == "" {
		return nil, matrixhttp.MissingParam("refresh_token is required")
	}
	l, toks := s.newLogin(r, "", "", "", true)
	err := s.accounts.Refresh(r.Context(), hashToken(req.RefreshToken), &l)
	if errors.Is(err, accounts.ErrRefreshReused) {
		// Refused like an unknown token, and logged: it may be a stolen
		// token, or two clients of the session racing.
		s.log.Warn("spent refresh token used again", logging.UserID(l.UserID), zap.String("device_id", l.DeviceID))
		err = store.ErrNotFound
	}
	if errors.Is(err, accounts.ErrAccountLocked) {
		return nil, httpapi.ErrLocked()
	}
	if errors.Is(err, store.ErrNotFound) {
		e := matrixhttp.UnknownToken("Unknown refresh token")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"access_token":  toks.access,
		"refresh_token": toks.refresh,
		"expires_in_ms": toks.expiresIn.Milliseconds(),
	}, nil
}

// getLoginToken is POST /v1/login/get_token, behind user-interactive auth:
// a short-lived, single-use m.login.token token for signing in another
// device.
func (s *Accounts) getLoginToken(r *http.Request, dev *httpapi.Device) (any, error) {
	if dev.IsGuest {
		return nil, httpapi.GuestForbidden("Guests cannot get login tokens")
	}
	var req struct {
		Auth *AuthData `json:"auth"`
	}
	if err := httpapi.DecodeBody(r, httpapi.BodyOptional, &req); err != nil {
		return nil, err
	}
	sess, err := s.RunUIA(r.Context(), purposeLoginToken, dev.UserID, req.Auth)
	if err != nil {
		return nil, err
	}
	token := loginTokenPrefix + randomBase64(32)
	lifetime := s.cfg.Registration.LoginTokenLifetime
	if err := s.accounts.CreateLoginToken(r.Context(), hashToken(token), dev.UserID, s.now().Add(lifetime)); err != nil {
		return nil, err
	}
	if err := s.FinishUIA(r.Context(), sess); err != nil {
		return nil, err
	}
	return map[string]any{"login_token": token, "expires_in_ms": lifetime.Milliseconds()}, nil
}
