// Package fedreceiver is the federation-receiver: it serves the
// server-server API to other homeservers (issue #16). Every request is
// authenticated with X-Matrix (pkg/federation); rooms are the
// room-server's (PDUs go through its InputEvents with all its checks,
// reads through its federation queries), ephemeral data goes to the
// presence service, device lists and keys to the key-server, profiles come
// from the client-API, and to-device messages for local users are
// published on JetStream (MYELIN_TO_DEVICE_IN). Its own schema holds only
// the received transactions, for idempotency across replicas.
package fedreceiver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/federation"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/fedreceiver/store"
)

// Deps are what the federation-receiver needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	// Version is the binary's version, served by /version.
	Version string
	// JetStream carries inbound to-device messages (MYELIN_TO_DEVICE_IN).
	JetStream jetstream.JetStream
	// Federation is the process's outbound transport: gap filling asks
	// the sending server for missing events and state.
	Federation *federation.Transport
	ServerKeys keyserverv1.ServerKeyServiceClient
	E2EKeys    keyserverv1.E2EKeyServiceClient
	RoomServer roomserverv1.RoomServiceClient
	Presence   presencev1.PresenceServiceClient
	Users      clientapiv1.UserServiceClient
}

// Service is a running federation-receiver.
type Service struct {
	cfg      Config
	log      *zap.Logger
	server   spec.ServerName
	version  string
	store    *store.Store
	js       jetstream.JetStream
	enabled  bool
	client   *federation.Client
	verifier gomatrixserverlib.JSONVerifier
	auth     *federation.Authenticator
	rooms    roomserverv1.RoomServiceClient
	presence presencev1.PresenceServiceClient
	e2e      keyserverv1.E2EKeyServiceClient
	users    clientapiv1.UserServiceClient
	// instance identifies this replica's transaction claims.
	instance string
}

// keyCacheTTL is how long verify keys from the key-server are kept in
// memory.
const keyCacheTTL = 5 * time.Minute

// New opens the store.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.JetStream == nil || deps.Federation == nil || deps.ServerKeys == nil ||
		deps.E2EKeys == nil || deps.RoomServer == nil || deps.Presence == nil || deps.Users == nil {
		return nil, errors.New("fedreceiver: Logger, ServerName, JetStream, Federation and every peer client are required")
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("fedreceiver store: %w", err)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		st.Close()
		return nil, err
	}
	verifier := federation.NewVerifier(deps.ServerKeys, keyCacheTTL)
	s := &Service{
		cfg:      cfg,
		log:      deps.Logger,
		server:   spec.ServerName(deps.ServerName),
		version:  deps.Version,
		store:    st,
		js:       deps.JetStream,
		enabled:  deps.Federation.Enabled(),
		client:   federation.NewClient(deps.Federation, deps.ServerKeys),
		verifier: verifier,
		auth:     federation.NewAuthenticator(spec.ServerName(deps.ServerName), verifier, deps.Logger),
		rooms:    deps.RoomServer,
		presence: deps.Presence,
		e2e:      deps.E2EKeys,
		users:    deps.Users,
		instance: hex.EncodeToString(id),
	}
	return s, nil
}

// RegisterGRPC registers nothing: the receiver has no gRPC API.
func (s *Service) RegisterGRPC(*grpc.Server) {}

// RegisterHTTP serves the federation API on the process's HTTP listener
// too, when federation is enabled: in the split shape the edge's
// federation listener forwards /_matrix/federation/* there (X-Matrix is
// checked here, so the forwarding needs no trust).
func (s *Service) RegisterHTTP(r chi.Router) {
	if s.enabled {
		s.routes(r)
	}
}

// RegisterFederationHTTP serves the federation API on the federation
// listener.
func (s *Service) RegisterFederationHTTP(r chi.Router) { s.routes(r) }

// pruneInterval is how often answered transactions past their retention
// are deleted.
const pruneInterval = 10 * time.Minute

// Run deletes old transactions until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	tick := time.NewTicker(pruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			for {
				n, err := s.store.PruneTransactions(ctx, s.cfg.TransactionRetention, 10000)
				if err != nil {
					if ctx.Err() == nil {
						s.log.Warn("prune transactions", zap.Error(err))
					}
					break
				}
				if n < 10000 {
					break
				}
			}
		}
	}
}

// Ready reports whether the service can serve: its database answers.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// Close releases the store.
func (s *Service) Close() { s.store.Close() }
