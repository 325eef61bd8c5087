package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// OrderedConsumer is a durable consumer whose messages are applied in
// stream order by a single reader that records its position in its own
// database together with what the messages changed. Messages are applied
// in batches: the first one waited for, with those already received after
// it (up to MaxBatch), in one database transaction, so a busy stream costs
// one commit per batch rather than per message. A batch that cannot be
// applied is retried in place (never skipped), and its messages are
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
	// Apply applies msgs, in stream order (seqs are their stream
	// sequences), and records the last seq as the position, in one
	// database transaction. A message at or below the recorded position
	// must change nothing.
	Apply func(ctx context.Context, msgs []jetstream.Msg, seqs []uint64) error
	// MaxBatch bounds the messages of one Apply (less than 1: one).
	MaxBatch int
	// Applied, if set, runs after each batch is applied and acknowledged.
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
	maxBatch := max(c.MaxBatch, 1)
	// The reader hands messages over as they come; the loop below takes
	// what has come as one batch.
	msgs := make(chan jetstream.Msg, maxBatch)
	fatal := make(chan error, 1)
	go func() {
		for {
			m, err := iter.Next()
			if err != nil {
				switch {
				case ctx.Err() != nil:
					return
				case errors.Is(err, jetstream.ErrMsgIteratorClosed), errors.Is(err, jetstream.ErrConsumerDeleted),
					errors.Is(err, jetstream.ErrConsumerNotFound):
					fatal <- fmt.Errorf("consume %s: %w", c.Name, err)
					return
				}
				log.Warn("consumer", zap.Error(err))
				continue
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var batch []jetstream.Msg
		select {
		case <-ctx.Done():
			return nil
		case err := <-fatal:
			return err
		case m := <-msgs:
			batch = append(batch, m)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break more
			}
		}
		c.handle(ctx, log, batch)
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *OrderedConsumer) handle(ctx context.Context, log *zap.Logger, batch []jetstream.Msg) {
	msgs := batch[:0:0]
	var seqs []uint64
	for _, m := range batch {
		meta, err := m.Metadata()
		if err != nil {
			log.Error("dropping a message without metadata", zap.Error(err))
			_ = m.Term()
			continue
		}
		msgs, seqs = append(msgs, m), append(seqs, meta.Sequence.Stream)
	}
	if len(msgs) == 0 {
		return
	}
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := c.Apply(ctx, msgs, seqs)
		if err == nil {
			for _, m := range msgs {
				if err := m.Ack(); err != nil && ctx.Err() == nil {
					log.Warn("ack", zap.Error(err))
				}
			}
			if c.Applied != nil {
				c.Applied()
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("applying messages failed; retrying them", zap.String("subject", msgs[0].Subject()),
			zap.Uint64("first_stream_seq", seqs[0]), zap.Int("messages", len(msgs)), zap.Int("attempt", attempt), zap.Error(err))
		for _, m := range msgs {
			_ = m.InProgress()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, 30*time.Second)
	}
}
