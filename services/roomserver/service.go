// Package roomserver is the one writer of every room's event graph. It
// builds local events (signed by the key-server), runs every event through
// one input pipeline (signatures, auth rules, state resolution, all from
// gomatrixserverlib), stores events and state snapshots in PostgreSQL and
// publishes each committed event on JetStream through an outbox.
package roomserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/lru"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/roomserver/directory"
	"github.com/myelin-chat/myelin/services/roomserver/memberview"
	"github.com/myelin-chat/myelin/services/roomserver/signing"
	"github.com/myelin-chat/myelin/services/roomserver/store"
)

// Sentinel errors; handler.go turns them into gRPC codes.
var (
	// ErrRoomNotFound: the room is unknown.
	ErrRoomNotFound = errors.New("room not found")
	// ErrEventNotFound: the event is unknown.
	ErrEventNotFound = errors.New("event not found")
	// ErrForbidden: the room version's auth rules refuse the event.
	ErrForbidden = errors.New("not allowed by the auth rules")
	// ErrBadRequest: malformed input (IDs, content, state keys).
	ErrBadRequest = errors.New("invalid request")
	// ErrEventTooLarge: the event would exceed the spec's size limits.
	ErrEventTooLarge = errors.New("event too large")
	// ErrUnsupportedRoomVersion: not a stable room version.
	ErrUnsupportedRoomVersion = errors.New("unsupported room version")
	// ErrNoState: the event is an outlier, so no state is known at it.
	ErrNoState = errors.New("no state known at this event")
	// ErrUndeliverable: NATS is unreachable, so an event committed now
	// could not reach its readers (the client-API's copy, /sync) until it
	// is back. Local writes are refused while it lasts (see deliverable).
	ErrUndeliverable = errors.New("room events cannot be delivered now: NATS is unreachable")
)

// Deps are what the room-server needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	JetStream   jetstream.JetStream
	KeyServer   keyserverv1.KeyServiceClient
	// ServerKeys gives the verify keys of every server (signature checks).
	ServerKeys keyserverv1.ServerKeyServiceClient
	// SignaturesCheckedCallers are the callers (rpc.CallerOf names: a
	// certificate's in the split shape, the dialled name in-process) whose
	// InputEvent.signatures_checked is honoured; from any other caller
	// the flag is ignored and the signatures are checked here.
	SignaturesCheckedCallers []string
}

// Service is a running room-server.
type Service struct {
	cfg        Config
	log        *zap.Logger
	serverName spec.ServerName
	store      *store.Store
	js         jetstream.JetStream
	signer     *signing.Signer
	verifier   gomatrixserverlib.JSONVerifier
	locks      *roomLocks
	// sigCheckedCallers: Deps.SignaturesCheckedCallers.
	sigCheckedCallers []string

	snapshots *lru.Cache[int64, snapshot]
	events    *lru.Cache[int64, *eventEntry]
	// eventRewrites counts changes of stored events' JSON (forgetEvent).
	eventRewrites atomic.Uint64
	stateKeys     *lru.Cache[store.StateKey, int64]
	// roomVersions caches room ID -> version (immutable once created).
	roomVersions *lru.Cache[string, gomatrixserverlib.RoomVersion]
	// memberViews caches each snapshot's memberships and history
	// visibility (fedquery.go).
	memberViews *memberview.Views
	// templateKey signs make_join/leave/knock templates for their auth
	// check only (fedjoin.go).
	templateKey templateKey

	// directory answers the alias and published-room-list RPCs.
	directory *directory.Service

	// wake tells the publisher that the outbox grew.
	wake chan struct{}
}

// New opens the store (running migrations) and makes sure the JetStream
// streams exist. It does not call the key-server: keys are fetched when
// first needed, so the key-server may start later.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.JetStream == nil || deps.KeyServer == nil || deps.ServerKeys == nil {
		return nil, errors.New("roomserver: Logger, ServerName, JetStream, KeyServer and ServerKeys are required")
	}
	serverName := spec.ServerName(deps.ServerName)
	sg := signing.NewSigner(serverName, deps.KeyServer, deps.ServerKeys)
	if err := ensureStreams(ctx, deps.JetStream, cfg.StreamReplicas); err != nil {
		return nil, err
	}
	tk, err := newTemplateKey()
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("roomserver store: %w", err)
	}
	s := &Service{
		cfg:               cfg,
		log:               deps.Logger,
		serverName:        serverName,
		store:             st,
		js:                deps.JetStream,
		signer:            sg,
		verifier:          signing.NewVerifier(deps.ServerKeys, cfg.KeyCacheTTL),
		locks:             newRoomLocks(),
		sigCheckedCallers: slices.Clone(deps.SignaturesCheckedCallers),
		snapshots: lru.NewWeighted[int64, snapshot](cfg.StateCacheSize, cfg.StateCacheMaxEntries,
			func(s snapshot) int { return len(s.state) }),
		events: lru.NewWeighted[int64, *eventEntry](cfg.EventCacheSize, cfg.EventCacheMaxBytes,
			func(e *eventEntry) int { return eventMemoryPerJSONByte * len(e.pdu.JSON()) }),
		stateKeys:    lru.New[store.StateKey, int64](cfg.StateKeyCacheSize),
		roomVersions: lru.New[string, gomatrixserverlib.RoomVersion](cfg.RoomVersionCacheSize),
		templateKey:  tk,
		wake:         make(chan struct{}, 1),
	}
	s.memberViews = memberview.New(viewSource{s}, cfg.MemberViewCacheSize, cfg.MemberViewMaxEntries)
	s.directory = directory.New(st, serverName, func(ctx context.Context, roomID string) (bool, error) {
		_, err := s.room(ctx, roomID)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	})
	s.directory.PublishAliasChanges(deps.JetStream)
	return s, nil
}

// ensureStreams creates the JetStream streams when they are missing. A
// stream that exists is left alone: the process (pkg/myelin) already ran
// bus.EnsureStreams with nats.replicas, and updating it here with another
// replica count would fight that.
func ensureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := js.Stream(ctx, bus.RoomEventsStream); err == nil {
		return nil
	}
	return bus.EnsureStreams(ctx, js, replicas)
}

// RegisterGRPC registers the RoomService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	roomserverv1.RegisterRoomServiceServer(g, &handler{svc: s})
}

// RegisterHTTP is a no-op: the room-server serves no HTTP.
func (s *Service) RegisterHTTP(chi.Router) {}

// Run publishes committed events (first any left unpublished by an earlier
// run), and prunes the outbox rows already published, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	pruned := make(chan struct{})
	go func() {
		defer close(pruned)
		s.runOutboxPruner(ctx)
	}()
	err := s.runPublisher(ctx)
	<-pruned
	return err
}

// Ready reports whether the service can serve: its database answers.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// Close releases the store. Call it after Run has returned.
func (s *Service) Close() { s.store.Close() }
