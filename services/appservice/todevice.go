package appservice

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// To-device messages (MSC2409): the client-API publishes each send's
// messages for a user that an appservice with receive_ephemeral is
// interested in (its sender or a user of its users namespaces, exclusive
// or not, as for the other ephemeral data) on MYELIN_APPSERVICE_TO_DEVICE,
// "*" already expanded to the user's devices. Each device's message is
// one queue item, in the transaction's de.sorunome.msc2409.to_device with
// to_user_id and to_device_id. There is no separate registration flag:
// like Synapse, receive_ephemeral (or the MSC's push_ephemeral) turns
// them on, and mautrix-go reads them only then.

// applyToDevice queues one MYELIN_APPSERVICE_TO_DEVICE message for the
// appservices interested in its recipient.
func (s *Service) applyToDevice(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var in clientapiv1.AppserviceToDevice
	if err := proto.Unmarshal(m.Data(), &in); err != nil {
		return s.undecodable(m, err)
	}
	var ids []string
	for _, r := range s.regs.List() {
		if r.HasURL() && r.WantsEphemeral() && r.IsInterestedInUser(in.GetUserId()) {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) == 0 || in.GetSender() == "" || in.GetType() == "" {
		return nil, nil
	}
	for _, d := range in.GetMessages() {
		content := json.RawMessage(d.GetContent())
		if d.GetDeviceId() == "" || !json.Valid(content) {
			s.log.Warn("dropping a to-device message without a device or valid content")
			continue
		}
		body, err := json.Marshal(struct {
			Type       string          `json:"type"`
			Sender     string          `json:"sender"`
			ToUserID   string          `json:"to_user_id"`
			ToDeviceID string          `json:"to_device_id"`
			Content    json.RawMessage `json:"content"`
		}{in.GetType(), in.GetSender(), in.GetUserId(), d.GetDeviceId(), content})
		if err != nil {
			return nil, err
		}
		if err := tx.Enqueue(ctx, ids, store.KindToDevice, body); err != nil {
			return nil, err
		}
	}
	return ids, nil
}
