package roomserver

// Publishing. Accepted events get an outbox row in their own transaction.
// The publisher reads the rows committed since the snapshot it last
// finished (store.PendingOutbox: positions take no global lock, so rows
// are found by transaction visibility, not by a position watermark) and
// publishes each entry with Nats-Msg-Id = event ID. A crash before the
// snapshot is saved republishes a few events: JetStream drops them within
// its duplicate window, and consumers are idempotent on event_id anyway.
//
// Order: each room's events must reach JetStream in commit order. Entries
// are published asynchronously in waves (publishWave): a wave is a run of
// consecutive outbox entries of distinct rooms, all in flight together;
// the next wave starts only when every acknowledgement of the previous one
// is in. So an event is never in flight together with an earlier event of
// its room, and when a publish fails nothing later of that room has been
// sent: the retry starts again at the first entry not known to be
// acknowledged (everything before it was), and repeats that JetStream has
// already stored are duplicates. Events of different rooms
// may reach JetStream out of outbox order after a failure; nothing relies
// on an order across rooms (each room has its own subject).
//
// Pruning: the outbox is only the way to JetStream, so rows already there
// are deleted every outbox_prune_interval (runOutboxPruner,
// store.PruneOutbox): those of transactions visible in the saved published
// snapshot (committed when it was taken).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/outparts"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// publishBatch is how many outbox entries one round reads.
const publishBatch = 256

// publishAckTimeout bounds the wait for JetStream's acknowledgements of a
// wave; when it passes the round fails and is retried from the watermark.
const publishAckTimeout = 10 * time.Second

// outboxPruneBatch is how many outbox rows one DELETE removes at most, so
// that a large backlog (the first run after an upgrade) goes in short
// statements.
const outboxPruneBatch = 10000

