package fedsender

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// consumer is one durable JetStream consumer that turns a stream's
// messages into queue rows. Only the replica holding the consumers' lease
// consumes (sender.go), so there is one reader at a time (and a paused
// former holder that resumes finds its messages' positions recorded). Messages are applied one at a time, in
// stream order: a message that cannot be applied is retried in place
// (never skipped ahead of), and each is acknowledged only after its
// transaction, which also records its stream position, commits. When a
// replica takes the consumers' lease, it makes the durable consumer afresh from the
// position after the last one recorded: messages the previous reader
// had but did not apply come again, first, in order (the old consumer's
// unacknowledged messages would otherwise come back only after the ack
// wait, behind newer ones), and a message delivered again finds its
// position recorded and changes nothing.
type consumer struct {
	name    string
	stream  string
	deliver jetstream.DeliverPolicy
	// apply turns one message into queue rows in tx and returns the
	// destinations whose queues grew.
	apply func(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error)
	// prepare runs before the transaction (remote calls it may need);
	// its result is passed to apply through the context.
	prepare func(ctx context.Context, m jetstream.Msg) (context.Context, error)
}

func (s *Service) consumerSpecs() []*consumer {
	name := func(suffix string) string { return s.cfg.ConsumerPrefix + "-" + suffix }
	return []*consumer{
		{name("rooms"), bus.RoomEventsStream, jetstream.DeliverAllPolicy, s.applyRoomEvent, s.prepareRoomEvent},
		// Typing, receipts and presence are only worth sending while
		// fresh: the first consumer starts with what comes next.
		{name("ephemeral"), bus.EphemeralStream, jetstream.DeliverNewPolicy, s.applyEphemeral, nil},
		{name("keys"), bus.KeyChangesStream, jetstream.DeliverAllPolicy, s.applyKeyChange, nil},
		{name("todevice"), bus.ToDeviceOutStream, jetstream.DeliverAllPolicy, s.applyToDevice, nil},
	}
}

// open makes the durable consumer afresh, from the message after the last
// one applied (or by the consumer's policy when none was).
func (s *Service) openConsumer(ctx context.Context, c *consumer) (jetstream.Consumer, error) {
	pos, err := s.store.Position(ctx, c.name)
	if err != nil {
		return nil, err
	}
	if err := s.js.DeleteConsumer(ctx, c.stream, c.name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("delete consumer %s: %w", c.name, err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       c.name,
		Description:   "federation sender (resumes after its position in the fedsender schema)",
		DeliverPolicy: c.deliver,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 1024,
	}
	if pos > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, uint64(pos)+1
	}
	cons, err := s.js.CreateConsumer(ctx, c.stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", c.name, c.stream, err)
	}
	return cons, nil
}

// runConsumer applies the consumer's messages until ctx ends.
func (s *Service) runConsumer(ctx context.Context, c *consumer) error {
	cons, err := s.openConsumer(ctx, c)
	if err != nil {
		return err
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.stream, err)
	}
	go func() {
		<-ctx.Done()
		iter.Stop()
	}()
	log := s.log.With(zap.String("consumer", c.name))
	for {
		m, err := iter.Next()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, jetstream.ErrMsgIteratorClosed), errors.Is(err, jetstream.ErrConsumerDeleted),
				errors.Is(err, jetstream.ErrConsumerNotFound):
				return fmt.Errorf("consume %s: %w", c.name, err)
			}
			log.Warn("consumer", zap.Error(err))
			continue
		}
		s.handleMsg(ctx, log, c, m)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// handleMsg applies one message, retrying in place until it is applied
// or ctx ends.
func (s *Service) handleMsg(ctx context.Context, log *zap.Logger, c *consumer, m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		log.Error("dropping a message without metadata", zap.Error(err))
		_ = m.Term()
		return
	}
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		dests, err := s.applyMsg(ctx, c, m, meta.Sequence.Stream)
		if err == nil {
			if err := m.Ack(); err != nil && ctx.Err() == nil {
				log.Warn("ack", zap.Error(err))
			}
			s.sender.notify(dests)
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("applying a message failed; retrying it", zap.String("subject", m.Subject()),
			zap.Uint64("stream_seq", meta.Sequence.Stream), zap.Int("attempt", attempt), zap.Error(err))
		_ = m.InProgress()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, 30*time.Second)
	}
}

func (s *Service) applyMsg(ctx context.Context, c *consumer, m jetstream.Msg, seq uint64) ([]string, error) {
	if c.prepare != nil {
		var err error
		if ctx, err = c.prepare(ctx, m); err != nil {
			return nil, err
		}
	}
	var dests []string
	_, err := s.store.Apply(ctx, c.name, seq, func(tx *store.Tx) error {
		var err error
		dests, err = c.apply(ctx, tx, m)
		return err
	})
	return dests, err
}
