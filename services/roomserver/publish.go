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
// with backoff; they never lose events (the outbox keeps them).
func (s *Service) runPublisher(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	ticker := time.NewTicker(s.cfg.PublishPollInterval)
	defer ticker.Stop()
	for {
		err := s.publishPending(ctx)
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

// publishPending publishes everything after the watermark.
func (s *Service) publishPending(ctx context.Context) error {
	mark, err := s.store.PublishedUpTo(ctx)
	if err != nil {
		return err
	}
	for {
		entries, err := s.store.OutboxAfter(ctx, mark, publishBatch)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			return nil
		}
		msgs, err := s.outputMessages(ctx, entries)
		if err != nil {
			return err
		}
		for i, m := range msgs {
			if _, err := s.js.PublishMsg(ctx, m.msg, jetstream.WithMsgID(m.eventID)); err != nil {
				// Keep what was acked.
				if i > 0 {
					_ = s.store.SetPublishedUpTo(ctx, entries[i-1].StreamPos)
				}
				return err
			}
		}
		mark = entries[len(entries)-1].StreamPos
		if err := s.store.SetPublishedUpTo(ctx, mark); err != nil {
			return err
		}
	}
}

type outputMessage struct {
	eventID string
	msg     *nats.Msg
}

// outputMessages builds the OutputRoomEvent messages of outbox entries.
func (s *Service) outputMessages(ctx context.Context, entries []store.OutboxEntry) ([]outputMessage, error) {
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
	entryNIDs := make([]int64, len(entries))
	for i, e := range entries {
		entryNIDs[i] = e.EventNID
	}
	redactedBy, targets, err := s.store.RedactionLinks(ctx, entryNIDs)
	if err != nil {
		return nil, err
	}
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