// runOutboxPruner deletes published outbox rows every OutboxPruneInterval
// until ctx ends. A failure is logged and tried again at the next tick.
func (s *Service) runOutboxPruner(ctx context.Context) {
	ticker := time.NewTicker(s.cfg.OutboxPruneInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		var total int64
		for ctx.Err() == nil {
			n, err := s.store.PruneOutbox(ctx, outboxPruneBatch)
			total += n
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("pruning the outbox failed; retrying at the next interval", zap.Error(err))
				}
				break
			}
			if n < outboxPruneBatch {
				break
			}
		}
		if total > 0 {
			s.log.Debug("pruned published outbox rows", zap.Int64("rows", total))
		}
	}
}

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
//
// While NATS is unreachable a round fails at once (nothing is handed to
// the client's reconnect buffer to wait for acknowledgements that cannot
// come), and the reconnection ends the backoff, so what waited in the
// outbox goes out as soon as NATS is back.
func (s *Service) runPublisher(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	ticker := time.NewTicker(s.cfg.PublishPollInterval)
	defer ticker.Stop()
	nc := s.js.Conn()
	reconnected := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(reconnected)
	p := &publisher{s: s}
	for {
		var err error
		if st := nc.Status(); st != nats.CONNECTED {
			err = fmt.Errorf("NATS connection %s", st)
		} else {
			err = p.publishPending(ctx)
		}
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
			case <-reconnected:
				backoff = 100 * time.Millisecond
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

// publisher remembers how far it has published: the snapshot up to which
// every outbox row is on JetStream (prev), and within the rows committed
// after it, the snapshot being worked through (cur) and the last position
// acked. prev is saved with the next read of the outbox (one round trip
// for both), so a crash republishes at most the rows since: JetStream
// drops them as duplicates (Nats-Msg-Id), and consumers are idempotent.
type publisher struct {
	s *Service
	// cursor is what the next read asks for; loaded says whether cursor.Prev
	// was read from the database, saved whether the database has it (or
	// an older snapshot with nothing published since).
	cursor        store.OutboxCursor
	loaded, saved bool
	// published says whether anything was published since the last save.
	published bool
}

// publishPending publishes every outbox row committed so far.
func (p *publisher) publishPending(ctx context.Context) error {
	s := p.s
	if !p.loaded {
		prev, err := s.store.PublishedSnapshot(ctx)
		if err != nil {
			return err
		}
		p.cursor, p.loaded, p.saved = store.OutboxCursor{Prev: prev}, true, true
	}
	for {
		pending, snapshot, err := s.store.PendingOutbox(ctx, p.cursor, publishBatch, !p.saved)
		if err != nil {
			return err
		}
		p.saved = true
		p.cursor.Cur = snapshot
		built := time.Now()
		msgs, err := s.outputMessages(ctx, pending)
		if err != nil {
			return err
		}
		if len(msgs) > len(pending.Entries) {
			defer func(n int) {
				s.log.Info("published room events with parts", zap.Int("entries", len(pending.Entries)), zap.Int("messages", n),
					zap.Duration("took", time.Since(built)))
			}(len(msgs))
		}
		for start := 0; start < len(msgs); {
			end := waveEnd(msgs, start)
			acked, err := s.publishWave(ctx, msgs[start:end])
			// An entry is out when its last part is.
			for i := start + acked - 1; i >= start; i-- {
				if msgs[i].last {
					p.cursor.After, p.published = pending.Entries[msgs[i].entry].StreamPos, true
					break
				}
			}
			if err != nil {
				return err
			}
			start = end
		}
		if len(pending.Entries) < publishBatch {
			// Everything up to the snapshot is out. (With nothing
			// published since the last save, the stored snapshot need
			// not move: a restart from it would find nothing more.)
			p.cursor = store.OutboxCursor{Prev: snapshot}
			if p.published {
				p.saved, p.published = false, false
			}
			return nil
		}
	}
}

// waveEnd returns the end of the wave that starts at msgs[start]: the
// longest run of entries whose rooms are all different.
func waveEnd(msgs []outputMessage, start int) int {
	rooms := make(map[string]struct{}, min(len(msgs)-start, 64))
	end := start
	for ; end < len(msgs); end++ {
		if _, ok := rooms[msgs[end].roomID]; ok {
			break
		}
		rooms[msgs[end].roomID] = struct{}{}
	}
	return end
}

// publishWave publishes msgs (of distinct rooms) without waiting between
// them, then waits for every acknowledgement. acked is how many of msgs,
// from the first, JetStream acknowledged; after an error the caller
// republishes from there.
func (s *Service) publishWave(ctx context.Context, msgs []outputMessage) (acked int, err error) {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, perr := s.js.PublishMsgAsync(m.msg, jetstream.WithMsgID(m.msgID))
		if perr != nil {
			err = perr
			if errors.Is(perr, nats.ErrMaxPayload) {
				// Retried like any failure, but named: the NATS server's
				// max_payload must grow (see devinfra.MaxPayload).
				err = fmt.Errorf("event %s: its message (%d bytes, with the state it adds) is over the NATS server's max_payload (%d bytes): %w",
					m.eventID, len(m.msg.Data), s.js.Conn().MaxPayload(), perr)
			}
			break
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(publishAckTimeout)
	defer timeout.Stop()
	failed := false
	for _, f := range futures {
		select {
		case <-f.Ok():
			if !failed {
				acked++
			}
		case ferr := <-f.Err():
			failed = true
			err = errors.Join(err, ferr)
		case <-timeout.C:
			return acked, errors.Join(err, fmt.Errorf("no JetStream acknowledgement within %s", publishAckTimeout))
		case <-ctx.Done():
			return acked, ctx.Err()
		}
	}
	return acked, err
}

type outputMessage struct {
	eventID, roomID, msgID string
	msg                    *nats.Msg
	// entry is the index of the outbox entry; last is set on its last
	// (or only) part.
	entry int
	last  bool
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
	extra, err := s.loadEvents(ctx, s.store.Queries, more)
	if err != nil {
		return nil, err
	}
	// Redaction targets are read from the database, never the event cache:
	// a reader that loaded a target just before its redaction committed
	// may have put the unredacted form back into the cache, and consumers
	// must get the redacted one.
	var targetNIDs []int64
	for _, nid := range targets {
		targetNIDs = append(targetNIDs, nid)
	}
	if len(targetNIDs) > 0 {
		rows, err := s.store.Queries.EventsByNID(ctx, targetNIDs)
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			e, err := newEventEntry(row)
			if err != nil {
				return nil, err
			}
			extra[row.NID] = e
		}
		for _, nid := range targetNIDs {
			if extra[nid] == nil {
				return nil, fmt.Errorf("redacted event nid %d: %w", nid, store.ErrNotFound)
			}
		}
	}
	out := make([]outputMessage, 0, len(entries))
	limit := outparts.Limit(s.cfg.MaxMessageBytes, s.js.Conn().MaxPayload())
	for entry, e := range entries {
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
		o.Kind = roomserverv1.OutputKind(e.Kind)
		if e.StrippedState != "" {
			var stripped []json.RawMessage
			if err := json.Unmarshal([]byte(e.StrippedState), &stripped); err != nil {
				return nil, fmt.Errorf("stripped state of %s: %w", ev.EventID, err)
			}
			for _, raw := range stripped {
				o.StrippedState = append(o.StrippedState, raw)
			}
		}
		parts := outparts.Split(o, limit)
		for i, part := range parts {
			data, err := proto.Marshal(part)
			if err != nil {
				return nil, err
			}
			out = append(out, outputMessage{eventID: ev.EventID, roomID: ev.RoomID, msgID: outparts.MsgID(ev.EventID, i+1, len(parts)),
				msg: &nats.Msg{Subject: bus.RoomEventsSubject(ev.RoomID), Data: data}, entry: entry, last: i == len(parts)-1})
		}
	}
	return out, nil
}
