package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// OrderedConsumer is a durable consumer whose messages are applied one at
// a time, in stream order, by a single reader that records its position
// in its own database together with what each message changed. A message
// that cannot be applied is retried in place (never skipped), and is
// acknowledged only once applied. Each run makes the durable consumer
// afresh from the position after the last one recorded, so messages a
// previous reader had but did not apply come again first, in order.
type OrderedConsumer struct {
	// Name is the durable name; Stream the stream it reads.
	Name, Stream string
	// Description is shown by NATS tooling.
	Description string
	// Deliver is the first reader's policy (DeliverAll or DeliverNew)
	// when no position is recorded.
	Deliver jetstream.DeliverPolicy
	// Position returns the last stream sequence applied (0: none).
	Position func(ctx context.Context) (uint64, error)
	// Apply applies one message and records seq as the position, in one
	// database transaction. A seq at or below the recorded position must
	// change nothing.
	Apply func(ctx context.Context, m jetstream.Msg, seq uint64) error
	// Applied, if set, runs after each message is applied and acknowledged.
	Applied func()
}

// Run consumes until ctx ends (nil) or the consumer cannot go on.
func (c *OrderedConsumer) Run(ctx context.Context, js jetstream.JetStream, log *zap.Logger) error {
	pos, err := c.Position(ctx)
	if err != nil {
		return err
	}
	if err := js.DeleteConsumer(ctx, c.Stream, c.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", c.Name, err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       c.Name,
		Description:   c.Description,
		DeliverPolicy: c.Deliver,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 1024,
	}
	if pos > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, pos+1
	}
	cons, err := js.CreateConsumer(ctx, c.Stream, cfg)
	if err != nil {
		return fmt.Errorf("create consumer %s on %s: %w", c.Name, c.Stream, err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.Stream, err)
	}
	go func() {
		<-ctx.Done()
		iter.Stop()
	}()
	log = log.With(zap.String("consumer", c.Name))
	for {
		m, err := iter.Next()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, jetstream.ErrMsgIteratorClosed), errors.Is(err, jetstream.ErrConsumerDeleted),
				errors.Is(err, jetstream.ErrConsumerNotFound):
				return fmt.Errorf("consume %s: %w", c.Name, err)
			}
			log.Warn("consumer", zap.Error(err))
			continue
		}
		c.handle(ctx, log, m)
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *OrderedConsumer) handle(ctx context.Context, log *zap.Logger, m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		log.Error("dropping a message without metadata", zap.Error(err))
		_ = m.Term()
		return
	}
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := c.Apply(ctx, m, meta.Sequence.Stream)
		if err == nil {
			if err := m.Ack(); err != nil && ctx.Err() == nil {
				log.Warn("ack", zap.Error(err))
			}
			if c.Applied != nil {
				c.Applied()
			}
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
