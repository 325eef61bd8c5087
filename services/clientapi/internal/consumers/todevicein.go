package consumers

// Send-to-device messages from other servers: the federation-receiver
// publishes each m.direct_to_device EDU's messages for one local user on
// MYELIN_TO_DEVICE_IN (fedreceiver.v1.InboundToDevice). This durable
// consumer stores them in the recipient's to-device queue, where /sync
// reads them as it reads local ones, and wakes the recipient's long polls.
// Every replica runs it (a shared durable pull consumer hands each message
// to one of them). Storing is idempotent: the messages of one EDU for one
// user are stored once per (sender, origin, message_id), as a local
// client's request is once per transaction ID, so a redelivered message
// (or the same EDU received again) stores nothing. The messages for users
// that appservices take to-device messages for are first published for
// the appservice service (internal/astodevice), under an ID the repeat
// shares.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	fedreceiverv1 "github.com/myelin-chat/myelin/proto/fedreceiver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/wakebus"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// ToDeviceIn is the durable consumer of MYELIN_TO_DEVICE_IN.
type ToDeviceIn struct {
	consumer   jetstream.Consumer
	asToDevice AppserviceToDevice
	store      *store.Store
	wakeBus    *wakebus.Bus
	serverName string
	log        *zap.Logger
}

// AppserviceToDevice takes the messages for users an application service
// takes to-device messages for (astodevice.Publisher); key names the send.
type AppserviceToDevice interface {
	Publish(ctx context.Context, key string, msgs []store.ToDeviceMessage) error
}

// NewToDeviceIn creates (or finds) the durable consumer name. asToDevice
// may be nil (no appservice takes to-device messages).
func NewToDeviceIn(ctx context.Context, js jetstream.JetStream, name, serverName string, st *store.Store, wake *wakebus.Bus,
	asToDevice AppserviceToDevice, log *zap.Logger) (*ToDeviceIn, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, bus.ToDeviceInStream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "client-API: to-device messages from other servers into the recipients' queues",
		FilterSubject: bus.ToDeviceInAllSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", name, bus.ToDeviceInStream, err)
	}
	return &ToDeviceIn{consumer: cons, asToDevice: asToDevice, store: st, wakeBus: wake, serverName: serverName, log: log}, nil
}

// Run stores messages until ctx ends; each is acked after it is stored (a
// failure is redelivered).
func (c *ToDeviceIn) Run(ctx context.Context) error {
	return consumeEach(ctx, c.consumer, "store inbound to-device message", c.log, c.store1)
}

// inboundTxn is the transaction an inbound EDU's messages are stored
// under: the sending "device" is the origin server, the transaction a hash
// of its message ID (an arbitrary string) and the recipient (an EDU names
// many recipients; each is one message on the stream).
func inboundTxn(origin, messageID, recipient string) (device, txnID string) {
	return "federation:" + origin, bus.ToDeviceMsgID(origin, messageID, recipient)
}

func (c *ToDeviceIn) store1(ctx context.Context, data []byte) error {
	var in fedreceiverv1.InboundToDevice
	if err := proto.Unmarshal(data, &in); err != nil {
		c.log.Error("dropping undecodable inbound to-device message", zap.Error(err))
		return nil
	}
	user := in.GetUserId()
	if !strings.HasSuffix(user, ":"+c.serverName) || in.GetSender() == "" || in.GetType() == "" {
		c.log.Warn("dropping an inbound to-device message not for a user of this server", zap.String("user_id", user),
			zap.String("origin", in.GetOrigin()))
		return nil
	}
	msgs := make([]store.ToDeviceMessage, 0, len(in.GetMessages()))
	for device, content := range in.GetMessages() {
		msgs = append(msgs, store.ToDeviceMessage{UserID: user, DeviceID: device, Sender: in.GetSender(), Type: in.GetType(), Content: content})
	}
	slices.SortFunc(msgs, func(a, b store.ToDeviceMessage) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	device, txn := inboundTxn(in.GetOrigin(), in.GetMessageId(), user)
	// The appservices' copy first: a failure redelivers the message, and
	// the repeat's publication is dropped as a duplicate.
	if c.asToDevice != nil {
		if err := c.asToDevice.Publish(ctx, "federation\x00"+device+"\x00"+txn, msgs); err != nil {
			return err
		}
	}
	users, _, err := c.store.SendToDevice(ctx, in.GetSender(), device, txn, msgs)
	if err != nil {
		return err
	}
	for _, u := range users {
		c.wakeBus.AnnounceWake(u)
	}
	return nil
}
