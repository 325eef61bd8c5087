// Package consumers holds the client-API's JetStream consumers: the room
// event consumer that writes the read model (the single-writer work of
// the replica holding the consumer lock), the copy of read receipts for
// unread counts, and each replica's wake-up consumers of the ephemeral and
// key change streams.
package consumers

// The key-server publishes every device list and cross-signing change on
// MYELIN_KEY_CHANGES (keyserver.v1.KeyChange). The client-API keeps no
// copy: /sync reads the changes back from the key-server (SyncKeys). The
// messages only wake the long polls of the changed user and of everyone
// sharing a room with them, so a key change reaches waiting clients at
// once. Every replica holds long polls, so each has its own ordered
// consumer starting at new messages (as for MYELIN_EPHEMERAL): waking is
// idempotent, a change delivered twice wakes twice, and old changes need
// no wake after a restart.

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
)

// KeyChanges is this replica's consumer of MYELIN_KEY_CHANGES.
type KeyChanges struct {
	consumer jetstream.Consumer
	notifier *notifier.Notifier
	log      *zap.Logger
}

// NewKeyChanges creates the ordered consumer (new messages only).
func NewKeyChanges(ctx context.Context, js jetstream.JetStream, n *notifier.Notifier, log *zap.Logger) (*KeyChanges, error) {
	cons, err := js.OrderedConsumer(ctx, bus.KeyChangesStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("create ordered consumer on %s: %w", bus.KeyChangesStream, err)
	}
	return &KeyChanges{consumer: cons, notifier: n, log: log}, nil
}

// Run wakes /sync waiters until ctx ends.
func (k *KeyChanges) Run(ctx context.Context) error {
	cc, err := k.consumer.Consume(func(m jetstream.Msg) {
		var c keyserverv1.KeyChange
		if err := proto.Unmarshal(m.Data(), &c); err != nil {
			k.log.Error("dropping undecodable key change", zap.String("subject", m.Subject()), zap.Error(err))
			return
		}
		k.wake(c.GetUserId())
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil {
			k.log.Warn("key change consumer", zap.Error(err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", bus.KeyChangesStream, err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

// wake wakes the long polls of userID and of everyone sharing a room with
// them, on this replica.
func (k *KeyChanges) wake(userID string) {
	users := k.notifier.Sharers(userID)
	users[userID] = struct{}{}
	for u := range users {
		k.notifier.Wake(u)
	}
}
