package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	pkgce "github.com/myelin-chat/myelin/pkg/clientevent"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
	"github.com/myelin-chat/myelin/services/clientapi/internal/wakebus"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// ErrBadPayload is a JetStream message the consumer cannot decode.
var ErrBadPayload = errors.New("undecodable room event payload")

// consumeBatch is the most messages stored in one transaction.
const consumeBatch = 256

// PusherWaker is told who got notifications (pushgateway.Dispatcher).
type PusherWaker interface {
	Wake(users ...string)
}

// RoomEvents is the consumer of MYELIN_ROOM_EVENTS that writes the
// client-API's copy of room events (the read model /sync and /messages
// read), evaluating push rules in the same transactions. It runs on the
// replica that holds the consumer lock only (Leader), and keeps its own
// position: the stream sequence of the last stored message, committed with
// the events (store.StreamMark). Each run reads the stream in order from
// right after that position with an ordered consumer, so after a crash or
// a change of leader it resumes at once and in stream order (the
// room-server publishes each room's events in commit order); a durable
// consumer would hold the messages a dead run had fetched until their ack
// wait ran out and deliver newer ones first.
type RoomEvents struct {
	js      jetstream.JetStream
	name    string
	store   *store.Store
	push    *push.Service
	wakeBus *wakebus.Bus
	pushers PusherWaker
	// users removes guests from rooms that stopped admitting them.
	users *users.Service
	log   *zap.Logger
}

// NewRoomEvents prepares the consumer; name is its position's name (and,
// for servers upgraded from before positions were kept, the durable
// consumer whose acknowledgements tell where to start).
func NewRoomEvents(ctx context.Context, js jetstream.JetStream, name string, st *store.Store, p *push.Service, wake *wakebus.Bus,
	pushers PusherWaker, u *users.Service, log *zap.Logger) (*RoomEvents, error) {
	return &RoomEvents{js: js, name: name, store: st, push: p, wakeBus: wake, pushers: pushers, users: u, log: log}, nil
}

// resumeFrom is the stream sequence to read from: after the stored
// position, or, the first time, after what the durable consumer of earlier
// versions had acknowledged (events after it that are stored already are
// skipped by event ID), or the stream's start.
func (s *RoomEvents) resumeFrom(ctx context.Context) (uint64, error) {
	seq, ok, err := s.store.StreamMark(ctx, s.name)
	if err != nil {
		return 0, err
	}
	old, err := s.js.Consumer(ctx, bus.RoomEventsStream, s.name)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		old = nil
	case err != nil:
		return 0, fmt.Errorf("look up consumer %s: %w", s.name, err)
	}
	if ok {
		if old != nil {
			// Positions are kept: the durable consumer has served its
			// last purpose.
			if err := s.js.DeleteConsumer(ctx, bus.RoomEventsStream, s.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				s.log.Warn("delete the former durable consumer", zap.String("consumer", s.name), zap.Error(err))
			}
		}
		return seq + 1, nil
	}
	if old != nil {
		return old.CachedInfo().AckFloor.Stream + 1, nil
	}
	return 1, nil
}

