// Package astodevice is a producer: it publishes the to-device messages
// for users that application services with receive_ephemeral are
// interested in on MYELIN_APPSERVICE_TO_DEVICE, for the appservice
// service (MSC2409's to-device part). The sendToDevice endpoint and the
// consumer of other servers' to-device messages call it before they store
// the messages for /sync, so a failure fails the request (or redelivers
// the EDU) and the repeat publishes the same message IDs, which JetStream
// drops.
package astodevice

import (
	"context"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/bus"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Devices lists a local user's devices (store.Store.DeviceIDs).
type Devices func(ctx context.Context, userID string) ([]string, error)

// Publisher publishes appservice users' to-device messages.
type Publisher struct {
	js      jetstream.JetStream
	regs    *appservice.Set
	devices Devices
	log     *zap.Logger
}

// New returns the publisher; with no registration that takes ephemeral
// data, Publish does nothing.
func New(js jetstream.JetStream, regs *appservice.Set, devices Devices, log *zap.Logger) *Publisher {
	return &Publisher{js: js, regs: regs, devices: devices, log: log}
}

// wanted reports whether an appservice that pushes ephemeral data is
// interested in the user (its sender or a user of its users namespaces).
func (p *Publisher) wanted(userID string) bool {
	if p == nil || p.regs == nil {
		return false
	}
	for _, r := range p.regs.List() {
		if r.HasURL() && r.WantsEphemeral() && r.IsInterestedInUser(userID) {
			return true
		}
	}
	return false
}

// Publish publishes, for each recipient an appservice wants, one send's
// messages for local users (all of one sender and type). key names the
// send (same for a repeat). "*" becomes each of the user's devices and a
// device the user does not have is left out, as the /sync queue does
// (store.SendToDevice); the devices are read just before, so a device
// made or deleted in between may differ from /sync's copy.
func (p *Publisher) Publish(ctx context.Context, key string, msgs []store.ToDeviceMessage) error {
	byUser := map[string][]store.ToDeviceMessage{}
	var order []string
	for _, m := range msgs {
		if !p.wanted(m.UserID) {
			continue
		}
		if byUser[m.UserID] == nil {
			order = append(order, m.UserID)
		}
		byUser[m.UserID] = append(byUser[m.UserID], m)
	}
	for _, user := range order {
		devices, err := p.devices(ctx, user)
		if err != nil {
			return fmt.Errorf("devices of %s: %w", user, err)
		}
		if len(devices) == 0 {
			continue
		}
		out := &clientapiv1.AppserviceToDevice{UserId: user}
		for _, m := range byUser[user] {
			out.Sender, out.Type = m.Sender, m.Type
			for _, d := range devices {
				if m.DeviceID == "*" || m.DeviceID == d {
					out.Messages = append(out.Messages, &clientapiv1.DeviceToDevice{DeviceId: d, Content: m.Content})
				}
			}
		}
		if len(out.Messages) == 0 {
			continue
		}
		slices.SortStableFunc(out.Messages, func(a, b *clientapiv1.DeviceToDevice) int {
			switch {
			case a.DeviceId < b.DeviceId:
				return -1
			case a.DeviceId > b.DeviceId:
				return 1
			}
			return 0
		})
		data, err := proto.Marshal(out)
		if err != nil {
			return err
		}
		msgID := bus.AppserviceToDeviceMsgID(key, user)
		if _, err := p.js.Publish(ctx, bus.AppserviceToDeviceSubject(user), data, jetstream.WithMsgID(msgID)); err != nil {
			return fmt.Errorf("publish to-device messages for the appservices of %s: %w", user, err)
		}
		p.log.Debug("to-device messages for an appservice user published", zap.String("user_id", user),
			zap.String("type", out.Type), zap.Int("devices", len(out.Messages)))
	}
	return nil
}
