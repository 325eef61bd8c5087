package clientapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Send-to-device messaging: PUT /sendToDevice stores a message per target
// device (to_device_messages); /sync delivers a device's messages in
// to_device.events and deletes them when the next /sync's since token
// (component "_d<pos>") shows the client has them. Messages to users of
// other servers are dropped with a log line until federation exists.

// toDeviceSyncLimit caps the messages in one /sync response (the spec
// recommends 100).
const toDeviceSyncLimit = 100

// sendToDevice is PUT /sendToDevice/{eventType}/{txnId}.
func (s *Service) sendToDevice(r *http.Request, dev *device) (any, error) {
	evType, err := pathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		return nil, err
	}
	if evType == "" || len(evType) > 255 || txnID == "" {
		return nil, matrixhttp.InvalidParam("Invalid event type or transaction ID")
	}
	body, err := readObject(r, bodyRequired)
	if err != nil {
		return nil, err
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := decodeObject(body, &req); err != nil {
		return nil, err
	}
	if req.Messages == nil {
		return nil, matrixhttp.BadJSON("messages is required")
	}
	var msgs []store.ToDeviceMessage
	remote := map[string]map[string]map[string]json.RawMessage{}
	for user, devices := range req.Messages {
		_, server, err := id.UserID(user).ParseAndValidateRelaxed()
		if err != nil {
			return nil, matrixhttp.InvalidParam("Invalid user ID " + user)
		}
		for deviceID, content := range devices {
			if !isObject(content) {
				return nil, matrixhttp.BadJSON("Message content must be a JSON object")
			}
			if server != s.serverName {
				if remote[server] == nil {
					remote[server] = map[string]map[string]json.RawMessage{}
				}
				if remote[server][user] == nil {
					remote[server][user] = map[string]json.RawMessage{}
				}
				remote[server][user][deviceID] = content
				continue
			}
			msgs = append(msgs, store.ToDeviceMessage{
				UserID: user, DeviceID: deviceID, Sender: dev.UserID, Type: evType, Content: content,
			})
		}
	}
	// Remote users' messages first: a failure here fails the request, and
	// the client's retry (same transaction ID) publishes the same message
	// IDs, which JetStream drops as duplicates.
	if err := s.publishToDeviceOut(r.Context(), dev, txnID, evType, remote); err != nil {
		return nil, err
	}
	users, _, err := s.store.SendToDevice(r.Context(), dev.UserID, dev.DeviceID, txnID, msgs)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		s.announceWake(u)
	}
	return struct{}{}, nil
}

// publishToDeviceOut publishes the messages for users of other servers,
// one ToDeviceOut per destination, for the federation sender.
func (s *Service) publishToDeviceOut(ctx context.Context, dev *device, txnID, evType string, remote map[string]map[string]map[string]json.RawMessage) error {
	for server, messages := range remote {
		raw, err := json.Marshal(messages)
		if err != nil {
			return err
		}
		msgID := toDeviceMessageID(dev.UserID, dev.DeviceID, txnID, server)
		data, err := proto.Marshal(&clientapiv1.ToDeviceOut{
			MessageId: msgID, Sender: dev.UserID, Type: evType, Destination: server, Messages: raw,
		})
		if err != nil {
			return err
		}
		if _, err := s.js.Publish(ctx, bus.ToDeviceOutSubject(server), data, jetstream.WithMsgID(msgID)); err != nil {
			return fmt.Errorf("publish send-to-device messages for %s: %w", server, err)
		}
		s.log.Debug("send-to-device messages for a remote server published", zap.String("type", evType),
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

// syncToDevice acknowledges the messages the since token covers, adds the
// device's next ones to the response and returns the position for
// next_batch. read is what readSync read of them, after since.
func (s *Service) syncToDevice(ctx context.Context, dev *device, since int64, resp *syncResponse, read *store.ToDeviceRead) (int64, error) {
	if read.Delivered {
		if err := s.store.AckToDevice(ctx, dev.UserID, dev.DeviceID, since); err != nil {
			return 0, err
		}
	}
	pos := since
	for _, m := range read.Pending {
		raw, err := json.Marshal(struct {
			Content json.RawMessage `json:"content"`
			Sender  string          `json:"sender"`
			Type    string          `json:"type"`
		}{m.Content, m.Sender, m.Type})
		if err != nil {
			return 0, err
		}
		resp.ToDevice.Events = append(resp.ToDevice.Events, raw)
		pos = m.Pos
	}
	return pos, nil
}
