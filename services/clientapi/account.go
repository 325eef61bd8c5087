package clientapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"golang.org/x/crypto/bcrypt"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// specVersions are the client-server API versions Myelin serves.
var specVersions = []string{
	"r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

// versions is GET /_matrix/client/versions.
func (s *Service) versions(*http.Request, *device) (any, error) {
	return map[string]any{"versions": specVersions, "unstable_features": map[string]bool{}}, nil
}

// wellKnown is GET /.well-known/matrix/client.
func (s *Service) wellKnown(*http.Request, *device) (any, error) {
	return map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}}, nil
}

// capabilities is GET /capabilities.
func (s *Service) capabilities(*http.Request, *device) (any, error) {
	available := map[string]string{}
	for v := range gomatrixserverlib.StableRoomVersions() {
		available[string(v)] = "stable"
	}
	off := map[string]bool{"enabled": false}
	return map[string]any{"capabilities": map[string]any{
		"m.room_versions":   map[string]any{"default": s.cfg.DefaultRoomVersion, "available": available},
		"m.change_password": off,
		"m.set_displayname": off,
		"m.set_avatar_url":  off,
		"m.3pid_changes":    off,
	}}, nil
}

// maxPasswordBytes caps passwords (they are pre-hashed, so bcrypt's 72-byte
// limit does not apply).
const maxPasswordBytes = 512

// hashPassword hashes a password with bcrypt at the default cost. The
// password is first reduced with SHA-256 so that bcrypt's 72-byte input
// limit neither truncates nor rejects long passphrases.
func hashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword(prehash(password), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

func checkPassword(hash, password string) bool {
	return bcrypt.CompareHashAndPassword([]byte(hash), prehash(password)) == nil
}

func prehash(password string) []byte {
	sum := sha256.Sum256([]byte(password))
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}

// dummyHash is compared against when the user does not exist, so a failed
// login takes the same time either way.
var dummyHash = sync.OnceValue(func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte("myelin-no-such-user"), bcrypt.DefaultCost)
	return string(h)
})

// validLocalpart reports whether s matches the user ID localpart grammar.
func validLocalpart(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '=', c == '-', c == '/', c == '+':
		default:
			return false
		}
	}
	return true
}

// normaliseUsername lowercases a requested username and checks it yields
// a valid user ID on this server.
func (s *Service) normaliseUsername(username string) (string, error) {
	lp := strings.ToLower(username)
	if !validLocalpart(lp) {
		return "", matrixhttp.InvalidUsername("User ID can only contain characters a-z, 0-9, or '._=-/+'")
	}
	if len(s.userID(lp)) > 255 {
		return "", matrixhttp.InvalidUsername("User ID is too long")
	}
	return lp, nil
}

func (s *Service) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }

// registerRequest is the body of POST /register.
type registerRequest struct {
	Auth                     *authData `json:"auth"`
	Username                 string    `json:"username"`
	Password                 string    `json:"password"`
	DeviceID                 string    `json:"device_id"`
	InitialDeviceDisplayName string    `json:"initial_device_display_name"`
	InhibitLogin             bool      `json:"inhibit_login"`
	RefreshToken             bool      `json:"refresh_token"`
}

// loginResponse is the body of a successful login or registration.
type loginResponse struct {
	UserID      string         `json:"user_id"`
	AccessToken string         `json:"access_token,omitempty"`
	DeviceID    string         `json:"device_id,omitempty"`
	HomeServer  string         `json:"home_server"`
	WellKnown   map[string]any `json:"well_known,omitempty"`
}

// register is POST /register with user-interactive auth (m.login.dummy).
func (s *Service) register(r *http.Request, _ *device) (any, error) {
	if !s.cfg.RegistrationOpen {
		return nil, matrixhttp.Forbidden("Registration is disabled")
	}
	switch r.URL.Query().Get("kind") {
	case "", "user":
	case "guest":
		return nil, matrixhttp.Forbidden("Guest access is disabled")
	default:
		return nil, matrixhttp.InvalidParam("kind must be user or guest")
	}
	var req registerRequest
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	if len(req.Password) > maxPasswordBytes {
		return nil, matrixhttp.InvalidParam("Password too long")
	}
	if len(req.DeviceID) > 255 {
		return nil, matrixhttp.InvalidParam("device_id too long")
	}
	ctx := r.Context()
	localpart := ""
	if req.Username != "" {
		lp, err := s.normaliseUsername(req.Username)
		if err != nil {
			return nil, err
		}
		taken, err := s.store.AccountExists(ctx, lp)
		if err != nil {
			return nil, err
		}
		if taken {
			return nil, matrixhttp.UserInUse("User ID already taken")
		}
		localpart = lp
	}
	if err := s.checkUIA(ctx, req.Auth); err != nil {
		return nil, err
	}

	var hash *string
	if req.Password != "" {
		h, err := hashPassword(req.Password)
		if err != nil {
			return nil, err
		}
		hash = &h
	}
	var login *store.Login
	var token string
	if !req.InhibitLogin {
		deviceID := req.DeviceID
		if deviceID == "" {
			deviceID = newDeviceID()
		}
		var tokenHash []byte
		token, tokenHash = newAccessToken()
		login = &store.Login{DeviceID: deviceID, DisplayName: req.InitialDeviceDisplayName, TokenHash: tokenHash}
	}
	localpart, err := s.createAccount(ctx, localpart, hash, login)
	if err != nil {
		return nil, err
	}
	if err := s.finishUIA(ctx, req.Auth); err != nil {
		return nil, err
	}
	resp := loginResponse{UserID: s.userID(localpart), HomeServer: s.serverName}
	if login != nil {
		resp.AccessToken, resp.DeviceID = token, login.DeviceID
	}
	return resp, nil
}

