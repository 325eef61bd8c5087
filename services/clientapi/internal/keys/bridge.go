// Package keys is the client-API's side of the key-server, which owns
// users' end-to-end keys and key backups: the /keys and /room_keys
// endpoints (Service: parse, call the key-server, render), and the Bridge
// (the hand-over of the old key tables, the queue of device deletions and
// renames, and /sync's SyncKeys call).
package keys

import (
	"context"
	"sync/atomic"

	"go.uber.org/zap"

	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
	"github.com/myelin-chat/myelin/services/clientapi/store"
	"github.com/myelin-chat/myelin/services/clientapi/store/accounts"
)

// Bridge is the client-API's side of the key-server: the hand-over of the
// old key tables (handover.go), the queue of device deletions and renames
// (outbox.go) and /sync's SyncKeys call (sync.go).
type Bridge struct {
	e2e   keyserverv1.E2EKeyServiceClient // nil: no key-server
	store *store.Store
	log   *zap.Logger
	// ready: the old key tables are handed over to the key-server.
	ready atomic.Bool
}

// NewBridge returns the bridge to the key-server's e2e (nil: none).
func NewBridge(e2e keyserverv1.E2EKeyServiceClient, st *store.Store, log *zap.Logger) *Bridge {
	return &Bridge{e2e: e2e, store: st, log: log}
}

// available reports whether the key-server can be asked: there is one, and
// the old key tables are handed over.
func (k *Bridge) available() bool { return k.e2e != nil && k.ready.Load() }

// Ready reports whether the old key tables are handed over.
func (k *Bridge) Ready() bool { return k.ready.Load() }

// RoomSharing says who shares a joined room with whom (notifier.Notifier).
type RoomSharing interface {
	SharesRoom(a, b string) bool
}

// Service serves the /keys and /room_keys endpoints.
type Service struct {
	serverName string
	store      *store.Store
	accounts   *accounts.Store
	e2e        keyserverv1.E2EKeyServiceClient
	keys       *Bridge
	notifier   RoomSharing
	// users runs user-interactive auth for cross-signing uploads.
	users *users.Service
	// fed asks other servers for their users' keys (nil: federation is
	// off, and they are reported under failures).
	fed fedsenderv1.FederationSenderServiceClient
	log *zap.Logger
}

// New returns the key endpoints of serverName over bridge.
func New(serverName string, st *store.Store, e2e keyserverv1.E2EKeyServiceClient, fed fedsenderv1.FederationSenderServiceClient,
	bridge *Bridge, sharing RoomSharing, u *users.Service, log *zap.Logger) *Service {
	return &Service{serverName: serverName, store: st, accounts: accounts.New(st), e2e: e2e, fed: fed, keys: bridge, notifier: sharing, users: u, log: log}
}

// Routes are the key and key backup endpoints.
func (s *Service) Routes() []httpapi.Route {
	return append(s.keyRoutes(), s.keyBackupRoutes()...)
}

// fromGRPC converts a peer service's error into a Matrix error
// (httpapi.FromGRPC).
func (s *Service) fromGRPC(ctx context.Context, op string, err error, overrides httpapi.GRPCOverrides) error {
	return httpapi.FromGRPC(ctx, s.log, op, err, overrides)
}
