package fedreceiver

import (
	"context"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/matrixhttp"
)

// Sentinel errors of the receiver (errors.go maps them).
var (
	// errNotInRoom: the requesting server has no joined member in the
	// room (403 M_FORBIDDEN on the read endpoints).
	errNotInRoom = errors.New("the requesting server is not in the room")
	// errACLDenied: the room's m.room.server_acl denies the server.
	errACLDenied = errors.New("the server is denied by the room's server ACL")
)

// matrixError is the one table from errors to Matrix errors: Matrix
// errors pass through, gomatrixserverlib's spec.MatrixError keep their
// code, the receiver's sentinels and peers' gRPC statuses get theirs.
func (s *Service) matrixError(ctx context.Context, err error) *matrixhttp.Error {
	var me *matrixhttp.Error
	if errors.As(err, &me) {
		return me
	}
	var spe spec.MatrixError
	if errors.As(err, &spe) {
		return &matrixhttp.Error{Status: specStatus(spe.ErrCode), ErrCode: string(spe.ErrCode), Message: spe.Err}
	}
	var ise spec.InternalServerError
	if errors.As(err, &ise) {
		return matrixhttp.Unknown("Internal server error")
	}
	switch {
	case errors.Is(err, errNotInRoom), errors.Is(err, errACLDenied):
		return matrixhttp.Forbidden(err.Error())
	case errors.Is(err, errRetryTransaction):
		return matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "%s", err.Error())
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "A service did not answer in time")
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.NotFound:
			return matrixhttp.NotFound(st.Message())
		case codes.InvalidArgument, codes.OutOfRange:
			return matrixhttp.InvalidParam(st.Message())
		case codes.PermissionDenied:
			return matrixhttp.Forbidden(st.Message())
		case codes.Unavailable, codes.DeadlineExceeded:
			return matrixhttp.Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "A service is unavailable; try again later")
		}
	}
	return matrixhttp.Unknown("Internal server error")
}

// specStatus is the HTTP status of a gomatrixserverlib error code.
func specStatus(code spec.MatrixErrorCode) int {
	switch code {
	case spec.ErrorForbidden:
		return http.StatusForbidden
	case spec.ErrorNotFound:
		return http.StatusNotFound
	case spec.ErrorUnrecognized:
		return http.StatusNotFound
	case spec.ErrorUnknown:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func errorsIsACL(err error) bool { return errors.Is(err, errACLDenied) }
