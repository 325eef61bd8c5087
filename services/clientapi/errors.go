package clientapi

import (
	"context"

	"google.golang.org/grpc/codes"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
)

// createRoomErrors: the room-server refusing an initial event means the
// initial state the request implies is invalid.
var createRoomErrors = httpapi.GRPCOverrides{
	codes.PermissionDenied: httpapi.InvalidRoomState,
	codes.InvalidArgument:  httpapi.InvalidRoomState,
}

// fromGRPC converts an error from a room-server or key-server call into a
// Matrix error, logging internal ones (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}

// ErrKeysNotHandedOver is what Ready reports until the old key tables are
// handed over to the key-server.
var ErrKeysNotHandedOver = keys.ErrKeysNotHandedOver
