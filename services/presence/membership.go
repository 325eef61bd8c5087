package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// The membership copy. The presence service needs to know who is joined
// where (typing and receipts need a joined user, presence is visible to
// users sharing a room) and must not read the room-server's tables, so it
// keeps its own memberships table from the room-server's output stream,
// with a durable consumer. It is idempotent: each row remembers the stream
// position that set it and is only overwritten from a later one.
// Because the copy lags the commit slightly, a "not joined" answer is
// confirmed with the room-server (QueryMembership) before refusing.

func (s *Service) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, bus.RoomEventsStream, jetstream.ConsumerConfig{
		Durable:       s.cfg.ConsumerName,
		Description:   "presence service membership copy",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 512,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", s.cfg.ConsumerName, bus.RoomEventsStream, err)
	}
	return cons, nil
}

// consumeMemberships stores membership changes in stream order, acking
// each message after its transaction commits.
func (s *Service) consumeMemberships(ctx context.Context) error {
	msgs := make(chan jetstream.Msg, 256)
	cc, err := s.consumer.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil {
			s.log.Warn("membership consumer", zap.Error(err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", bus.RoomEventsStream, err)
	}
	defer cc.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			if err := s.applyMembershipMsg(ctx, m); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.log.Error("store memberships; redelivery will retry", zap.Error(err))
				_ = m.NakWithDelay(time.Second)
				continue
			}
			_ = m.Ack()
		}
	}
}

func (s *Service) applyMembershipMsg(ctx context.Context, m jetstream.Msg) error {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(m.Data(), &out); err != nil {
		s.log.Error("dropping undecodable room event", zap.String("subject", m.Subject()), zap.Error(err))
		return nil
	}
	changes := membershipChanges(&out)
	if len(changes) == 0 {
		return nil
	}
	// A join may make users newly share a room: it takes an ephemeral
	// position (so their next syncs carry each other's presence), hence
	// the write lock.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	joined, pos, err := s.store.ApplyMemberships(ctx, out.GetStreamPosition(), changes, func() (int64, error) {
		return s.store.NextPosition(ctx)
	})
	if err != nil {
		return err
	}
	if pos != 0 {
		s.pos.Store(pos)
	}
	// A user who left (or was kicked or banned) stops typing there.
	for _, c := range changes {
		if c.Membership != "join" && s.typing.drop(c.RoomID, c.UserID) {
			if _, err := s.typingChangedLocked(ctx, c.RoomID); err != nil {
				return err
			}
		}
	}
	if pos == 0 {
		return nil
	}
	// Wake the joiner and their new room-mates. An announcement wakes the
	// joiner and the room's members (the presence itself is read with
	// SyncEphemeral), so of the remote users who joined a room (a join of
	// a remote room brings all its members at once) one is announced:
	// they have no sessions here, and one wakes the room's local members.
	now := s.clock.Now()
	remoteAnnounced := map[string]bool{}
	for _, j := range joined {
		if !s.isLocalUser(j.UserID) {
			if remoteAnnounced[j.RoomID] {
				continue
			}
			remoteAnnounced[j.RoomID] = true
		}
		p, err := s.store.GetPresence(ctx, j.UserID)
		if errors.Is(err, store.ErrNotFound) {
			p = store.Presence{UserID: j.UserID, State: Offline}
		} else if err != nil {
			return err
		}
		s.publish(ctx, bus.PresenceSubject(j.UserID), &presencev1.PresenceUpdate{Presence: s.render(p, now), Position: pos,
			JoinedRoomId: j.RoomID})
	}
	return nil
}

// membershipChanges extracts the m.room.member events that entered the
// room's current state. The room-server already validated them; only the
// three fields needed are read.
func membershipChanges(out *roomserverv1.OutputRoomEvent) []store.MembershipChange {
	var changes []store.MembershipChange
	for _, raw := range out.GetAddedStateEvents() {
		var ev struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
			Content  struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.room.member" || ev.StateKey == nil || ev.Content.Membership == "" {
			continue
		}
		changes = append(changes, store.MembershipChange{RoomID: out.GetRoomId(), UserID: *ev.StateKey, Membership: ev.Content.Membership})
	}
	return changes
}

// isJoined checks the membership copy, then the room-server when the copy
// says no (it may not have caught up with a recent join).
func (s *Service) isJoined(ctx context.Context, roomID, userID string) (bool, error) {
	ok, err := s.store.IsJoined(ctx, roomID, userID)
	if err != nil || ok {
		return ok, err
	}
	resp, err := s.rooms.QueryMembership(ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: userID})
	if err != nil {
		return false, fmt.Errorf("QueryMembership: %w", err)
	}
	return resp.GetMembership() == "join", nil
}

// isLocalUser reports whether userID is of this server.
func (s *Service) isLocalUser(userID string) bool {
	_, domain, ok := strings.Cut(userID, ":")
	return ok && domain == s.serverName
}