// createAccount stores the account; an empty localpart is generated.
func (s *Service) createAccount(ctx context.Context, localpart string, hash *string, login *store.Login) (string, error) {
	generated := localpart == ""
	for attempt := 0; attempt < 10; attempt++ {
		if generated {
			localpart = "u" + randomFrom("abcdefghijklmnopqrstuvwxyz0123456789", 12)
		}
		if login != nil {
			login.UserID = s.userID(localpart)
		}
		err := s.store.CreateAccount(ctx, localpart, hash, login)
		if errors.Is(err, store.ErrUserExists) {
			if generated {
				continue
			}
			return "", matrixhttp.UserInUse("User ID already taken")
		}
		return localpart, err
	}
	return "", errors.New("could not generate a free user ID")
}

// registerAvailable is GET /register/available.
func (s *Service) registerAvailable(r *http.Request, _ *device) (any, error) {
	username := r.URL.Query().Get("username")
	if username == "" {
		return nil, matrixhttp.MissingParam("username is required")
	}
	lp, err := s.normaliseUsername(username)
	if err != nil {
		return nil, err
	}
	taken, err := s.store.AccountExists(r.Context(), lp)
	if err != nil {
		return nil, err
	}
	if taken {
		return nil, matrixhttp.UserInUse("User ID already taken")
	}
	return map[string]bool{"available": true}, nil
}

// loginFlows is GET /login.
func (s *Service) loginFlows(*http.Request, *device) (any, error) {
	return map[string]any{"flows": []map[string]string{{"type": "m.login.password"}}}, nil
}

// loginRequest is the body of POST /login.
type loginRequest struct {
	Type       string `json:"type"`
	Identifier *struct {
		Type string `json:"type"`
		User string `json:"user"`
	} `json:"identifier"`
	User                     string `json:"user"`
	Password                 string `json:"password"`
	DeviceID                 string `json:"device_id"`
	InitialDeviceDisplayName string `json:"initial_device_display_name"`
}

// login is POST /login with m.login.password.
func (s *Service) login(r *http.Request, _ *device) (any, error) {
	var req loginRequest
	if err := decodeBody(r, bodyRequired, &req); err != nil {
		return nil, err
	}
	if req.Type != "m.login.password" {
		return nil, unknownError(http.StatusBadRequest, "Unknown login type")
	}
	user := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return nil, unknownError(http.StatusBadRequest, "Unsupported identifier type")
		}
		user = req.Identifier.User
	}
	if user == "" {
		return nil, matrixhttp.MissingParam("No user given")
	}
	if len(req.DeviceID) > 255 {
		return nil, matrixhttp.InvalidParam("device_id too long")
	}
	localpart := strings.ToLower(user)
	if strings.HasPrefix(user, "@") {
		uid, err := spec.NewUserID(user, true)
		if err != nil {
			return nil, matrixhttp.Forbidden("Invalid username or password")
		}
		if string(uid.Domain()) != s.serverName {
			return nil, matrixhttp.Forbidden("Invalid username or password")
		}
		localpart = strings.ToLower(uid.Local())
	}
	ctx := r.Context()
	hash, err := s.store.PasswordHash(ctx, localpart)
	if errors.Is(err, store.ErrNotFound) {
		checkPassword(dummyHash(), req.Password)
		return nil, matrixhttp.Forbidden("Invalid username or password")
	}
	if err != nil {
		return nil, err
	}
	if !checkPassword(hash, req.Password) {
		return nil, matrixhttp.Forbidden("Invalid username or password")
	}
	deviceID := req.DeviceID
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	token, tokenHash := newAccessToken()
	login := store.Login{UserID: s.userID(localpart), DeviceID: deviceID, DisplayName: req.InitialDeviceDisplayName, TokenHash: tokenHash}
	if err := s.store.AddLogin(ctx, login); err != nil {
		return nil, err
	}
	return loginResponse{
		UserID: login.UserID, AccessToken: token, DeviceID: deviceID, HomeServer: s.serverName,
		WellKnown: map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}},
	}, nil
}

// logout is POST /logout: the token and its device are deleted.
func (s *Service) logout(r *http.Request, dev *device) (any, error) {
	if err := s.store.Logout(r.Context(), dev.tokenHash); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return struct{}{}, nil
}

// logoutAll is POST /logout/all.
func (s *Service) logoutAll(r *http.Request, dev *device) (any, error) {
	if err := s.store.LogoutAll(r.Context(), dev.UserID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// whoami is GET /account/whoami.
func (s *Service) whoami(_ *http.Request, dev *device) (any, error) {
	return map[string]any{"user_id": dev.UserID, "device_id": dev.DeviceID, "is_guest": false}, nil
}
