package fedsender

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// EDUs. Only this server's users' EDUs leave it, each for the servers
// that need it: typing and receipts for the servers in the room, presence,
// device list and cross-signing updates for the servers sharing a room
// with the user, to-device messages for the recipients' server. A newer
// typing notice, receipt (per user and thread), presence or cross-signing
// update replaces one of the same key still waiting for the destination.

// EDU types (the spec's edu_type values).
const (
	eduTyping         = "m.typing"
	eduReceipt        = "m.receipt"
	eduPresence       = "m.presence"
	eduDeviceList     = "m.device_list_update"
	eduSigningKey     = "m.signing_key_update"
	eduDirectToDevice = "m.direct_to_device"
)

// applyEphemeral queues the EDUs of one MYELIN_EPHEMERAL message.
func (s *Service) applyEphemeral(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	switch bus.EphemeralKind(m.Subject()) {
	case bus.KindTyping:
		var u presencev1.TypingUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		return s.queueTyping(ctx, tx, &u)
	case bus.KindReceipts:
		var u presencev1.ReceiptUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		return s.queueReceipt(ctx, tx, &u)
	case bus.KindStatus:
		var u presencev1.PresenceUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		return s.queuePresence(ctx, tx, &u)
	}
	return nil, nil
}

func (s *Service) undecodable(m jetstream.Msg, err error) ([]string, error) {
	s.log.Error("dropping an undecodable message", zap.String("subject", m.Subject()), zap.Error(err))
	return nil, nil
}

// queueTyping turns a room's full typing list into m.typing EDUs for the
// local users who started or stopped typing.
func (s *Service) queueTyping(ctx context.Context, tx *store.Tx, u *presencev1.TypingUpdate) ([]string, error) {
	var local []string
	for _, user := range u.GetUserIds() {
		if s.isLocal(user) {
			local = append(local, user)
		}
	}
	started, stopped, err := tx.TypingChange(ctx, u.GetRoomId(), local)
	if err != nil || len(started)+len(stopped) == 0 {
		return nil, err
	}
	servers, err := tx.JoinedServers(ctx, u.GetRoomId())
	if err != nil {
		return nil, err
	}
	dests := s.others(servers)
	for _, change := range []struct {
		users  []string
		typing bool
	}{{started, true}, {stopped, false}} {
		for _, user := range change.users {
			content, _ := json.Marshal(map[string]any{"room_id": u.GetRoomId(), "user_id": user, "typing": change.typing})
			key := store.EDUKey{Key: "typing\x1f" + u.GetRoomId() + "\x1f" + user, Replace: true}
			if err := tx.EnqueueEDU(ctx, dests, eduTyping, key, content); err != nil {
				return nil, err
			}
		}
	}
	return dests, nil
}

// queueReceipt queues a local user's public read receipt for the servers
// in the room (private receipts and read markers stay here).
func (s *Service) queueReceipt(ctx context.Context, tx *store.Tx, u *presencev1.ReceiptUpdate) ([]string, error) {
	r := u.GetReceipt()
	if u.GetPrivate() || r.GetReceiptType() != "m.read" || !s.isLocal(r.GetUserId()) || r.GetEventId() == "" {
		return nil, nil
	}
	servers, err := tx.JoinedServers(ctx, u.GetRoomId())
	if err != nil {
		return nil, err
	}
	dests := s.others(servers)
	if len(dests) == 0 {
		return nil, nil
	}
	data := map[string]any{"ts": r.GetTs()}
	if r.GetThreadId() != "" {
		data["thread_id"] = r.GetThreadId()
	}
	content, _ := json.Marshal(map[string]any{u.GetRoomId(): map[string]any{"m.read": map[string]any{
		r.GetUserId(): map[string]any{"event_ids": []string{r.GetEventId()}, "data": data},
	}}})
	key := store.EDUKey{Key: "receipt\x1f" + u.GetRoomId() + "\x1f" + r.GetUserId() + "\x1f" + r.GetThreadId(), Replace: true}
	return dests, tx.EnqueueEDU(ctx, dests, eduReceipt, key, content)
}

