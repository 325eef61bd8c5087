package clientapi

import (
	"context"
	"testing"

	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
)

// TestAwaitStoredLostWake: a stored event whose wake never reached the
// notifier (the wake bus is at most once) still releases its write: a new
// event after the database recheck, a repeated one at once. Either way
// before the caller's deadline, which only a wait for StoredWaitLimit
// would reach.
func TestAwaitStoredLostWake(t *testing.T) {
	h := newHarness(t, testConfig(), nil)
	p := newPublisher(t, h, "!lost:"+testServerName)
	b := p.send("@alice:"+testServerName, "m.room.message", nil, map[string]any{"body": "hi"})
	h.waitPos(p.seq)
	for _, fresh := range []bool{true, false} {
		n := h.svc.notifier
		n.ForgetRecent() // as if the wake had been lost
		ctx, cancel := context.WithTimeout(context.Background(), (notifier.StoredWaitLimit+notifier.StoredRecheck)/2)
		n.AwaitStored(ctx, b.id, fresh)
		if ctx.Err() != nil {
			t.Fatalf("fresh=%v: the write waited for its deadline, not for the database", fresh)
		}
		cancel()
	}
}
