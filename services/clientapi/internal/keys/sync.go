package keys

import (
	"context"
	"time"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/clientevent"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
)

// keySyncTimeout bounds the key-server call of one /sync: an unreachable
// key-server must not hold up the response.
const keySyncTimeout = 2 * time.Second

// SyncKeysCall is a SyncKeys call running beside the rest of a /sync.
type SyncKeysCall struct {
	done chan struct{}
	resp *keyserverv1.SyncKeysResponse
	err  error
}

// startSync asks the key-server for the device's key state and the
// device list changes after the since token, while the caller reads its
// own snapshot. It returns nil when there is no key-server to ask (none
// configured, or the hand-over of the old key tables is not done).
func (k *Bridge) StartSync(ctx context.Context, dev *httpapi.Device, since *clientevent.StreamToken) *SyncKeysCall {
	if !k.available() {
		return nil
	}
	req := &keyserverv1.SyncKeysRequest{UserId: dev.UserID, DeviceId: dev.DeviceID, WithChanges: since != nil}
	if since != nil {
		req.After = since.KPos
	}
	c := &SyncKeysCall{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		callCtx, cancel := context.WithTimeout(ctx, keySyncTimeout)
		defer cancel()
		c.resp, c.err = k.e2e.SyncKeys(callCtx, req)
	}()
	return c
}

// Wait returns the key-server's answer once the call is done.
func (c *SyncKeysCall) Wait() (*keyserverv1.SyncKeysResponse, error) {
	<-c.done
	return c.resp, c.err
}
