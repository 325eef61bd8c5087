package clientapi

import (
	"context"

	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
)

// fromGRPC converts an error from a room-server or key-server call into a
// Matrix error, logging internal ones (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}

// ErrKeysNotHandedOver is what Ready reports until the old key tables are
// handed over to the key-server.
var ErrKeysNotHandedOver = keys.ErrKeysNotHandedOver
