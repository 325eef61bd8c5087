package clientapi

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Several client-API replicas can run side by side. They share the
// database and the durable room-event consumer, so each stored event is
// stored by one replica only, and account data is written by whichever
// replica got the request. The long polls a change concerns may be held
// by any replica, so every replica announces what it stored on
// bus.SyncWakeSubject (core NATS) and every replica feeds what it hears
// into its own notifier. A replica applies its own changes directly and
// ignores its own announcements.

// wakeBus publishes and receives SyncWake messages.
type wakeBus struct {
	nc     *nats.Conn
	origin string
	sub    *nats.Subscription
}

// startWakeBus subscribes this replica to the other replicas'
// announcements.
func (s *Service) startWakeBus() error {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	b := &wakeBus{nc: s.js.Conn(), origin: hex.EncodeToString(id[:])}
	sub, err := b.nc.Subscribe(bus.SyncWakeSubject, func(m *nats.Msg) { s.heardWake(b.origin, m.Data) })
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SyncWakeSubject, err)
	}
	b.sub = sub
	s.wakeBus = b
	return nil
}

func (b *wakeBus) stop() {
	if b != nil && b.sub != nil {
		_ = b.sub.Unsubscribe()
	}
}

// heardWake applies another replica's announcement to this notifier.
func (s *Service) heardWake(self string, data []byte) {
	var w clientapiv1.SyncWake
	if err := proto.Unmarshal(data, &w); err != nil {
		s.log.Warn("dropping undecodable sync wake", zap.Error(err))
		return
	}
	if w.GetOrigin() == self {
		return
	}
	if len(w.GetEvents()) > 0 {
		applied := make([]store.Applied, 0, len(w.GetEvents()))
		for _, e := range w.GetEvents() {
			a := store.Applied{Pos: e.GetPosition(), Event: store.Event{RoomID: e.GetRoomId(), EventID: e.GetEventId()}}
			for _, c := range e.GetChanges() {
				a.Changes = append(a.Changes, store.MembershipChange{RoomID: c.GetRoomId(), UserID: c.GetUserId(), Membership: c.GetMembership()})
			}
			applied = append(applied, a)
		}
		s.notifier.Committed(applied)
	}
	for _, u := range w.GetUsers() {
		s.notifier.Wake(u)
	}
}

// announceCommitted wakes this replica's long polls for stored room
// events, and the other replicas'.
func (s *Service) announceCommitted(applied []store.Applied) {
	s.notifier.Committed(applied)
	if len(applied) == 0 {
		return
	}
	w := &clientapiv1.SyncWake{Events: make([]*clientapiv1.CommittedEvent, 0, len(applied))}
	for _, a := range applied {
		e := &clientapiv1.CommittedEvent{Position: a.Pos, RoomId: a.Event.RoomID, EventId: a.Event.EventID}
		for _, c := range a.Changes {
			e.Changes = append(e.Changes, &clientapiv1.MembershipChange{RoomId: c.RoomID, UserId: c.UserID, Membership: c.Membership})
		}
		w.Events = append(w.Events, e)
	}
	s.publishWake(w)
}

// announceWake wakes userID's long polls on every replica for a change
// outside the room stream.
func (s *Service) announceWake(userID string) {
	s.notifier.Wake(userID)
	s.publishWake(&clientapiv1.SyncWake{Users: []string{userID}})
}

// wakeForUsers is the wake message for changes of these users outside the
// room stream.
func wakeForUsers(users []string) *clientapiv1.SyncWake {
	return &clientapiv1.SyncWake{Users: users}
}

func (s *Service) publishWake(w *clientapiv1.SyncWake) {
	if s.wakeBus == nil {
		return
	}
	w.Origin = s.wakeBus.origin
	data, err := proto.Marshal(w)
	if err == nil {
		err = s.wakeBus.nc.Publish(bus.SyncWakeSubject, data)
	}
	if err != nil {
		// Other replicas' long polls for this change end at their timeout.
		s.log.Warn("publish sync wake", zap.Error(err))
	}
}
