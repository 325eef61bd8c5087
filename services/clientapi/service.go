// Package clientapi serves the Matrix client-server API: accounts and
// access tokens, room creation and membership, sending and reading events,
// and /sync. Room writes go to the room-server over gRPC; what /sync and
// /messages read is the client-API's own copy of committed events, fed by
// a durable JetStream consumer of the room-server's output stream.
//
// This package only wires: the work is in internal/ (docs/architecture.md
// draws the map). The HTTP edge is internal/httpapi; the domains are
// internal/users, rooms, history, syncapi, push, keys and ephemeral;
// internal/consumers and the producers internal/wakebus,
// internal/pushgateway and internal/todeviceout move data between the
// streams, the store and other servers' services.
package clientapi

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/appservice"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/clientapi/internal/appservices"
	"github.com/myelin-chat/myelin/services/clientapi/internal/astodevice"
	"github.com/myelin-chat/myelin/services/clientapi/internal/consumers"
	"github.com/myelin-chat/myelin/services/clientapi/internal/ephemeral"
	"github.com/myelin-chat/myelin/services/clientapi/internal/history"
	"github.com/myelin-chat/myelin/services/clientapi/internal/httpapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/keys"
	"github.com/myelin-chat/myelin/services/clientapi/internal/mediahandover"
	"github.com/myelin-chat/myelin/services/clientapi/internal/push"
	"github.com/myelin-chat/myelin/services/clientapi/internal/pushgateway"
	"github.com/myelin-chat/myelin/services/clientapi/internal/rooms"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi"
	"github.com/myelin-chat/myelin/services/clientapi/internal/syncapi/notifier"
	"github.com/myelin-chat/myelin/services/clientapi/internal/todeviceout"
	"github.com/myelin-chat/myelin/services/clientapi/internal/users"
	"github.com/myelin-chat/myelin/services/clientapi/internal/wakebus"
	"github.com/myelin-chat/myelin/services/clientapi/store"
)

// Deps are what the client-API needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	JetStream   jetstream.JetStream
	// E2EKeys holds users' end-to-end keys and key backups. Nil leaves the
	// key endpoints unavailable (503) and /sync without key data.
	E2EKeys    keyserverv1.E2EKeyServiceClient
	RoomServer roomserverv1.RoomServiceClient
	// Presence serves typing, receipts and presence. Nil leaves those
	// endpoints unavailable and /sync without ephemeral data.
	Presence presencev1.PresenceServiceClient
	// Media takes over the media this service stored before the media
	// service existed (internal/mediahandover). Nil leaves them where they are.
	Media mediav1.MediaServiceClient
	// FederationSender makes requests to other homeservers for local
	// users (joins, invites, leaves and knocks through other servers,
	// remote profiles, aliases, directories and keys, backfill). Nil when
	// federation is off: only this server's rooms and users are reachable.
	FederationSender fedsenderv1.FederationSenderServiceClient
	// Appservices are the application service registrations
	// (appservice.config_files): their as_tokens authenticate, their
	// exclusive namespaces are theirs alone. Nil: none.
	Appservices *appservice.Set
	// Appservice is the appservice service, asked about unknown users
	// and aliases in appservices' namespaces and for the third-party
	// lookups and pings. Nil leaves those to answer as without appservices.
	Appservice appservicev1.AppserviceServiceClient
}