// queuePresence queues a local user's presence for the servers sharing a
// room with them, or, when the update announces the user's join of a
// room, for that room's servers (which newly share a room with the user).
func (s *Service) queuePresence(ctx context.Context, tx *store.Tx, u *presencev1.PresenceUpdate) ([]string, error) {
	p := u.GetPresence()
	if !s.isLocal(p.GetUserId()) {
		return nil, nil
	}
	var servers []string
	var err error
	if u.GetJoinedRoomId() != "" {
		servers, err = tx.JoinedServers(ctx, u.GetJoinedRoomId())
	} else {
		servers, err = tx.ServersSharingRoom(ctx, p.GetUserId())
	}
	if err != nil {
		return nil, err
	}
	dests := s.others(servers)
	if len(dests) == 0 {
		return nil, nil
	}
	push := map[string]any{"user_id": p.GetUserId(), "presence": p.GetPresence(), "currently_active": p.GetCurrentlyActive()}
	if p.LastActiveAgo != nil {
		push["last_active_ago"] = p.GetLastActiveAgo()
	}
	if p.StatusMsg != nil {
		push["status_msg"] = p.GetStatusMsg()
	}
	content, _ := json.Marshal(map[string]any{"push": []any{push}})
	key := store.EDUKey{Key: "presence\x1f" + p.GetUserId(), Replace: true}
	return dests, tx.EnqueueEDU(ctx, dests, eduPresence, key, content)
}

// applyKeyChange queues a local user's device list or cross-signing
// change for the servers sharing a room with them.
func (s *Service) applyKeyChange(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var c keyserverv1.KeyChange
	if err := proto.Unmarshal(m.Data(), &c); err != nil {
		return s.undecodable(m, err)
	}
	if !s.isLocal(c.GetUserId()) {
		return nil, nil
	}
	servers, err := tx.ServersSharingRoom(ctx, c.GetUserId())
	if err != nil {
		return nil, err
	}
	dests := s.others(servers)
	if len(dests) == 0 {
		return nil, nil
	}
	switch c.GetKind() {
	case keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_DEVICE:
		content := map[string]any{"user_id": c.GetUserId(), "device_id": c.GetDeviceId(), "stream_id": c.GetPosition()}
		if len(c.GetPrevPositions()) > 0 {
			content["prev_id"] = c.GetPrevPositions()
		}
		if c.GetDeviceDisplayName() != "" {
			content["device_display_name"] = c.GetDeviceDisplayName()
		}
		if c.GetDeleted() {
			content["deleted"] = true
		} else if json.Valid(c.GetDeviceKeys()) && len(c.GetDeviceKeys()) > 0 {
			content["keys"] = json.RawMessage(c.GetDeviceKeys())
		}
		raw, _ := json.Marshal(content)
		return dests, tx.EnqueueEDU(ctx, dests, eduDeviceList, store.EDUKey{}, raw)
	case keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_SIGNING_KEYS:
		content := map[string]any{"user_id": c.GetUserId()}
		if json.Valid(c.GetMasterKey()) && len(c.GetMasterKey()) > 0 {
			content["master_key"] = json.RawMessage(c.GetMasterKey())
		}
		if json.Valid(c.GetSelfSigningKey()) && len(c.GetSelfSigningKey()) > 0 {
			content["self_signing_key"] = json.RawMessage(c.GetSelfSigningKey())
		}
		raw, _ := json.Marshal(content)
		key := store.EDUKey{Key: "signing\x1f" + c.GetUserId(), Replace: true}
		return dests, tx.EnqueueEDU(ctx, dests, eduSigningKey, key, raw)
	}
	return nil, nil
}

// applyToDevice queues one request's send-to-device messages for their
// server. The message ID makes a repeat of a waiting message a no-op (and
// the remote drops repeats of one it has).
func (s *Service) applyToDevice(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var t clientapiv1.ToDeviceOut
	if err := proto.Unmarshal(m.Data(), &t); err != nil {
		return s.undecodable(m, err)
	}
	var messages map[string]map[string]json.RawMessage
	if t.GetDestination() == "" || t.GetDestination() == string(s.serverName) || !s.isLocal(t.GetSender()) ||
		t.GetMessageId() == "" || json.Unmarshal(t.GetMessages(), &messages) != nil || len(messages) == 0 {
		s.log.Warn("dropping a malformed send-to-device message", zap.String("destination", t.GetDestination()),
			zap.String("message_id", t.GetMessageId()))
		return nil, nil
	}
	content, _ := json.Marshal(map[string]any{"sender": t.GetSender(), "type": t.GetType(), "message_id": t.GetMessageId(),
		"messages": json.RawMessage(t.GetMessages())})
	dests := []string{t.GetDestination()}
	return dests, tx.EnqueueEDU(ctx, dests, eduDirectToDevice, store.EDUKey{Key: "todevice\x1f" + t.GetMessageId()}, content)
}
