package media

import (
	"context"
	"net/http"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
)

// caller is the authenticated user of a request, as the client-API's
// UserService knows them (guests and locked accounts never get this far).
type caller struct {
	UserID    id.UserID
	DeviceID  id.DeviceID
	Admin     bool
	Suspended bool
}

// requestToken extracts the access token from the Authorization header
// or the access_token query parameter.
func requestToken(r *http.Request) (string, bool) {
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

// authenticate asks the client-API who the request's token belongs to and
// turns the answer into the Matrix errors the client-API gives for it: a
// missing, unknown or expired token, a guest (no media endpoint is open
// to guests) and a locked account.
func (s *Service) authenticate(r *http.Request) (*caller, error) {
	token, ok := requestToken(r)
	if !ok {
		return nil, matrixhttp.MissingToken("Missing access token")
	}
	resp, err := s.users.Authenticate(r.Context(), &clientapiv1.AuthenticateRequest{AccessToken: token})
	if err != nil {
		return nil, s.authError(r.Context(), err)
	}
	if resp.GetExpired() {
		// The device still exists: the client refreshes rather than
		// starting over.
		e := matrixhttp.UnknownToken("Access token has expired")
		e.Extra = map[string]any{"soft_logout": true}
		return nil, e
	}
	if resp.GetGuest() {
		return nil, matrixhttp.Errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed on this endpoint")
	}
	if resp.GetLocked() {
		e := matrixhttp.Errorf(http.StatusUnauthorized, "M_USER_LOCKED", "This account has been locked")
		e.Extra = map[string]any{"soft_logout": true}
		return nil, e
	}
	return &caller{
		UserID: id.UserID(resp.GetUserId()), DeviceID: id.DeviceID(resp.GetDeviceId()),
		Admin: resp.GetAdmin(), Suspended: resp.GetSuspended(),
	}, nil
}

// authError is the Matrix error for a failed Authenticate call.
func (s *Service) authError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "Request cancelled")
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.InvalidArgument:
		e := matrixhttp.UnknownToken("Unrecognised access token")
		e.Extra = map[string]any{"soft_logout": false}
		return e
	case codes.Unavailable, codes.DeadlineExceeded:
		s.log.Warn("client-API unavailable for authentication", zap.Error(err))
		return matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "Service temporarily unavailable")
	}
	s.log.Error("authentication call failed", zap.Error(err))
	return matrixhttp.Unknown("Internal server error")
}

// errSuspended answers what a suspended account may not do (upload).
func errSuspended() error {
	return matrixhttp.Errorf(http.StatusForbidden, "M_USER_SUSPENDED", "You cannot perform this action while suspended")
}
