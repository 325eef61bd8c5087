package fedreceiver

// EDUs of /send. Each is accepted only from the server of the user it
// concerns (typing, receipts, presence, device lists, signing keys) or of
// its sender (to-device), and room EDUs only from servers the room's ACL
// allows. Ephemeral ones (typing, receipts, presence) are best effort: a
// failure is logged. To-device messages and device list changes must not
// be lost: when they cannot be handed on, the whole transaction fails and
// its sender sends it again (their handling is idempotent).

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	fedreceiverv1 "github.com/myelin-chat/myelin/proto/fedreceiver/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
)

// mSigningKeyUpdate is the cross-signing key EDU.
const mSigningKeyUpdate = "m.signing_key_update"

// processEDU handles one EDU; an error fails the transaction.
func (s *Service) processEDU(ctx context.Context, tc *txnContext, edu gomatrixserverlib.EDU) error {
	log := s.log.With(zap.String("origin", string(tc.origin)), zap.String("edu_type", edu.Type))
	if err := checkNoDuplicateKeys(edu.Content); len(edu.Content) == 0 || err != nil {
		log.Debug("EDU without valid content dropped")
		return nil
	}
	var err error
	switch edu.Type {
	case spec.MTyping:
		err = s.typingEDU(ctx, tc, edu.Content)
	case spec.MReceipt:
		err = s.receiptEDU(ctx, tc, edu.Content)
	case spec.MPresence:
		err = s.presenceEDU(ctx, tc, edu.Content)
	case spec.MDeviceListUpdate:
		return s.deviceListEDU(ctx, tc, edu.Content)
	case mSigningKeyUpdate:
		return s.signingKeyEDU(ctx, tc, edu.Content)
	case spec.MDirectToDevice:
		return s.toDeviceEDU(ctx, tc, edu.Content)
	default:
		log.Debug("EDU of an unknown type dropped")
		return nil
	}
	if err != nil {
		log.Info("EDU dropped", zap.Error(err))
	}
	return nil
}

// fromOrigin: userID is a valid user ID of the origin server.
func fromOrigin(tc *txnContext, userID string) bool {
	u, err := spec.NewUserID(userID, true)
	return err == nil && u.Domain() == tc.origin
}

// mustDeliver turns a failure to hand an EDU on into the transaction's
// failure when a retry may succeed (a peer is down), and drops the EDU
// otherwise (refused as invalid).
func (s *Service) mustDeliver(err error, what string) error {
	if err == nil {
		return nil
	}
	if isPeerDown(err) || status.Code(err) == codes.Internal {
		return fmt.Errorf("%w: %s: %v", errRetryTransaction, what, err)
	}
	s.log.Info("EDU refused", zap.String("what", what), zap.Error(err))
	return nil
}

func (s *Service) typingEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var c struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing bool   `json:"typing"`
	}
	if err := json.Unmarshal(content, &c); err != nil || c.RoomID == "" {
		return fmt.Errorf("malformed m.typing")
	}
	if !fromOrigin(tc, c.UserID) {
		return fmt.Errorf("m.typing for %q, not a user of %s", c.UserID, tc.origin)
	}
	if err := tc.acl.check(ctx, c.RoomID); err != nil {
		return err
	}
	_, err := s.presence.SetTyping(ctx, &presencev1.SetTypingRequest{Origin: string(tc.origin), RoomId: c.RoomID, UserId: c.UserID,
		Typing: c.Typing, TimeoutMs: s.cfg.TypingTimeout.Milliseconds()})
	return err
}

func (s *Service) receiptEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var rooms map[string]map[string]map[string]struct {
		Data struct {
			TS       int64  `json:"ts"`
			ThreadID string `json:"thread_id"`
		} `json:"data"`
		EventIDs []string `json:"event_ids"`
	}
	if err := json.Unmarshal(content, &rooms); err != nil {
		return fmt.Errorf("malformed m.receipt")
	}
	for roomID, types := range rooms {
		if err := tc.acl.check(ctx, roomID); err != nil {
			s.log.Info("receipts of a room dropped", zap.String("room_id", roomID), zap.Error(err))
			continue
		}
		for typ, users := range types {
			if typ != "m.read" {
				continue // only public read receipts federate
			}
			for userID, r := range users {
				if !fromOrigin(tc, userID) {
					continue
				}
				for _, eventID := range r.EventIDs {
					if !validEventID(eventID) {
						continue
					}
					_, err := s.presence.SetReceipt(ctx, &presencev1.SetReceiptRequest{Origin: string(tc.origin), RoomId: roomID,
						UserId: userID, ReceiptType: typ, EventId: eventID, ThreadId: r.Data.ThreadID, Ts: r.Data.TS})
					if err != nil {
						s.log.Info("receipt dropped", zap.String("room_id", roomID), zap.String("user_id", userID), zap.Error(err))
					}
				}
			}
		}
	}
	return nil
}

