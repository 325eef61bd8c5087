package fedsender

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// The stream consumers turn the streams' messages into queue rows. Each
// is a bus.OrderedConsumer: one message at a time, in stream order, a
// message that cannot be applied retried in place, each acknowledged
// only after its transaction (which also records its stream position in
// the fedsender schema) commits, and the durable consumer made afresh
// from the position after the last one recorded on every start. Only the
// replica holding the consumers' lease runs them (sender.go), so there is
// one reader at a time; a former holder that was paused and resumes finds
// the positions of the messages it still holds recorded (store.Apply
// changes nothing for a position at or below the recorded one), so it
// neither repeats nor skips.
func (s *Service) consumerSpecs() []*bus.OrderedConsumer {
	mk := func(suffix, stream string, deliver jetstream.DeliverPolicy,
		apply func(context.Context, *store.Tx, jetstream.Msg) ([]string, error),
		prepare func(context.Context, jetstream.Msg) (context.Context, error)) *bus.OrderedConsumer {
		name := s.cfg.ConsumerPrefix + "-" + suffix
		// grown: the destinations whose queues the last message grew (one
		// consumer applies one message at a time).
		var grown []string
		return &bus.OrderedConsumer{
			Name: name, Stream: stream, Deliver: deliver,
			Description: "federation sender (resumes after its position in the fedsender schema)",
			Position: func(ctx context.Context) (uint64, error) {
				pos, err := s.store.Position(ctx, name)
				return uint64(pos), err
			},
			// MaxBatch is left at one: each message's remote calls
			// (prepare) come before its own transaction.
			Apply: func(ctx context.Context, msgs []jetstream.Msg, seqs []uint64) error {
				m, seq := msgs[0], seqs[0]
				grown = nil
				if prepare != nil {
					var err error
					// prepare makes the remote calls the message may need,
					// outside the transaction.
					if ctx, err = prepare(ctx, m); err != nil {
						return err
					}
				}
				_, err := s.store.Apply(ctx, name, seq, func(tx *store.Tx) error {
					var err error
					grown, err = apply(ctx, tx, m)
					return err
				})
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
