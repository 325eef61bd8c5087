package keyserver

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/logging"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver/store"
)

// The device list change log (device_list_changes) is the publisher's
// outbox: a change is committed with its row, and the publisher sends
// every row after its watermark (key_changes_published) to JetStream as a
// KeyChange, in position order, then moves the watermark. Positions
// commit in order (store/e2ekeys.go), so no row can appear later below the
// watermark. A crash between a publish and the watermark update sends the
// change again with the same Nats-Msg-Id, which JetStream drops within the
// stream's duplicate window; consumers are idempotent besides. Each commit
// in this process pokes the publisher; it also polls, for changes other
// key-server replicas commit.

// publishBatch is how many changes one round reads.
const publishBatch = 256

// publisher sends committed key changes to JetStream.
type publisher struct {
	st    *store.Store
	js    jetstream.JetStream
	log   *zap.Logger
	poll  time.Duration
	woken chan struct{}
}

func newPublisher(st *store.Store, js jetstream.JetStream, log *zap.Logger, poll time.Duration) *publisher {
	return &publisher{st: st, js: js, log: log, poll: poll, woken: make(chan struct{}, 1)}
}

// poke tells the publisher a change was committed.
func (p *publisher) poke() {
	select {
	case p.woken <- struct{}{}:
	default:
	}
}

// run publishes until ctx ends. Failures (NATS or the database down) are
// logged and retried after a poll interval.
func (p *publisher) run(ctx context.Context) error {
	for {
		more, err := p.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			p.log.Warn("publish key changes", zap.Error(err))
		}
		if more && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.woken:
		case <-time.After(p.poll):
		}
	}
}

// round publishes the changes after the watermark, at most publishBatch
// of them, and reports whether more may wait.
func (p *publisher) round(ctx context.Context) (more bool, err error) {
	from, err := p.st.PublishedUpTo(ctx)
	if err != nil {
		return false, err
	}
	changes, err := p.st.ChangesAfter(ctx, from, publishBatch)
	if err != nil || len(changes) == 0 {
		return false, err
	}
	done := from
	defer func() {
		if done > from {
			if serr := p.st.SetPublished(context.WithoutCancel(ctx), done); serr != nil && err == nil {
				err = serr
			}
		}
	}()
	for _, c := range changes {
		if c.Publishable() {
			if err := p.publish(ctx, c); err != nil {
				return false, err
			}
		}
		done = c.Pos
	}
	return len(changes) == publishBatch, nil
}

// publish sends one change and waits for JetStream's ack, so the next
// change of the user is stored after it.
func (p *publisher) publish(ctx context.Context, c store.ChangeRow) error {
	data, err := proto.Marshal(keyChangeMessage(c))
	if err != nil {
		return err
	}
	msg := nats.NewMsg(bus.KeyChangesSubject(c.UserID))
	msg.Data = data
	if _, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(bus.KeyChangeMsgID(c.Pos))); err != nil {
		return fmt.Errorf("publish key change %d of %s: %w", c.Pos, c.UserID, err)
	}
	p.log.Debug("published key change", logging.UserID(c.UserID), zap.Int64("position", c.Pos), zap.String("kind", c.Kind))
	return nil
}

// keyChangeMessage is a change's JetStream payload.
func keyChangeMessage(c store.ChangeRow) *keyserverv1.KeyChange {
	m := &keyserverv1.KeyChange{UserId: c.UserID, Position: c.Pos}
	switch c.Kind {
	case store.KindDevice, store.KindDeviceName:
		m.Kind = keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_DEVICE
		m.DeviceId, m.DeviceDisplayName, m.Deleted, m.DeviceKeys = c.DeviceID, c.DisplayName, c.Deleted, c.DeviceKeys
		if c.PrevPos > 0 {
			m.PrevPositions = []int64{c.PrevPos}
		}
	case store.KindSigningKeys:
		m.Kind = keyserverv1.KeyChangeKind_KEY_CHANGE_KIND_SIGNING_KEYS
		m.MasterKey, m.SelfSigningKey = c.MasterKey, c.SelfSigningKey
	}
	return m
}
