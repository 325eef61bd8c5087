package consumers

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
)

// The presence service publishes every typing, receipt and presence change
// on MYELIN_EPHEMERAL. The client-API does not store them: the data is
// read back over gRPC (SyncEphemeral) when /sync builds a response. The
// messages only wake the long-polling /sync requests they concern, so a
// typing notification reaches a waiting client at once, not on a timer.
// Every client-API replica needs every change (any of them may hold the
// long poll a change concerns), so each has its own ordered consumer, not
// a shared durable one. It starts at new messages: waking is idempotent
// and old wake-ups are worthless, also after a restart.

// Ephemeral is this replica's consumer of MYELIN_EPHEMERAL.
type Ephemeral struct {
	consumer jetstream.Consumer
	notifier *notifier.Notifier
	log      *zap.Logger
}

// NewEphemeral creates the ordered consumer (new messages only).
func NewEphemeral(ctx context.Context, js jetstream.JetStream, n *notifier.Notifier, log *zap.Logger) (*Ephemeral, error) {
	cons, err := js.OrderedConsumer(ctx, bus.EphemeralStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("create ordered consumer on %s: %w", bus.EphemeralStream, err)
	}
	return &Ephemeral{consumer: cons, notifier: n, log: log}, nil
}

// Run wakes /sync waiters until ctx ends.
func (s *Ephemeral) Run(ctx context.Context) error {
	cc, err := s.consumer.Consume(func(m jetstream.Msg) {
		s.wakeForEphemeral(m.Subject(), m.Data())
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil {
			s.log.Warn("ephemeral consumer", zap.Error(err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", bus.EphemeralStream, err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

// wakeForEphemeral decodes one change notification and wakes the users it
// concerns: a room's members for typing and public receipts, the owner for
// private receipts, everyone sharing a room for presence.
func (s *Ephemeral) wakeForEphemeral(subject string, data []byte) {
	var err error
	switch bus.EphemeralKind(subject) {
	case bus.KindTyping:
		var u presencev1.TypingUpdate
		if err = proto.Unmarshal(data, &u); err == nil {
			s.notifier.EphemeralRoom(u.GetRoomId(), u.GetPosition())
		}
	case bus.KindReceipts:
		var u presencev1.ReceiptUpdate
		if err = proto.Unmarshal(data, &u); err == nil {
			if u.GetPrivate() {
				s.notifier.EphemeralUser(u.GetReceipt().GetUserId(), u.GetPosition())
			} else {
				s.notifier.EphemeralRoom(u.GetRoomId(), u.GetPosition())
			}
		}
	case bus.KindStatus:
		var u presencev1.PresenceUpdate
		if err = proto.Unmarshal(data, &u); err != nil {
			break
		}
		if room := u.GetJoinedRoomId(); room != "" {
			// A join: the joiner and the room's members newly share it.
			s.notifier.EphemeralJoin(room, u.GetPresence().GetUserId(), u.GetPosition())
		} else {
			s.notifier.EphemeralSharing(u.GetPresence().GetUserId(), u.GetPosition())
		}
	}
	if err != nil {
		s.log.Error("dropping undecodable ephemeral change", zap.String("subject", subject), zap.Error(err))
	}
}
