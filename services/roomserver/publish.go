package roomserver

// Publishing. Accepted events get an outbox row in their own transaction
// (store.Tx.LockStream orders positions by commit). The publisher reads the
// outbox after the published watermark, publishes each entry with
// Nats-Msg-Id = event ID, waits for JetStream's ack, and then moves the
// watermark. A crash between publish and watermark republishes a few
// events: JetStream drops them within its duplicate window, and consumers
// are idempotent on event_id anyway. Entries are published one at a time
// in stream order, so each room's events reach JetStream in commit order.

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// publishBatch is how many outbox entries one round reads.
const publishBatch = 256

// wakePublisher nudges the publisher without blocking.
func (s *Service) wakePublisher() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// runPublisher publishes until ctx ends. Failures are logged and retried
// with backoff; they never lose events (the outbox keeps them). A commit
// wakes it (wakePublisher); the poll interval only matters for events
// committed by another replica.
func (s *Service) runPublisher(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	ticker := time.NewTicker(s.cfg.PublishPollInterval)
	defer ticker.Stop()
	p := &publisher{s: s}
	for {
		err := p.publishPending(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := time.Duration(0)
		if err != nil {
			s.log.Warn("publishing room events failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
			wait = backoff
			backoff = min(backoff*2, 10*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-ticker.C:
		}
	}
}

// publisher remembers how far it has published. The stored watermark is
// moved with the next read of the outbox (one round trip for both), so a
// crash republishes at most the entries since the last read: JetStream
// drops them as duplicates (Nats-Msg-Id), and consumers are idempotent.
type publisher struct {
	s *Service
	// mark is the last position acked by JetStream; saved says whether
	// the stored watermark has it.
	mark  int64
	saved bool
}

// publishPending publishes everything after the watermark.
func (p *publisher) publishPending(ctx context.Context) error {
	s := p.s
	for {
		pending, err := s.store.PendingOutbox(ctx, p.mark, publishBatch, !p.saved)
		if err != nil {
			return err
		}
		p.saved = true
		if len(pending.Entries) == 0 {
			return nil
		}
		msgs, err := s.outputMessages(ctx, pending)
		if err != nil {
			return err
		}
		for i, m := range msgs {
			if _, err := s.js.PublishMsg(ctx, m.msg, jetstream.WithMsgID(m.eventID)); err != nil {
				return err
			}
			p.mark, p.saved = pending.Entries[i].StreamPos, false
		}
		if len(pending.Entries) < publishBatch {
			return nil
		}
	}
}

type outputMessage struct {
	eventID string
	msg     *nats.Msg
}

// outputMessages builds the OutputRoomEvent messages of outbox entries.
func (s *Service) outputMessages(ctx context.Context, pending store.Pending) ([]outputMessage, error) {
	entries := pending.Entries
	var nids []int64
	for _, e := range entries {
		nids = append(nids, e.EventNID)
		nids = append(nids, e.AddedStateNIDs...)
		nids = append(nids, e.RemovedStateNIDs...)
	}
	events, err := s.loadEvents(ctx, s.store.Queries, nids)
	if err != nil {
		return nil, err
	}
	// Redactions that have been applied: a redaction carries its target's
	// redacted form, a redacted event carries its redaction.
	redactedBy, targets := pending.RedactedBy, pending.Targets
	var more []int64
	for _, nid := range redactedBy {
		more = append(more, nid)
	}
	for _, nid := range targets {
		more = append(more, nid)
	}
	extra, err := s.loadEvents(ctx, s.store.Queries, more)
	if err != nil {
		return nil, err
	}
	out := make([]outputMessage, 0, len(entries))
	for _, e := range entries {
		ev := events[e.EventNID]
		o := &roomserverv1.OutputRoomEvent{
			RoomId:         ev.RoomID,
			RoomVersion:    ev.RoomVersion,
			EventId:        ev.EventID,
			EventJson:      ev.pdu.JSON(),
			StreamPosition: e.StreamPos,
		}
		for _, nid := range e.AddedStateNIDs {
			o.AddedStateEvents = append(o.AddedStateEvents, events[nid].pdu.JSON())
		}
		for _, nid := range e.RemovedStateNIDs {
			o.RemovedStateEventIds = append(o.RemovedStateEventIds, events[nid].EventID)
		}
		if nid, ok := targets[e.EventNID]; ok {
			o.RedactedEventId, o.RedactedEventJson = extra[nid].EventID, extra[nid].pdu.JSON()
		}
		if nid, ok := redactedBy[e.EventNID]; ok {
			o.RedactedBecause = extra[nid].pdu.JSON()
		}
		if e.HasTxn {
			o.TransactionId = &roomserverv1.TransactionID{DeviceId: e.TxnDeviceID, TxnId: e.TxnID}
		}
		data, err := proto.Marshal(o)
		if err != nil {
			return nil, err
		}
		out = append(out, outputMessage{eventID: ev.EventID, msg: &nats.Msg{Subject: bus.RoomEventsSubject(ev.RoomID), Data: data}})
	}
	return out, nil
}
