package keys

// Devices live in the client-API, their keys in the key-server. Deleting
// or renaming a device queues the change for the key-server in the same
// transaction (store/keyoutbox.go, migration 038); the request then sends
// the queue to the key-server (DevicesDeleted, DeviceRenamed) before it
// answers, so the device's keys are gone when the client hears back. A
// change the key-server did not take (it is down, or this replica
// stopped) stays queued and is sent again by Bridge.retryLoop. Both
// calls are idempotent, and each user's queue goes out in order, so a
// rename and a deletion of one device arrive as they happened. Nothing is
// sent before the old key tables are handed over (handover.go), so the
// hand-over cannot bring back keys of a device deleted meanwhile.

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/logging"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// keyOutboxInterval is how often queued changes are sent again.
const keyOutboxInterval = 5 * time.Second

// keyOutboxRequestTimeout bounds the sending a request waits for: an
// unreachable key-server delays its answer by this much, then the loop
// takes over.
const keyOutboxRequestTimeout = 3 * time.Second

// sendForRequest sends a user's queued device changes to the key-server,
// for a request that changed a device (which waits at most
// keyOutboxRequestTimeout, also when its client hung up). A failure is
// logged and left to Bridge.retryLoop: the device change itself is
// done.
func (k *Bridge) SendForRequest(ctx context.Context, userID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyOutboxRequestTimeout)
	defer cancel()
	k.sendQueued(ctx, userID)
}

// sendQueued sends a user's queued device changes.
func (k *Bridge) sendQueued(ctx context.Context, userID string) {
	if !k.available() {
		return
	}
	if err := k.store.SendKeyServerOps(ctx, userID, func(op store.KeyServerOp) error { return k.send(ctx, op) }); err != nil && ctx.Err() == nil {
		k.log.Warn("device change not sent to the key-server yet; retrying later", logging.UserID(userID), zap.Error(err))
	}
}

// send sends one queued device change. One the key-server refuses as
// malformed is dropped (logged): sending it again would not help, and it
// would hold up the user's later changes.
func (k *Bridge) send(ctx context.Context, op store.KeyServerOp) error {
	var err error
	if op.Delete {
		_, err = k.e2e.DevicesDeleted(ctx, &keyserverv1.DevicesDeletedRequest{UserId: op.UserID, DeviceIds: op.DeviceIDs})
	} else {
		req := &keyserverv1.DeviceRenamedRequest{UserId: op.UserID}
		if len(op.DeviceIDs) > 0 {
			req.DeviceId = op.DeviceIDs[0]
		}
		if op.DisplayName != nil {
			req.DisplayName = *op.DisplayName
		}
		_, err = k.e2e.DeviceRenamed(ctx, req)
	}
	if status.Code(err) == codes.InvalidArgument {
		k.log.Error("the key-server refused a device change; dropped", logging.UserID(op.UserID), zap.Strings("devices", op.DeviceIDs), zap.Error(err))
		return nil
	}
	return err
}

// retryLoop sends what earlier requests could not, until ctx ends.
func (k *Bridge) RetryLoop(ctx context.Context) error {
	if k.e2e == nil {
		return nil
	}
	t := time.NewTicker(keyOutboxInterval)
	defer t.Stop()
	for {
		if k.ready.Load() {
			users, err := k.store.KeyServerUsers(ctx)
			if err != nil && ctx.Err() == nil {
				k.log.Warn("read queued device changes", zap.Error(err))
			}
			for _, u := range users {
				k.sendQueued(ctx, u)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
