// Package todeviceout is a producer: it publishes send-to-device messages
// for users of other servers on MYELIN_TO_DEVICE_OUT, for the federation
// sender.
package todeviceout

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
)

// Publisher publishes remote users' send-to-device messages.
type Publisher struct {
	js  jetstream.JetStream
	log *zap.Logger
}

// New returns the publisher on js.
func New(js jetstream.JetStream, log *zap.Logger) *Publisher {
	return &Publisher{js: js, log: log}
}

// Publish publishes a /sendToDevice request's messages for users of other
// servers (server → user → device → content), one ToDeviceOut per
// destination. The message IDs come from the sender, device and
// transaction ID, so a retried request's are dropped by JetStream.
func (p *Publisher) Publish(ctx context.Context, sender, deviceID, txnID, evType string, remote map[string]map[string]map[string]json.RawMessage) error {
	for server, messages := range remote {
		raw, err := json.Marshal(messages)
		if err != nil {
			return err
		}
		msgID := toDeviceMessageID(sender, deviceID, txnID, server)
		data, err := proto.Marshal(&clientapiv1.ToDeviceOut{
			MessageId: msgID, Sender: sender, Type: evType, Destination: server, Messages: raw,
		})
		if err != nil {
			return err
		}
		if _, err := p.js.Publish(ctx, bus.ToDeviceOutSubject(server), data, jetstream.WithMsgID(msgID)); err != nil {
			return fmt.Errorf("publish send-to-device messages for %s: %w", server, err)
		}
		p.log.Debug("send-to-device messages for a remote server published", zap.String("type", evType),
			zap.String("destination", server), zap.String("message_id", msgID))
	}
	return nil
}

// toDeviceMessageID is the m.direct_to_device message_id of one request's
// messages for one server: at most 32 characters (the spec's limit), the
// same for a retried request.
func toDeviceMessageID(user, device, txnID, server string) string {
	sum := sha256.Sum256([]byte(user + "\x00" + device + "\x00" + txnID + "\x00" + server))
	return base64.RawURLEncoding.EncodeToString(sum[:])[:32]
}
