package appservice

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// Ephemeral data (spec v1.13, "Pushing ephemeral data"), for appservices
// with receive_ephemeral: m.typing and m.receipt under the same rules as
// the room's events (with room_id at the top level), except private
// receipts, which go only to appservices whose namespaces hold their
// owner; m.presence when the user is in the appservice's namespaces or
// shares a room it is interested in.

// applyEphemeral queues one MYELIN_EPHEMERAL message for the interested
// appservices.
func (s *Service) applyEphemeral(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error) {
	var wanting []*asreg.Registration
	for _, r := range s.regs.List() {
		if r.HasURL() && r.WantsEphemeral() {
			wanting = append(wanting, r)
		}
	}
	if len(wanting) == 0 {
		return nil, nil
	}
	switch bus.EphemeralKind(m.Subject()) {
	case bus.KindTyping:
		var u presencev1.TypingUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		users := u.GetUserIds()
		if users == nil {
			users = []string{}
		}
		body, _ := json.Marshal(map[string]any{"type": "m.typing", "room_id": u.GetRoomId(),
			"content": map[string]any{"user_ids": users}})
		return s.queueForRoom(ctx, tx, wanting, u.GetRoomId(), body, nil)
	case bus.KindReceipts:
		var u presencev1.ReceiptUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		r := u.GetReceipt()
		if r.GetEventId() == "" || r.GetReceiptType() == "m.fully_read" {
			return nil, nil
		}
		data := map[string]any{"ts": r.GetTs()}
		if r.GetThreadId() != "" {
			data["thread_id"] = r.GetThreadId()
		}
		body, _ := json.Marshal(map[string]any{"type": "m.receipt", "room_id": u.GetRoomId(),
			"content": map[string]any{r.GetEventId(): map[string]any{r.GetReceiptType(): map[string]any{r.GetUserId(): data}}}})
		var only func(*asreg.Registration) bool
		if u.GetPrivate() {
			only = func(reg *asreg.Registration) bool { return reg.IsInterestedInUser(r.GetUserId()) }
		}
		return s.queueForRoom(ctx, tx, wanting, u.GetRoomId(), body, only)
	case bus.KindStatus:
		var u presencev1.PresenceUpdate
		if err := proto.Unmarshal(m.Data(), &u); err != nil {
			return s.undecodable(m, err)
		}
		return s.queuePresence(ctx, tx, wanting, u.GetPresence())
	}
	return nil, nil
}

func (s *Service) undecodable(m jetstream.Msg, err error) ([]string, error) {
	s.log.Error("dropping an undecodable message", zap.String("subject", m.Subject()), zap.Error(err))
	return nil, nil
}

// queueForRoom queues body for the appservices interested in the room
// (and, when only is set, passing it instead).
func (s *Service) queueForRoom(ctx context.Context, tx *store.Tx, regs []*asreg.Registration, roomID string,
	body []byte, only func(*asreg.Registration) bool) ([]string, error) {
	room, err := tx.Room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, r := range regs {
		if only != nil && !only(r) {
			continue
		}
		if only != nil || roomInterest(r, roomID, room) {
			ids = append(ids, r.ID)
		}
	}
	return ids, tx.Enqueue(ctx, ids, store.KindEphemeral, body)
}

func (s *Service) queuePresence(ctx context.Context, tx *store.Tx, regs []*asreg.Registration, p *presencev1.Presence) ([]string, error) {
	user := p.GetUserId()
	content := map[string]any{"presence": p.GetPresence(), "currently_active": p.GetCurrentlyActive()}
	if p.LastActiveAgo != nil {
		content["last_active_ago"] = p.GetLastActiveAgo()
	}
	if p.StatusMsg != nil {
		content["status_msg"] = p.GetStatusMsg()
	}
	body, _ := json.Marshal(map[string]any{"type": "m.presence", "sender": user, "content": content})
	var ids []string
	var rooms []string
	loaded := false
	for _, r := range regs {
		if r.IsInterestedInUser(user) {
			ids = append(ids, r.ID)
			continue
		}
		if !loaded {
			var err error
			if rooms, err = tx.RoomsOf(ctx, user); err != nil {
				return nil, err
			}
			loaded = true
		}
		for _, roomID := range rooms {
			room, err := tx.Room(ctx, roomID)
			if err != nil {
				return nil, err
			}
			if roomInterest(r, roomID, room) {
				ids = append(ids, r.ID)
				break
			}
		}
	}
	return ids, tx.Enqueue(ctx, ids, store.KindEphemeral, body)
}
