package syncapi

import (
	"context"
	"encoding/json"
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/clientevent"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Send-to-device messaging: PUT /sendToDevice stores a message per target
// device (to_device_messages); /sync delivers a device's messages in
// to_device.events and deletes them when the next /sync's since token
// (component "_d<pos>") shows the client has them. Messages to users of
// other servers go to the federation sender (internal/todeviceout).

// toDeviceSyncLimit caps the messages in one /sync response (the spec
// recommends 100).
const toDeviceSyncLimit = 100

// sendToDevice is PUT /sendToDevice/{eventType}/{txnId}.
func (s *Service) sendToDevice(r *http.Request, dev *httpapi.Device) (any, error) {
	evType, err := httpapi.PathParam(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := httpapi.PathParam(r, "txnId")
	if err != nil {
		return nil, err
	}
	if evType == "" || len(evType) > 255 || txnID == "" {
		return nil, matrixhttp.InvalidParam("Invalid event type or transaction ID")
	}
	body, err := httpapi.ReadObject(r, httpapi.BodyRequired)
	if err != nil {
		return nil, err
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := httpapi.DecodeObject(body, &req); err != nil {
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
			if !clientevent.IsObject(content) {
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
	if err := s.toDeviceOut.Publish(r.Context(), dev.UserID, dev.DeviceID, txnID, evType, remote); err != nil {
		return nil, err
	}
	// Then the copy for appservices (MSC2409), before storing for the same
	// reason.
	if s.asToDevice != nil {
		if err := s.asToDevice.Publish(r.Context(), "local\x00"+dev.UserID+"\x00"+dev.DeviceID+"\x00"+txnID, msgs); err != nil {
			return nil, err
		}
	}
	users, _, err := s.store.SendToDevice(r.Context(), dev.UserID, dev.DeviceID, txnID, msgs)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		s.wakeBus.AnnounceWake(u)
	}
	return struct{}{}, nil
}

// syncToDevice acknowledges the messages the since token covers, adds the
// device's next ones to the response and returns the position for
// next_batch. read is what readSync read of them, after since.
func (s *Service) syncToDevice(ctx context.Context, dev *httpapi.Device, since int64, resp *syncResponse, read *store.ToDeviceRead) (int64, error) {
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
