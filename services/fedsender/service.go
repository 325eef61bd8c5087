// Package fedsender is the federation sender: every request this server
// makes to other homeservers. It queues this server's room events (from
// the room-server's stream) and its users' EDUs (typing, receipts and
// presence from the presence service, device list and cross-signing
// changes from the key-server, send-to-device messages from the
// client-API) per destination in its own schema and sends them as
// transactions; and it serves a gRPC API for the requests made on behalf
// of local users: joins, leaves, invites and knocks through other
// servers, queries, remote keys and backfill.
package fedsender

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/metrics"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/fedsender/store"
)

// Deps are what the federation sender needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	JetStream   jetstream.JetStream
	// RoomServer takes what joins, leaves, knocks and backfill bring
	// (InputEvents) and answers the membership copy's first look at a
	// room (QueryState).
	RoomServer roomserverv1.RoomServiceClient
	// ServerKeys gives the signing key (X-Matrix, events built here) and
	// other servers' verify keys.
	ServerKeys keyserverv1.ServerKeyServiceClient
	// Federation is the process's outbound transport.
	Federation *federation.Transport
	// Metrics is the process's registry (nil: no metrics).
	Metrics *metrics.Metrics
}

// Service is a running federation sender.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName spec.ServerName
	store      *store.Store
	js         jetstream.JetStream
	rooms      roomserverv1.RoomServiceClient
	fed        *federation.Client
	transport  *federation.Transport
	keyRing    *gomatrixserverlib.KeyRing
	consumers  []*bus.OrderedConsumer
	sender     *sender
	stats      *stats
	now        func() time.Time
}

// New opens the store; Run joins the sender replicas and consumes and
// sends what this replica holds the leases of.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.JetStream == nil || deps.RoomServer == nil ||
		deps.ServerKeys == nil || deps.Federation == nil {
		return nil, errors.New("fedsender: Logger, ServerName, JetStream, RoomServer, ServerKeys and Federation are required")
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("fedsender store: %w", err)
	}
	s := &Service{
		cfg:        cfg,
		log:        deps.Logger,
		serverName: spec.ServerName(deps.ServerName),
		store:      st,
		js:         deps.JetStream,
		rooms:      deps.RoomServer,
		fed:        federation.NewClient(deps.Federation, deps.ServerKeys),
		transport:  deps.Federation,
		keyRing:    federation.NewVerifier(deps.ServerKeys, time.Minute),
		now:        time.Now,
	}
	s.stats = newStats()
	s.sender = newSender(s)
	if deps.Metrics != nil {
		if err := deps.Metrics.Register(s.stats.collectors(s)...); err != nil {
			st.Close()
			return nil, fmt.Errorf("fedsender metrics: %w", err)
		}
	}
	s.consumers = s.consumerSpecs()
	return s, nil
}

// RegisterGRPC registers the FederationSenderService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	fedsenderv1.RegisterFederationSenderServiceServer(g, &handler{svc: s})
}

// RegisterHTTP is a no-op: the sender serves no HTTP.
func (s *Service) RegisterHTTP(chi.Router) {}

// Run joins the sender replicas and, for the keys this replica holds the
// leases of (the stream consumers, destinations), consumes the streams
// into the queues and sends them, until ctx ends; then it hands its
// destinations over (releases the leases) and returns.
func (s *Service) Run(ctx context.Context) error {
	return s.sender.run(ctx)
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

// serverOf is the server name of a user ID ("" when it has none).
func serverOf(userID string) string {
	_, server, ok := strings.Cut(userID, ":")
	if !ok || !strings.HasPrefix(userID, "@") {
		return ""
	}
	return server
}

// isLocal reports whether a user ID is of this server.
func (s *Service) isLocal(userID string) bool {
	return serverOf(userID) == string(s.serverName)
}

// others drops this server from a list of servers.
func (s *Service) others(servers []string) []string {
	out := make([]string, 0, len(servers))
	for _, srv := range servers {
		if srv != string(s.serverName) && srv != "" {
			out = append(out, srv)
		}
	}
	return out
}
