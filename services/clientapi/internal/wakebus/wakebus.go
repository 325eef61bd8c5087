// Package wakebus carries wake-ups between client-API replicas.
//
// Several client-API replicas can run side by side. They share the
// database and the durable room-event consumer, so each stored event is
// stored by one replica only, and account data is written by whichever
// replica got the request. The long polls a change concerns may be held
// by any replica, so every replica announces what it stored on
// bus.SyncWakeSubject (core NATS) and every replica feeds what it hears
// into its own notifier. A replica applies its own changes directly and
// ignores its own announcements.
package wakebus

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Bus publishes and receives SyncWake messages.
type Bus struct {
	nc       *nats.Conn
	origin   string
	sub      *nats.Subscription
	notifier *notifier.Notifier
	log      *zap.Logger
}

// Start subscribes this replica's notifier to the other replicas'
// announcements.
func Start(nc *nats.Conn, n *notifier.Notifier, log *zap.Logger) (*Bus, error) {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	b := &Bus{nc: nc, origin: hex.EncodeToString(id[:]), notifier: n, log: log}
	sub, err := b.nc.Subscribe(bus.SyncWakeSubject, func(m *nats.Msg) { b.heardWake(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", bus.SyncWakeSubject, err)
	}
	b.sub = sub
	return b, nil
}

// Stop ends the subscription.
func (b *Bus) Stop() {
	if b != nil && b.sub != nil {
		_ = b.sub.Unsubscribe()
	}
}

// heardWake applies another replica's announcement to this notifier.
func (b *Bus) heardWake(data []byte) {
	var w clientapiv1.SyncWake
	if err := proto.Unmarshal(data, &w); err != nil {
		b.log.Warn("dropping undecodable sync wake", zap.Error(err))
		return
	}
	if w.GetOrigin() == b.origin {
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
		b.notifier.Committed(applied)
	}
	for _, u := range w.GetUsers() {
		b.notifier.Wake(u)
	}
}

// AnnounceCommitted wakes this replica's long polls for stored room
// events, and the other replicas'.
func (b *Bus) AnnounceCommitted(applied []store.Applied) {
	b.notifier.Committed(applied)
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
	b.publish(w)
}

// AnnounceWake wakes userID's long polls on every replica for a change
// outside the room stream (account data, receipts for unread counts,
// send-to-device messages).
func (b *Bus) AnnounceWake(userID string) {
	b.notifier.Wake(userID)
	b.publish(&clientapiv1.SyncWake{Users: []string{userID}})
}

func (b *Bus) publish(w *clientapiv1.SyncWake) {
	w.Origin = b.origin
	data, err := proto.Marshal(w)
	if err == nil {
		err = b.nc.Publish(bus.SyncWakeSubject, data)
	}
	if err != nil {
		// Other replicas' long polls for this change end at their timeout.
		b.log.Warn("publish sync wake", zap.Error(err))
	}
}
