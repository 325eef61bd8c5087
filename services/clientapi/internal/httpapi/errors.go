package httpapi

import (
	"context"
	"errors"
	"net/http"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// ErrUnknownToken is an access token no device holds.
var ErrUnknownToken = errors.New("unknown access token")

// Errors specific to some endpoints (the common ones are in matrixhttp).

// RoomInUse is 400 M_ROOM_IN_USE.
func RoomInUse(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_ROOM_IN_USE", "%s", msg)
}

// UnsupportedRoomVersion is 400 M_UNSUPPORTED_ROOM_VERSION.
func UnsupportedRoomVersion(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "%s", msg)
}

// InvalidRoomState is 400 M_INVALID_ROOM_STATE.
func InvalidRoomState(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "%s", msg)
}

// TooLarge is 413 M_TOO_LARGE.
func TooLarge(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "%s", msg)
}

// UnknownError is M_UNKNOWN with the given status.
func UnknownError(status int, msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(status, "M_UNKNOWN", "%s", msg)
}

// BadAlias is 400 M_BAD_ALIAS.
func BadAlias(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_BAD_ALIAS", "%s", msg)
}

// GuestForbidden is 403 M_GUEST_ACCESS_FORBIDDEN.
func GuestForbidden(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "%s", msg)
}

// ErrLocked is 401 M_USER_LOCKED with soft_logout: a locked account.
func ErrLocked() error {
	e := matrixhttp.Errorf(http.StatusUnauthorized, "M_USER_LOCKED", "This account has been locked")
	e.Extra = map[string]any{"soft_logout": true}
	return e
}

// ErrSuspended is 403 M_USER_SUSPENDED: a suspended account.
func ErrSuspended() error {
	return matrixhttp.Errorf(http.StatusForbidden, "M_USER_SUSPENDED", "You cannot perform this action while suspended")
}

// grpcErrors is the one table that turns peer services' gRPC statuses
// into Matrix errors. Codes not listed are internal errors: logged, and
// M_UNKNOWN for the client.
var grpcErrors = map[codes.Code]func(msg string) *matrixhttp.Error{
	codes.PermissionDenied:  matrixhttp.Forbidden,
	codes.NotFound:          matrixhttp.NotFound,
	codes.InvalidArgument:   matrixhttp.BadJSON,
	codes.ResourceExhausted: func(string) *matrixhttp.Error { return matrixhttp.LimitExceeded(1000) },
	codes.OutOfRange:        TooLarge,
}

// GRPCOverrides replaces entries of the table for one endpoint, e.g.
// /createRoom reports rejected initial state as M_INVALID_ROOM_STATE.
type GRPCOverrides map[codes.Code]func(msg string) *matrixhttp.Error

// FromGRPC converts an error from a peer service's gRPC call (room-server,
// key-server, presence) into a Matrix error, logging internal ones.
func FromGRPC(ctx context.Context, log *zap.Logger, op string, err error, overrides GRPCOverrides) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		// The client went away (or the server is stopping): nothing to log.
		return UnknownError(http.StatusServiceUnavailable, "Request cancelled")
	}
	st, _ := status.FromError(err)
	if f, ok := overrides[st.Code()]; ok {
		return f(st.Message())
	}
	if f, ok := grpcErrors[st.Code()]; ok {
		return f(st.Message())
	}
	if st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded {
		// A peer service is down or too slow (rpc.Dial bounds the wait):
		// the client may retry.
		log.Warn("peer service unavailable", zap.String("op", op), zap.Error(err))
		return UnknownError(http.StatusServiceUnavailable, "Service temporarily unavailable")
	}
	log.Error("room-server call failed", zap.String("op", op), zap.Error(err))
	return matrixhttp.Unknown("Internal server error")
}
