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
// messages into queue rows. Messages are applied one at a time, in stream
// order: a message that cannot be applied is retried in place (never
// skipped ahead of), and each is acknowledged only after its transaction,
// which also records the stream position, commits. A message delivered
// again after a crash finds its position recorded and changes nothing.
type consumer struct {
	name   string
	stream string
	cons   jetstream.Consumer
	// apply turns one message into queue rows in tx and returns the
	// destinations whose queues grew.
	apply func(ctx context.Context, tx *store.Tx, m jetstream.Msg) ([]string, error)
	// prepare runs before the transaction (remote calls it may need);
	// its result is passed to apply through the context.
	prepare func(ctx context.Context, m jetstream.Msg) (context.Context, error)
}

func (s *Service) createConsumers(ctx context.Context) ([]*consumer, error) {
	specs := []struct {
		suffix, stream string
		deliver        jetstream.DeliverPolicy
		apply          func(context.Context, *store.Tx, jetstream.Msg) ([]string, error)
		prepare        func(context.Context, jetstream.Msg) (context.Context, error)
	}{
		{"rooms", bus.RoomEventsStream, jetstream.DeliverAllPolicy, s.applyRoomEvent, s.prepareRoomEvent},
		// Typing, receipts and presence are only worth sending while
		// fresh: a consumer made now starts with what comes next.
		{"ephemeral", bus.EphemeralStream, jetstream.DeliverNewPolicy, s.applyEphemeral, nil},
		{"keys", bus.KeyChangesStream, jetstream.DeliverAllPolicy, s.applyKeyChange, nil},
		{"todevice", bus.ToDeviceOutStream, jetstream.DeliverAllPolicy, s.applyToDevice, nil},
	}
	var out []*consumer
	for _, sp := range specs {
		name := s.cfg.ConsumerPrefix + "-" + sp.suffix
		cons, err := s.js.CreateOrUpdateConsumer(ctx, sp.stream, jetstream.ConsumerConfig{
			Durable:       name,
			Description:   "federation sender: " + sp.suffix,
			DeliverPolicy: sp.deliver,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       time.Minute,
			MaxAckPending: 1024,
		})
		if err != nil {
			return nil, fmt.Errorf("create consumer %s on %s: %w", name, sp.stream, err)
		}
		out = append(out, &consumer{name: name, stream: sp.stream, cons: cons, apply: sp.apply, prepare: sp.prepare})
	}
	return out, nil
}

// runConsumer applies the consumer's messages until ctx ends.
func (s *Service) runConsumer(ctx context.Context, c *consumer) error {
	iter, err := c.cons.Messages(jetstream.PullMaxMessages(256))
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
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
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
			s.sender.wake(dests...)
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