// Service is a running client-API: its parts, wired.
type Service struct {
	cfg   Config
	log   *zap.Logger
	store *store.Store
	// now is the clock for token expiry; tests replace it.
	now func() time.Time

	// The HTTP edge the routes are served through.
	http *httpapi.Server
	// The domains, each serving its routes.
	users        *users.Service
	roomDomain   *rooms.Service
	history      *history.Service
	sync         *syncapi.Service
	push         *push.Service
	keyEndpoints *keys.Service
	ephemeral    *ephemeral.Service
	appservices  *appservices.Service

	// notifier wakes long polls and writes waiting for the copy.
	notifier *notifier.Notifier
	// keys is the client-API's side of the key-server (hand-over, device
	// change queue, SyncKeys).
	keys *keys.Bridge
	// Consumers: the single writer's (roomEvents, receipts, run by
	// leader) and every replica's (keyChanges, ephemeralWakes; nil without
	// a presence service).
	roomEvents     *consumers.RoomEvents
	receipts       *consumers.Receipts
	keyChanges     *consumers.KeyChanges
	ephemeralWakes *consumers.Ephemeral
	// toDeviceIn stores other servers' send-to-device messages (every
	// replica runs it).
	toDeviceIn *consumers.ToDeviceIn
	// Producers: wake-ups for the other replicas, pushes to gateways.
	wakeBus *wakebus.Bus
	pushers *pushgateway.Dispatcher
	// mediaHandover moves the media stored before the media service.
	mediaHandover *mediahandover.Handover
}

// New opens the store, loads room memberships for the notifier and
// creates the durable consumer; Run starts consuming.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.ServerName == "" || deps.RoomServer == nil || deps.JetStream == nil {
		return nil, fmt.Errorf("clientapi: ServerName, RoomServer and JetStream are required")
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxDatabaseConns)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: deps.Logger, store: st, now: time.Now}
	s.mediaHandover = mediahandover.New(st, deps.Media, deps.Logger)
	s.history = history.New(st, deps.RoomServer, deps.FederationSender, deps.Logger)
	members, err := st.JoinedMembers(ctx)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("load memberships: %w", err)
	}
	s.notifier = notifier.New(members, st.Reader().HasEvent, deps.JetStream.Conn(), deps.Logger)
	if s.wakeBus, err = wakebus.Start(deps.JetStream.Conn(), s.notifier, deps.Logger); err != nil {
		st.Close()
		return nil, err
	}
	s.push = push.New(cfg.Push, deps.ServerName, st, s.history, s.wakeBus, deps.Logger)
	s.pushers = pushgateway.New(st, cfg.Push, deps.Logger)
	s.keys = keys.NewBridge(deps.E2EKeys, st, deps.Logger)
	s.appservices = appservices.New(deps.Appservices, deps.Appservice, deps.RoomServer, deps.Logger)
	s.users = users.New(users.Deps{
		Config: users.Config{
			Registration: cfg.Registration, PublicBaseURL: cfg.PublicBaseURL, DefaultRoomVersion: cfg.DefaultRoomVersion,
			RateLimit: cfg.RateLimit, Turn: cfg.Turn, Support: cfg.Support,
		},
		ServerName: deps.ServerName, Store: st, Rooms: deps.RoomServer, Presence: deps.Presence, Log: deps.Logger,
		Now:           func() time.Time { return s.now() },
		DeviceChanges: s.keys, Wake: s.wakeBus, PushRules: s.push, Erasures: s.history, Members: s.notifier,
		Appservices: deps.Appservices, AppserviceQueries: s.appservices,
		Federation: deps.FederationSender,
	})
	if err := s.users.Accounts.EnsureAppserviceSenders(ctx); err != nil {
		s.wakeBus.Stop()
		st.Close()
		return nil, err
	}
	s.roomDomain = rooms.New(rooms.Config{DefaultRoomVersion: cfg.DefaultRoomVersion}, deps.ServerName, st, deps.RoomServer, deps.FederationSender, s.history, s.users, s.notifier, deps.Logger)
	s.roomDomain.SetAppservices(deps.Appservices, s.appservices)
	asToDevice := astodevice.New(deps.JetStream, deps.Appservices, st.DeviceIDs, deps.Logger)
	s.ephemeral = ephemeral.New(deps.ServerName, deps.Presence, deps.RoomServer, deps.Logger)
	s.sync = syncapi.New(syncapi.Deps{
		Config: cfg.Sync, ServerName: deps.ServerName, Store: st, Rooms: deps.RoomServer, Presence: deps.Presence,
		History: s.history, Push: s.push, Keys: s.keys, Notifier: s.notifier, Wake: s.wakeBus,
		ToDeviceOut: todeviceout.New(deps.JetStream, deps.Logger), AppserviceToDevice: asToDevice, Log: deps.Logger,
	})
	s.keyEndpoints = keys.New(deps.ServerName, st, deps.E2EKeys, deps.FederationSender, s.keys, s.notifier, s.users, deps.Logger)
	s.http = httpapi.NewServer(deps.Logger, s.users.Accounts, cfg.RateLimit, time.Now)
	s.http.SetAppservices(deps.Appservices, s.users.Accounts)
	if s.roomEvents, err = consumers.NewRoomEvents(ctx, deps.JetStream, cfg.ConsumerName, st, s.push, s.wakeBus, s.pushers, s.users, deps.Logger); err != nil {
		s.wakeBus.Stop()
		st.Close()
		return nil, err
	}
	if err := s.keys.DropEmptyTables(ctx); err != nil {
		s.wakeBus.Stop()
		st.Close()
		return nil, err
	}
	if s.toDeviceIn, err = consumers.NewToDeviceIn(ctx, deps.JetStream, cfg.ToDeviceInConsumerName, deps.ServerName, st, s.wakeBus, asToDevice, deps.Logger); err != nil {
		s.wakeBus.Stop()
		st.Close()
		return nil, err
	}
	if s.keyChanges, err = consumers.NewKeyChanges(ctx, deps.JetStream, s.notifier, deps.Logger); err != nil {
		s.wakeBus.Stop()
		st.Close()
		return nil, err
	}
	if deps.Presence != nil {
		if s.ephemeralWakes, err = consumers.NewEphemeral(ctx, deps.JetStream, s.notifier, deps.Logger); err != nil {
			s.wakeBus.Stop()
			st.Close()
			return nil, err
		}
		if s.receipts, err = consumers.NewReceipts(ctx, deps.JetStream, cfg.Push.ReceiptsConsumerName, deps.ServerName, st, s.wakeBus, deps.Logger); err != nil {
			s.wakeBus.Stop()
			st.Close()
			return nil, err
		}
	}
	return s, nil
}

