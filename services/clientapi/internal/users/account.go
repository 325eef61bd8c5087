package users

import (
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
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// specVersions are the client-server API versions Myelin serves.
var specVersions = []string{
	"r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

// versions is GET /_matrix/client/versions.
func (s *Accounts) versions(*http.Request, *httpapi.Device) (any, error) {
	return map[string]any{"versions": specVersions, "unstable_features": map[string]bool{}}, nil
}

// wellKnown is GET /.well-known/matrix/client.
func (s *Accounts) wellKnown(*http.Request, *httpapi.Device) (any, error) {
	return map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}}, nil
}

// capabilities is GET /capabilities.
func (s *Accounts) capabilities(_ *http.Request, dev *httpapi.Device) (any, error) {
	available := map[string]string{}
	for v := range gomatrixserverlib.StableRoomVersions() {
		available[string(v)] = "stable"
	}
	// Guests cannot change passwords or avatars, nor get login tokens.
	full := !dev.IsGuest
	caps := map[string]any{
		"m.room_versions":   map[string]any{"default": s.cfg.DefaultRoomVersion, "available": available},
		"m.change_password": map[string]bool{"enabled": full},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": full},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		"m.get_login_token": map[string]bool{"enabled": full},
	}
	if dev.IsAdmin {
		caps["m.account_moderation"] = map[string]bool{"lock": true, "suspend": true}
	}
	return map[string]any{"capabilities": caps}, nil
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

// normaliseUsername lowercases a requested username (as Synapse does) and
// checks it yields a valid user ID on this server. Localparts starting
// with '_' are reserved for application services and all-digit ones for
// guests.
func (s *Accounts) normaliseUsername(username string) (string, error) {
	lp := strings.ToLower(username)
	if !validLocalpart(lp) {
		return "", matrixhttp.InvalidUsername("User ID can only contain characters a-z, 0-9, or '._=-/+'")
	}
	if strings.HasPrefix(lp, "_") {
		return "", matrixhttp.InvalidUsername("User ID may not begin with '_'")
	}
	if strings.Trim(lp, "0123456789") == "" {
		return "", matrixhttp.InvalidUsername("Numeric user IDs are reserved for guest users")
	}
	if len(s.userID(lp)) > 255 {
		return "", matrixhttp.InvalidUsername("User ID is too long")
	}
	return lp, nil
}

// localpartOf resolves a login identifier — a localpart or a full user ID
// of this server — to a lowercased localpart.
func (s *base) localpartOf(user string) (string, bool) {
	if !strings.HasPrefix(user, "@") {
		lp := strings.ToLower(user)
		return lp, lp != ""
	}
	uid, err := spec.NewUserID(user, true)
	if err != nil || string(uid.Domain()) != s.serverName {
		return "", false
	}
	return strings.ToLower(uid.Local()), true
}

func (s *base) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }

// logout is POST /logout: the token and its device are deleted. With an
// as_token (which is never revoked) it is the asserted device_id that goes,
// and nothing without one.
func (s *Accounts) logout(r *http.Request, dev *httpapi.Device) (any, error) {
	if dev.Appservice != nil {
		if dev.DeviceID == "" {
			return struct{}{}, nil
		}
		if err := s.accounts.DeleteDevices(r.Context(), dev.UserID, []string{dev.DeviceID}); err != nil {
			return nil, err
		}
	} else if err := s.accounts.Logout(r.Context(), dev.TokenHash); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	s.keys.SendForRequest(r.Context(), dev.UserID) // the device's keys go with it
	return struct{}{}, nil
}

// logoutAll is POST /logout/all.
func (s *Accounts) logoutAll(r *http.Request, dev *httpapi.Device) (any, error) {
	if err := s.accounts.LogoutAll(r.Context(), dev.UserID); err != nil {
		return nil, err
	}
	s.keys.SendForRequest(r.Context(), dev.UserID)
	return struct{}{}, nil
}

// whoami is GET /account/whoami.
func (s *Accounts) whoami(_ *http.Request, dev *httpapi.Device) (any, error) {
	resp := map[string]any{"user_id": dev.UserID, "is_guest": dev.IsGuest}
	if dev.DeviceID != "" { // an application service acting on no device
		resp["device_id"] = dev.DeviceID
	}
	return resp, nil
}
