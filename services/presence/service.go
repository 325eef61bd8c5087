// Package presence owns the homeserver's ephemeral data: presence (with
// idle and offline timers), typing notifications and read receipts. Other
// services write and read it over gRPC (PresenceService); every change is
// also published on JetStream (stream MYELIN_EPHEMERAL) so that readers
// such as the client-API's /sync wake up at once. It learns room
// memberships (for typing and receipt permissions and presence visibility)
// from the room-server's JetStream stream, into its own table.
package presence

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/presence/store"
)

// Sentinel errors; handler.go turns them into gRPC codes.
var (
	// ErrForbidden: the user may not do or see this.
	ErrForbidden = errors.New("forbidden")
	// ErrBadRequest: malformed input.
	ErrBadRequest = errors.New("invalid request")
)

// Deps are what the presence service needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	JetStream   jetstream.JetStream
	// RoomServer answers membership questions the local membership copy
	// cannot answer yet (a join committed but not consumed).
	RoomServer roomserverv1.RoomServiceClient
}

// Service is a running presence service.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName string
	clock      Clock
	store      *store.Store
	js         jetstream.JetStream
	rooms      roomserverv1.RoomServiceClient
	consumer   jetstream.Consumer

	// writeMu serializes every change: a position is allocated and
	// committed under it, so positions become visible in order and a
	// reader that saw position p has seen every change up to p.
	writeMu sync.Mutex
	// pos is the highest committed position.
	pos atomic.Int64

	typing *typingState
	// idleKick wakes the idle sweep when a deadline may have moved earlier.
	idleKick chan struct{}
	// activity spares /sync a database write per request (status.go).
	activity activityCache
}

// New opens the store and creates the membership consumer; Run starts
// consuming and the timers.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.JetStream == nil || deps.RoomServer == nil {
		return nil, errors.New("presence: Logger, ServerName, JetStream and RoomServer are required")
	}
	clock := cfg.Clock
	if clock == nil {
		clock = systemClock{}
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("presence store: %w", err)
	}
	s := &Service{
		cfg:        cfg,
		log:        deps.Logger,
		serverName: deps.ServerName,
		clock:      clock,
		store:      st,
		js:         deps.JetStream,
		rooms:      deps.RoomServer,
		typing:     newTypingState(),
		idleKick:   make(chan struct{}, 1),
	}
	pos, err := st.Position(ctx)
	if err != nil {
		st.Close()
		return nil, err
	}
	s.pos.Store(pos)
	if s.consumer, err = s.createConsumer(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// RegisterGRPC registers the PresenceService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	presencev1.RegisterPresenceServiceServer(g, &handler{svc: s})
}

// RegisterHTTP is a no-op: clients reach presence through the client-API.
func (s *Service) RegisterHTTP(chi.Router) {}

// Run consumes memberships and runs the typing and idle timers until ctx
// ends.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.consumeMemberships(gctx) })
	g.Go(func() error { return s.runTypingExpiry(gctx) })
	g.Go(func() error { return s.runIdleSweep(gctx) })
	return g.Wait()
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

// kick wakes a timer loop without blocking.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
