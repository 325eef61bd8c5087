package consumers

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// consumeEach hands every message of cons to apply until ctx ends. A
// message is acked once apply succeeds; a failure is logged (as "what,
// will retry") and the message redelivered a second later.
func consumeEach(ctx context.Context, cons jetstream.Consumer, what string, log *zap.Logger, apply func(context.Context, []byte) error) error {
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := apply(ctx, m.Data()); err != nil {
			if ctx.Err() == nil {
				log.Warn(what+", will retry", zap.Error(err))
			}
			_ = m.NakWithDelay(time.Second)
			return
		}
		_ = m.Ack()
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil {
			log.Warn(what+" consumer", zap.Error(err))
		}
	}))
	if err != nil {
		return fmt.Errorf("consume (%s): %w", what, err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}
