// Package appservice is the appservice service: it talks to application
// services (bridges). It consumes the room-server's committed events (and
// the presence service's typing, receipts and presence, and the
// client-API's to-device messages for appservices' users) from JetStream,
// queues for each registered appservice what it is interested in, in its
// own schema, and pushes the queues as transactions
// (PUT /_matrix/app/v1/transactions/{txnId}); and it serves a gRPC API for
// the requests the client-API makes of appservices on a client's behalf
// (user and alias queries, third-party lookups, ping) and an admin
// listing.
package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/metrics"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/appservice/store"
)

// Deps are what the appservice service needs from the process.
type Deps struct {
	Logger      *zap.Logger
	ServerName  string
	DatabaseURL string
	JetStream   jetstream.JetStream
	// Registrations are the appservices, loaded by the process at start.
	Registrations *asreg.Set
	// RoomServer answers the room copy's first look at a room
	// (QueryState).
	RoomServer roomserverv1.RoomServiceClient
	// HTTPClient reaches the appservices (nil: a plain http.Client; the
	// timeouts are the service's own).
	HTTPClient *http.Client
	// Metrics is the process's registry (nil: no metrics).
	Metrics *metrics.Metrics
}

// Service is a running appservice service.
type Service struct {
	cfg       Config
	log       *zap.Logger
	regs      *asreg.Set
	store     *store.Store
	js        jetstream.JetStream
	rooms     roomserverv1.RoomServiceClient
	client    *asClient
	consumers []*bus.OrderedConsumer
	pusher    *pusher
	stats     *stats
	roomCache *roomCache // the rooms consumer's
	// aliasRooms are rooms the alias consumer's batch changed, forgotten
	// by roomCache after its commit (aliasesApplied).
	aliasRoomsMu sync.Mutex
	aliasRooms   []string
}

// New opens the store; Run consumes and pushes while this replica holds
// the pushing lock.
func New(ctx context.Context, cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.ServerName == "" || deps.JetStream == nil || deps.RoomServer == nil {
		return nil, errors.New("appservice: Logger, ServerName, JetStream and RoomServer are required")
	}
	st, err := store.Open(ctx, deps.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("appservice store: %w", err)
	}
	hc := deps.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	s := &Service{
		cfg:    cfg,
		log:    deps.Logger,
		regs:   deps.Registrations,
		store:  st,
		js:     deps.JetStream,
		rooms:  deps.RoomServer,
		client: &asClient{http: hc},
		stats:  newStats(),
	}
	s.roomCache = newRoomCache(cfg.RoomCacheSize)
	s.pusher = newPusher(s)
	if deps.Metrics != nil {
		if err := deps.Metrics.Register(s.stats.collectors(s)...); err != nil {
			st.Close()
			return nil, fmt.Errorf("appservice metrics: %w", err)
		}
	}
	s.consumers = s.consumerSpecs()
	return s, nil
}

// RegisterGRPC registers the AppserviceService.
func (s *Service) RegisterGRPC(g *grpc.Server) {
	appservicev1.RegisterAppserviceServiceServer(g, &handler{svc: s})
}

// RegisterHTTP serves the admin listing, GET /_myelin/admin/appservices.
func (s *Service) RegisterHTTP(r chi.Router) {
	r.Get(AdminPath, s.serveAdminList)
}

// Run waits for the pushing lock and, while this replica holds it,
// consumes the streams into the queues and pushes them, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if s.regs.Len() == 0 {
		s.log.Info("no application service registered (appservice.config_files is empty)")
	}
	return s.pusher.run(ctx)
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

// consumerSpecs are the durable consumers the pushing replica runs.
func (s *Service) consumerSpecs() []*bus.OrderedConsumer {
	mk := func(suffix, stream string, deliver jetstream.DeliverPolicy,
		apply func(context.Context, *store.Tx, jetstream.Msg) ([]string, error),
		prepare func(context.Context, jetstream.Msg, map[string]bool) (context.Context, error)) *bus.OrderedConsumer {
		name := s.cfg.ConsumerPrefix + "-" + suffix
		var woken []string
		// The rooms consumer keeps a room cache (roomcache.go) and may
		// skip batches that change nothing (roomEventNoop).
		var cache *roomCache
		var noop func(jetstream.Msg) bool
		var recorded time.Time // when a batch last recorded the position
		if suffix == "rooms" {
			cache, noop = s.roomCache, s.roomEventNoop
		}
		return &bus.OrderedConsumer{
			Name: name, Stream: stream, Deliver: deliver, MaxBatch: consumeBatch,
			Description: "appservice service (resumes after its position in the appservice schema)",
			Position: func(ctx context.Context) (uint64, error) {
				if cache != nil {
					cache.reset() // another replica may have consumed since
				}
				recorded = time.Time{}
				pos, err := s.store.Position(ctx, name)
				return uint64(pos), err
			},
			Apply: func(ctx context.Context, msgs []jetstream.Msg, seqs []uint64) error {
				woken = nil
				// A batch whose messages would change nothing but the
				// position is acknowledged without a transaction, as long
				// as the position was recorded in the last second. The
				// position is only where a restart resumes: the messages
				// skipped since are read again then and change nothing
				// again (the copy they were judged against is what the
				// recorded position left), so a lost skip costs at most a
				// second of messages read twice.
				if noop != nil && time.Since(recorded) < noopRecordEvery && allNoop(msgs, noop) {
					return nil
				}
				ctxs := make([]context.Context, len(msgs))
				inBatch := map[string]bool{}
				for i, m := range msgs {
					ctxs[i] = ctx
					if prepare != nil {
						var err error
						if ctxs[i], err = prepare(ctx, m, inBatch); err != nil {
							return err
						}
					}
				}
				err := s.store.Apply(ctx, name, seqs, func(tx *store.Tx, i int) error {
					ids, err := apply(ctxs[i], tx, msgs[i])
					woken = append(woken, ids...)
					return err
				})
				if err != nil && cache != nil {
					cache.reset() // rolled back: what the batch taught it may be gone
				}
				if err == nil {
					recorded = time.Now()
				}
				return err
			},
			Applied: func() {
				if suffix == "aliases" {
					s.aliasesApplied()
				}
				s.pusher.wake(woken...)
			},
		}
	}
	return []*bus.OrderedConsumer{
		mk("rooms", bus.RoomEventsStream, jetstream.DeliverAllPolicy, s.applyRoomEvent, s.prepareRoomEvent),
		// Typing, receipts and presence only matter while fresh: the
		// first consumer starts with what comes next.
		mk("ephemeral", bus.EphemeralStream, jetstream.DeliverNewPolicy, s.applyEphemeral, nil),
		// To-device messages are kept until delivered, like events.
		mk("todevice", bus.AppserviceToDeviceStream, jetstream.DeliverAllPolicy, s.applyToDevice, nil),
		mk("aliases", bus.RoomAliasesStream, jetstream.DeliverAllPolicy, s.applyAliasChange, nil),
	}
}

// noopRecordEvery is how often the rooms consumer records its position
// while it skips batches that change nothing.
const noopRecordEvery = time.Second

func allNoop(msgs []jetstream.Msg, noop func(jetstream.Msg) bool) bool {
	for _, m := range msgs {
		if !noop(m) {
			return false
		}
	}
	return true
}

// consumeBatch bounds the stream messages applied in one database
// transaction (those already received when the first is taken).
const consumeBatch = 100

// now is the clock (one place, for the stats).
func now() time.Time { return time.Now() }