// Run receives room events in stream order and stores them in batches:
// each batch in one transaction with the position after it, then announced
// to every replica's notifier. A failed batch is retried (in order) until
// it commits or ctx ends; events stored already are skipped.
func (s *RoomEvents) Run(ctx context.Context) error {
	start, err := s.resumeFrom(ctx)
	if ctx.Err() != nil {
		return nil // stopped while starting
	}
	if err != nil {
		return err
	}
	cons, err := s.js.OrderedConsumer(ctx, bus.RoomEventsStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	})
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", bus.RoomEventsStream, err)
	}
	s.log.Info("reading room events", zap.String("consumer", s.name), zap.Uint64("from_sequence", start))
	msgs := make(chan jetstream.Msg, 2*consumeBatch)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}, jetstream.PullMaxMessages(consumeBatch), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil {
			s.log.Warn("room events consumer", zap.Error(err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", bus.RoomEventsStream, err)
	}
	// What was received but not stored is read again by the next run,
	// from the stored position.
	defer cc.Stop()

	parts := stateParts{}
	for {
		var batch []jetstream.Msg
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			batch = append(batch, m)
		}
	drain:
		for len(batch) < consumeBatch {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		if err := s.storeBatch(ctx, batch, parts); err != nil {
			return nil // ctx ended while retrying
		}
	}
}

// storeBatch decodes and stores one batch with the position after it,
// retrying storage failures with backoff. It returns an error only when
// ctx ends.
func (s *RoomEvents) storeBatch(ctx context.Context, batch []jetstream.Msg, parts stateParts) error {
	decodeStart := time.Now()
	inputs := make([]store.Input, 0, len(batch))
	mark := store.StreamMark{Name: s.name}
	for _, m := range batch {
		var seq uint64
		if md, err := m.Metadata(); err == nil {
			seq = md.Sequence.Stream
			mark.Seq = max(mark.Seq, seq)
		}
		var out roomserverv1.OutputRoomEvent
		if err := proto.Unmarshal(m.Data(), &out); err != nil {
			// A payload that cannot be decoded never will be: drop it.
			s.log.Error("dropping undecodable room event", zap.String("subject", m.Subject()), zap.Error(err))
			continue
		}
		if out.GetStatePart() < out.GetStateParts() {
			if err := parts.add(&out, seq); err != nil {
				s.log.Error("dropping a part of a room event's state", zap.String("subject", m.Subject()), zap.Error(err))
			}
			continue
		}
		in, err := decodeOutput(&out)
		if err != nil {
			s.log.Error("dropping undecodable room event", zap.String("subject", m.Subject()), zap.Error(err))
			continue
		}
		if out.GetStateParts() > 0 {
			if err := parts.complete(&out, &in); err != nil {
				// Stored with the state it has: better than without
				// the event.
				s.log.Error("a room event's state is incomplete", zap.String("subject", m.Subject()), zap.Error(err))
			}
		}
		inputs = append(inputs, in)
	}
	// Leading parts whose event is yet to come are read again after a
	// restart: the position stays before them.
	mark.Seq = parts.before(mark.Seq)
	var applied []store.Applied
	var notified map[string]bool
	started := time.Now()
	err := s.retry(ctx, "store room events", func() (err error) {
		// Push rules are evaluated in the storing transaction
		// (push.Evaluate); notified collects the pusher owners who got a
		// notification, for the pushers.
		notified = map[string]bool{}
		eval := func(ctx context.Context, rd store.Reader, a store.Applied, pc store.PushContext) (store.PushOutcome, error) {
			out, err := s.push.Evaluate(ctx, rd, a, pc)
			for _, u := range push.Woken(out, pc) {
				notified[u] = true
			}
			return out, err
		}
		applied, err = s.store.ApplyMarked(ctx, inputs, eval, mark)
		return err
	})
	if err != nil {
		return err
	}
	if took := time.Since(started); took > time.Second {
		s.log.Info("stored a slow batch of room events", zap.Int("messages", len(batch)), zap.Int("stored", len(applied)),
			zap.Duration("decode", started.Sub(decodeStart)), zap.Duration("took", took))
	}
	s.wakeBus.AnnounceCommitted(applied)
	notifiedUsers := make([]string, 0, len(notified))
	for u := range notified {
		notifiedUsers = append(notifiedUsers, u)
	}
	s.pushers.Wake(notifiedUsers...)
	if rooms := users.GuestAccessChanged(inputs); len(rooms) > 0 {
		if err := s.retry(ctx, "remove guests", func() error { return s.users.Profiles.RemoveGuests(ctx, rooms) }); err != nil {
			return err
		}
	}
	return nil
}

// retry runs f until it succeeds, with backoff; it returns an error only
// when ctx ends.
func (s *RoomEvents) retry(ctx context.Context, what string, f func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Error(what+", retrying", zap.Duration("backoff", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// decodeOutputEvent turns a JetStream payload into what the store keeps.
func decodeOutputEvent(data []byte) (store.Input, error) {
	var out roomserverv1.OutputRoomEvent
	if err := proto.Unmarshal(data, &out); err != nil {
		return store.Input{}, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	return decodeOutput(&out)
}

// decodeOutput is decodeOutputEvent of a decoded message.
func decodeOutput(out *roomserverv1.OutputRoomEvent) (store.Input, error) {
	if out.GetRoomId() == "" || out.GetEventId() == "" {
		return store.Input{}, fmt.Errorf("%w: missing room or event ID", ErrBadPayload)
	}
	pdu, err := pkgce.ParseOutputPDU(out.GetRoomVersion(), out.GetEventId(), out.GetEventJson())
	if err != nil {
		return store.Input{}, fmt.Errorf("%w: event %s: %v", ErrBadPayload, out.GetEventId(), err)
	}
	ce := pkgce.NewClientEvent(pdu)
	if because := out.GetRedactedBecause(); len(because) > 0 {
		if ce, err = clientevent.WithRedactedBecause(ce, out.GetRoomVersion(), out.GetRoomId(), because); err != nil {
			return store.Input{}, fmt.Errorf("%w: event %s: %v", ErrBadPayload, out.GetEventId(), err)
		}
	}
	raw, err := ce.Marshal()
	if err != nil {
		return store.Input{}, err
	}
	in := store.Input{
		Event: store.Event{
			EventID:        out.GetEventId(),
			RoomID:         out.GetRoomId(),
			Type:           ce.Type,
			StateKey:       ce.StateKey,
			Sender:         ce.Sender,
			Membership:     clientevent.MembershipOf(pdu),
			JSON:           raw,
			TxnDeviceID:    out.GetTransactionId().GetDeviceId(),
			TxnID:          out.GetTransactionId().GetTxnId(),
			StreamPosition: out.GetStreamPosition(),
		},
		RemovedIDs: out.GetRemovedStateEventIds(),
	}
	switch out.GetKind() {
	case roomserverv1.OutputKind_OUTPUT_KIND_BACKFILL:
		in.Backfill = true
	case roomserverv1.OutputKind_OUTPUT_KIND_OUT_OF_ROOM:
		// A local user's membership of a room of another server: the
		// event is the user's membership (in no room state the
		// room-server has), shown with the stripped state it carried.
		in.OutOfRoom = true
		for _, raw := range out.GetStrippedState() {
			in.StrippedState = append(in.StrippedState, json.RawMessage(raw))
		}
		if ce.StateKey != nil && ce.Type == "m.room.member" {
			in.Added = append(in.Added, store.StateEvent{EventID: out.GetEventId(), Type: ce.Type, StateKey: *ce.StateKey,
				Sender: ce.Sender, Membership: clientevent.MembershipOf(pdu), JSON: raw})
		}
	}
	in.Event.RelatesTo, in.Event.RelType = clientevent.RelationOf(ce.Content)
	in.Event.SearchKey, in.Event.SearchText = clientevent.SearchTextOf(ce.Type, ce.Content)
	if red := out.GetRedactedEventJson(); len(red) > 0 {
		if in.Redacted, err = clientevent.RedactedCopy(out.GetRoomVersion(), out.GetRoomId(), red, out.GetEventJson()); err != nil {
			return store.Input{}, fmt.Errorf("%w: redacted event of %s: %v", ErrBadPayload, out.GetEventId(), err)
		}
	}
	added, err := decodeAdded(out)
	if err != nil {
		return store.Input{}, err
	}
	in.Added = append(in.Added, added...)
	return in, nil
}

// decodeAdded decodes the state events a message added.
func decodeAdded(out *roomserverv1.OutputRoomEvent) ([]store.StateEvent, error) {
	var added []store.StateEvent
	for _, raw := range out.GetAddedStateEvents() {
		spdu, err := pkgce.ParsePDU(out.GetRoomVersion(), raw)
		if err != nil {
			return nil, fmt.Errorf("%w: added state of %s: %v", ErrBadPayload, out.GetEventId(), err)
		}
		if spdu.StateKey() == nil {
			return nil, fmt.Errorf("%w: added state event %s has no state key", ErrBadPayload, spdu.EventID())
		}
		sce := pkgce.NewClientEvent(spdu)
		sraw, err := sce.Marshal()
		if err != nil {
			return nil, err
		}
		added = append(added, store.StateEvent{
			EventID:    spdu.EventID(),
			Type:       sce.Type,
			StateKey:   *sce.StateKey,
			Sender:     sce.Sender,
			Membership: clientevent.MembershipOf(spdu),
			JSON:       sraw,
		})
	}
	return added, nil
}

// stateParts holds the leading parts of events whose messages were
// split (roomserverv1.OutputRoomEvent.state_part) until their last part
// comes, by event ID. The consumer's stored position stays before the
// first part of any event still here, so a restart reads its parts again.
type stateParts map[string]*partialState

type partialState struct {
	firstSeq uint64
	next     int32 // the part expected next
	removed  []string
	added    []store.StateEvent
}

// add takes a leading part read at stream sequence seq.
func (p stateParts) add(out *roomserverv1.OutputRoomEvent, seq uint64) error {
	added, err := decodeAdded(out)
	if err != nil {
		return err
	}
	ps := p[out.GetEventId()]
	if out.GetStatePart() == 1 || ps == nil {
		// The first part (again, when the stream is read again).
		ps = &partialState{firstSeq: seq, next: 1}
		p[out.GetEventId()] = ps
	}
	if out.GetStatePart() != ps.next {
		return fmt.Errorf("%w: part %d of %s's state where part %d was expected", ErrBadPayload, out.GetStatePart(), out.GetEventId(), ps.next)
	}
	ps.next++
	ps.removed = append(ps.removed, out.GetRemovedStateEventIds()...)
	ps.added = append(ps.added, added...)
	return nil
}

// complete adds the leading parts to the input of an event's last part.
func (p stateParts) complete(out *roomserverv1.OutputRoomEvent, in *store.Input) error {
	ps := p[out.GetEventId()]
	delete(p, out.GetEventId())
	if ps == nil || ps.next != out.GetStatePart() {
		return fmt.Errorf("%w: the last part of %s's state without all the parts before it", ErrBadPayload, out.GetEventId())
	}
	in.RemovedIDs = append(ps.removed, in.RemovedIDs...)
	in.Added = append(ps.added, in.Added...)
	return nil
}

// before returns the stream sequence before the first pending part, or
// seq when none is pending.
func (p stateParts) before(seq uint64) uint64 {
	for _, ps := range p {
		seq = min(seq, ps.firstSeq-1)
	}
	return seq
}
