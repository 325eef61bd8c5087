package clientapi

import (
	"context"
	"errors"
	"net/http"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Sentinel errors of this package.
var (
	// ErrInvalidToken is a malformed sync or pagination token.
	ErrInvalidToken = errors.New("invalid stream token")
	// ErrBadPayload is a JetStream message the consumer cannot decode.
	ErrBadPayload = errors.New("undecodable room event payload")
)

// Errors specific to some endpoints (the common ones are in matrixhttp).
func roomInUse(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_ROOM_IN_USE", "%s", msg)
}

func unsupportedRoomVersion(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "%s", msg)
}

func invalidRoomState(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "%s", msg)
}

func tooLarge(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "%s", msg)
}

func unknownError(status int, msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(status, "M_UNKNOWN", "%s", msg)
}

// grpcErrors is the one table that turns room-server gRPC statuses into
// Matrix errors. Codes not listed are internal errors: logged, and
// M_UNKNOWN for the client.
var grpcErrors = map[codes.Code]func(msg string) *matrixhttp.Error{
	codes.PermissionDenied:  matrixhttp.Forbidden,
	codes.NotFound:          matrixhttp.NotFound,
	codes.InvalidArgument:   matrixhttp.BadJSON,
	codes.ResourceExhausted: func(string) *matrixhttp.Error { return matrixhttp.LimitExceeded(1000) },
	codes.OutOfRange:        tooLarge,
}

// grpcOverrides replaces entries of grpcErrors for one endpoint, e.g.
// /createRoom reports rejected initial state as M_INVALID_ROOM_STATE.
type grpcOverrides map[codes.Code]func(msg string) *matrixhttp.Error

// createRoomErrors: the room-server refusing an initial event means the
// initial state the request implies is invalid.
var createRoomErrors = grpcOverrides{
	codes.PermissionDenied: invalidRoomState,
	codes.InvalidArgument:  invalidRoomState,
}

// fromGRPC converts an error from a room-server or key-server call into a
// Matrix error, logging internal ones.
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides grpcOverrides) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		// The client went away (or the server is stopping): nothing to log.
		return unknownError(http.StatusServiceUnavailable, "Request cancelled")
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
		s.log.Warn("peer service unavailable", zap.String("op", op), zap.Error(err))
		return unknownError(http.StatusServiceUnavailable, "Service temporarily unavailable")
	}
	s.log.Error("room-server call failed", zap.String("op", op), zap.Error(err))
	return matrixhttp.Unknown("Internal server error")
}

func badAlias(msg string) *matrixhttp.Error {
	return matrixhttp.Errorf(http.StatusBadRequest, "M_BAD_ALIAS", "%s", msg)
}
