package consumers

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/wakebus"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Unread counts: notifications are stored by the room event consumer
// (push.Evaluate). A
// notification is read when a receipt of its user covers it: an m.read or
// m.read.private receipt (the newest of the two wins, per position of the
// event they point at), unthreaded for the whole room or threaded for its
// thread, or the user's own later event in the thread. Receipts belong to
// the presence service; the client-API keeps a copy of local users'
// receipts (push_receipts) from a durable consumer of its receipt changes.
// A receipt whose event the client-API has not stored yet counts once the
// event arrives, so receipts and events may arrive in either order.

// Receipts is the durable consumer of the presence service's receipt
// changes that copies local users' receipts into push_receipts.
type Receipts struct {
	consumer   jetstream.Consumer
	store      *store.Store
	wakeBus    *wakebus.Bus
	serverName string
	log        *zap.Logger
}

// NewReceipts creates (or finds) the durable consumer name.
func NewReceipts(ctx context.Context, js jetstream.JetStream, name, serverName string, st *store.Store, wake *wakebus.Bus, log *zap.Logger) (*Receipts, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, bus.EphemeralStream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "client-API copy of read receipts for unread counts",
		FilterSubject: bus.ReceiptsAllSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", name, bus.EphemeralStream, err)
	}
	return &Receipts{consumer: cons, store: st, wakeBus: wake, serverName: serverName, log: log}, nil
}

// Run copies receipts until ctx ends; each is acked after it is stored (a
// failure is redelivered).
func (s *Receipts) Run(ctx context.Context) error {
	return consumeEach(ctx, s.consumer, "copy receipt", s.log, s.copyReceipt)
}

func (s *Receipts) copyReceipt(ctx context.Context, data []byte) error {
	var u presencev1.ReceiptUpdate
	if err := proto.Unmarshal(data, &u); err != nil {
		s.log.Error("dropping undecodable receipt change", zap.Error(err))
		return nil
	}
	rc := u.GetReceipt()
	typ := rc.GetReceiptType()
	if (typ != "m.read" && typ != "m.read.private") || !strings.HasSuffix(rc.GetUserId(), ":"+s.serverName) || rc.GetEventId() == "" {
		return nil
	}
	changed, err := s.store.PutPushReceipt(ctx, store.PushReceipt{
		UserID: rc.GetUserId(), RoomID: u.GetRoomId(), ThreadID: rc.GetThreadId(), Type: typ,
		EventID: rc.GetEventId(), EPos: u.GetPosition(),
	})
	if err != nil {
		return err
	}
	if changed {
		s.wakeBus.AnnounceWake(rc.GetUserId())
	}
	return nil
}