// RegisterGRPC registers the UserService (handler.go).
func (s *Service) RegisterGRPC(g *grpc.Server) {
	clientapiv1.RegisterUserServiceServer(g, &userHandler{svc: s})
}

// Run consumes room events, delivers pushes and copies receipts while this
// replica leads (leader), follows the presence service's and the
// key-server's change notifications, hands the old key tables and media
// over, and retries queued device changes, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	defer s.notifier.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.leader().Run(gctx) })
	g.Go(func() error { return s.keyChanges.Run(gctx) })
	g.Go(func() error { return s.toDeviceIn.Run(gctx) })
	g.Go(func() error {
		s.keys.HandOver(gctx)
		return nil
	})
	g.Go(func() error { return s.keys.RetryLoop(gctx) })
	g.Go(func() error { return s.mediaHandover.Run(gctx) })
	if s.ephemeralWakes != nil {
		g.Go(func() error { return s.ephemeralWakes.Run(gctx) })
	}
	return g.Wait()
}

// leader is the single-writer work: storing room events, delivering
// pushes (one deliverer, so no notification is pushed twice), pruning
// notifications and copying read receipts for unread counts (one writer,
// in order), run by the replica that holds the consumer lock.
func (s *Service) leader() *consumers.Leader {
	l := &consumers.Leader{Store: s.store, Name: s.cfg.ConsumerName, Log: s.log}
	l.Jobs = append(l.Jobs, s.roomEvents.Run, s.pushers.Run)
	if s.cfg.Push.NotificationRetention > 0 {
		l.Jobs = append(l.Jobs, func(ctx context.Context) error { s.push.PruneNotifications(ctx); return nil })
	}
	if s.receipts != nil {
		l.Jobs = append(l.Jobs, s.receipts.Run)
	}
	return l
}

// Ready reports whether the service can serve: its database answers and
// the end-to-end keys are in the key-server.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if !s.keys.Ready() {
		return ErrKeysNotHandedOver
	}
	return nil
}

// Close releases the store.
func (s *Service) Close() {
	s.wakeBus.Stop()
	s.notifier.Close()
	s.store.Close()
}
