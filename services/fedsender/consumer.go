package fedsender

import (
	"context"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// The stream consumers turn the streams' messages into queue rows. Each
// is a bus.OrderedConsumer: in stream order, a batch at a time (the
// message waited for and those already received after it, up to
// consumeBatch, in one transaction: one commit per batch, not per
// message), a batch that cannot be applied retried in place, each
// message acknowledged only after its batch's transaction (which also
// records its stream position in the fedsender schema) commits, and the durable consumer made afresh
// from the position after the last one recorded on every start. Only the
// replica holding the consumers' lease runs them (sender.go), so there is
// one reader at a time; a former holder that was paused and resumes finds
// the positions of the messages it still holds recorded (store.Apply
// changes nothing for a position at or below the recorded one), so it
// neither repeats nor skips.
func (s *Service) consumerSpecs() []*bus.OrderedConsumer {
	mk := func(suffix, stream string, deliver jetstream.DeliverPolicy,
		apply func(context.Context, *store.Tx, jetstream.Msg) ([]string, error),
		prepare func(context.Context, jetstream.Msg, map[string]bool) (context.Context, error)) *bus.OrderedConsumer {
		name := s.cfg.ConsumerPrefix + "-" + suffix
		// grown: the destinations whose queues the last batch grew (one
		// consumer applies one batch at a time).
		var grown []string
		return &bus.OrderedConsumer{
			Name: name, Stream: stream, Deliver: deliver, MaxBatch: consumeBatch,
			Description: "federation sender (resumes after its position in the fedsender schema)",
			Position: func(ctx context.Context) (uint64, error) {
				pos, err := s.store.Position(ctx, name)
				return uint64(pos), err
			},
			Apply: func(ctx context.Context, msgs []jetstream.Msg, seqs []uint64) error {
				grown = nil
				// prepare makes the remote calls the messages may need,
				// outside the transaction, all before it.
				ctxs := make([]context.Context, len(msgs))
				inBatch := map[string]bool{}
				for i, m := range msgs {
					ctxs[i] = ctx
					if prepare != nil {
						var err error
						if ctxs[i], err = prepare(ctx, m, inBatch); err != nil {
							return err
						}
					}
				}
				var got []string
				_, err := s.store.ApplyBatch(ctx, name, seqs, func(tx *store.Tx, i int) error {
					dests, err := apply(ctxs[i], tx, msgs[i])
					for _, d := range dests {
						if !slices.Contains(got, d) {
							got = append(got, d)
						}
					}
					return err
				})
				if err == nil {
					grown = got
				}
				return err
			},
			Applied: func() { s.sender.notify(grown) },
		}
	}
	return []*bus.OrderedConsumer{
		mk("rooms", bus.RoomEventsStream, jetstream.DeliverAllPolicy, s.applyRoomEvent, s.prepareRoomEvent),
		// Typing, receipts and presence are only worth sending while
		// fresh: the first consumer starts with what comes next.
		mk("ephemeral", bus.EphemeralStream, jetstream.DeliverNewPolicy, s.applyEphemeral, nil),
		mk("keys", bus.KeyChangesStream, jetstream.DeliverAllPolicy, s.applyKeyChange, nil),
		mk("todevice", bus.ToDeviceOutStream, jetstream.DeliverAllPolicy, s.applyToDevice, nil),
	}
}

// consumeBatch bounds the stream messages applied in one database
// transaction.
const consumeBatch = 100