func (s *Service) presenceEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var c struct {
		Push []struct {
			UserID          string  `json:"user_id"`
			Presence        string  `json:"presence"`
			StatusMsg       *string `json:"status_msg"`
			LastActiveAgo   int64   `json:"last_active_ago"`
			CurrentlyActive bool    `json:"currently_active"`
		} `json:"push"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return fmt.Errorf("malformed m.presence")
	}
	for _, p := range c.Push {
		if !fromOrigin(tc, p.UserID) {
			continue
		}
		_, err := s.presence.SetRemotePresence(ctx, &presencev1.SetRemotePresenceRequest{Origin: string(tc.origin), UserId: p.UserID,
			Presence: p.Presence, StatusMsg: p.StatusMsg, LastActiveAgo: p.LastActiveAgo, CurrentlyActive: p.CurrentlyActive})
		if err != nil {
			s.log.Info("presence dropped", zap.String("user_id", p.UserID), zap.Error(err))
		}
	}
	return nil
}

func (s *Service) deviceListEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var u gomatrixserverlib.DeviceListUpdateEvent
	if err := json.Unmarshal(content, &u); err != nil || u.DeviceID == "" || !fromOrigin(tc, u.UserID) {
		s.log.Info("m.device_list_update dropped: malformed or not of the origin's user", zap.String("origin", string(tc.origin)))
		return nil
	}
	keys := []byte(u.Keys)
	if string(keys) == "null" {
		keys = nil
	}
	resp, err := s.e2e.UpdateRemoteDeviceList(ctx, &keyserverv1.UpdateRemoteDeviceListRequest{Origin: string(tc.origin), UserId: u.UserID,
		DeviceId: u.DeviceID, DisplayName: u.DeviceDisplayName, StreamId: u.StreamID, PrevIds: u.PrevID, Deleted: u.Deleted, Keys: keys})
	if err != nil {
		return s.mustDeliver(err, "m.device_list_update")
	}
	if resp.GetStale() {
		s.resyncDeviceList(ctx, tc.origin, u.UserID)
	}
	return nil
}

// resyncDeviceList replaces a stale list (the update's prev_id was not
// seen, or only this device of the user is known) with the whole list
// from the user's server, GET /user/devices (server-server API, "Device
// Management"). A failure leaves the list stale (QueryRemoteDeviceLists
// lists it for a later resync); the EDU itself was recorded.
func (s *Service) resyncDeviceList(ctx context.Context, origin spec.ServerName, userID string) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.FetchTimeout)
	defer cancel()
	log := s.log.With(zap.String("origin", string(origin)), zap.String("user_id", userID))
	fed, err := s.client.Federation(ctx)
	if err != nil {
		log.Info("device list resync: no federation client", zap.Error(err))
		return
	}
	devs, err := fed.GetUserDevices(ctx, s.server, origin, userID)
	if err != nil || devs.UserID != userID {
		log.Info("device list resync failed; the list stays stale", zap.Error(err), zap.String("answered_for", devs.UserID))
		return
	}
	req := &keyserverv1.SetRemoteDeviceListRequest{UserId: userID, StreamId: devs.StreamID}
	for _, d := range devs.Devices {
		if d.DeviceID == "" {
			continue
		}
		ld := &keyserverv1.ListedDevice{DeviceId: d.DeviceID, DisplayName: d.DisplayName}
		if len(d.Keys.Keys) > 0 {
			if ld.Keys, err = json.Marshal(d.Keys); err != nil {
				return
			}
		}
		req.Devices = append(req.Devices, ld)
	}
	if devs.MasterKey != nil {
		req.MasterKey, _ = json.Marshal(devs.MasterKey)
	}
	if devs.SelfSigningKey != nil {
		req.SelfSigningKey, _ = json.Marshal(devs.SelfSigningKey)
	}
	if _, err := s.e2e.SetRemoteDeviceList(ctx, req); err != nil {
		log.Info("device list resync not stored; the list stays stale", zap.Error(err))
	}
}

func (s *Service) signingKeyEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var c struct {
		UserID         string          `json:"user_id"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(content, &c); err != nil || !fromOrigin(tc, c.UserID) {
		s.log.Info("m.signing_key_update dropped: malformed or not of the origin's user", zap.String("origin", string(tc.origin)))
		return nil
	}
	key := func(raw json.RawMessage) []byte {
		if len(raw) == 0 || string(raw) == "null" {
			return nil
		}
		return raw
	}
	_, err := s.e2e.UpdateRemoteSigningKeys(ctx, &keyserverv1.UpdateRemoteSigningKeysRequest{Origin: string(tc.origin), UserId: c.UserID,
		MasterKey: key(c.MasterKey), SelfSigningKey: key(c.SelfSigningKey)})
	return s.mustDeliver(err, "m.signing_key_update")
}

// maxMessageID is the spec's bound on message_id (32 code points; bytes
// here, generously).
const maxMessageID = 128

func (s *Service) toDeviceEDU(ctx context.Context, tc *txnContext, content []byte) error {
	var m gomatrixserverlib.ToDeviceMessage
	if err := json.Unmarshal(content, &m); err != nil || m.Type == "" || m.MessageID == "" || len(m.MessageID) > maxMessageID ||
		!fromOrigin(tc, m.Sender) {
		s.log.Info("m.direct_to_device dropped: malformed or not from the origin's user", zap.String("origin", string(tc.origin)))
		return nil
	}
	for userID, devices := range m.Messages {
		u, err := spec.NewUserID(userID, true)
		if err != nil || u.Domain() != s.server {
			continue // only this server's users are delivered here
		}
		msg := &fedreceiverv1.InboundToDevice{Origin: string(tc.origin), Sender: m.Sender, Type: m.Type, MessageId: m.MessageID,
			UserId: userID, Messages: map[string][]byte{}}
		for device, body := range devices {
			var obj map[string]json.RawMessage
			if json.Unmarshal(body, &obj) != nil || device == "" {
				continue // content must be an object
			}
			msg.Messages[device] = body
		}
		if len(msg.Messages) == 0 {
			continue
		}
		payload, err := proto.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = s.js.Publish(ctx, bus.ToDeviceInSubject(userID), payload,
			jetstream.WithMsgID(bus.ToDeviceMsgID(string(tc.origin), m.MessageID, userID)))
		if err != nil {
			return fmt.Errorf("%w: publish to-device message: %v", errRetryTransaction, err)
		}
	}
	return nil
}
