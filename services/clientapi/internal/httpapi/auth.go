package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Device is the authenticated caller of a request.
type Device struct {
	UserID    string
	DeviceID  string
	IsAdmin   bool
	IsGuest   bool
	Locked    bool
	Suspended bool
	// TokenHash is the SHA-256 of the access token the request carried
	// (nil for an application service's as_token).
	TokenHash []byte
	// Appservice is the application service whose as_token the request
	// carried (nil for users' access tokens); UserID and DeviceID are then
	// the user and device it acts as (DeviceID may be empty).
	Appservice *appservice.Registration
}

// TokenLookup resolves an access token to its device (ErrUnknownToken if
// no device holds it), and says whether its lifetime is over: the users
// domain's.
type TokenLookup interface {
	LookupAccessToken(ctx context.Context, token string) (dev *Device, expired bool, err error)
}

// RequestToken extracts the access token from the Authorization header
// or the access_token query parameter.
func RequestToken(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			return "", false
		}
		return strings.TrimSpace(token), true
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

// Authenticate resolves the request's access token, or an application
// service's as_token (appservice.go), to a device.
func (s *Server) Authenticate(r *http.Request) (*Device, error) {
	token, ok := RequestToken(r)
	if !ok {
		return nil, matrixhttp.MissingToken("Missing access token")
	}
	if reg := s.appservices.ByASToken(token); reg != nil {
		return s.authenticateAppservice(r, reg)
	}
	dev, expired, err := s.tokens.LookupAccessToken(r.Context(), token)
	if errors.Is(err, ErrUnknownToken) {
		e := matrixhttp.UnknownToken("Unrecognised access token")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	if expired {
		// The device still exists: the client refreshes (or logs in
		// again to the same device) rather than starting over.
		e := matrixhttp.UnknownToken("Access token has expired")
		e.Extra = map[string]any{"soft_logout": true}
		return nil, e
	}
	return dev, nil
}

// RequireAdmin refuses callers who are not server admins (403 M_FORBIDDEN).
func RequireAdmin(dev *Device) error {
	if !dev.IsAdmin {
		return matrixhttp.Forbidden("You are not a server admin")
	}
	return nil
}
