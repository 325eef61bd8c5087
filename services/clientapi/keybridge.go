package clientapi

import (
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// keyBridge is the client-API's side of the key-server, which owns users'
// end-to-end keys: the hand-over of the old key tables
// (keyhandover.go), the queue of device deletions and renames
// (keyoutbox.go), the key change consumer that wakes /sync
// (keychanges_consumer.go) and /sync's SyncKeys call (e2ekeys_sync.go).
type keyBridge struct {
	e2e      keyserverv1.E2EKeyServiceClient // nil: no key-server
	store    *store.Store
	log      *zap.Logger
	notifier *notifier
	consumer jetstream.Consumer
	// ready: the old key tables are handed over to the key-server.
	ready atomic.Bool
}

// available reports whether the key-server can be asked: there is one, and
// the old key tables are handed over.
func (k *keyBridge) available() bool { return k.e2e != nil && k.ready.Load() }
