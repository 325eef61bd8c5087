package myelin

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/go-chi/chi/v5"
	"google.golang.org/grpc"

	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/logging"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/appservice"
	"github.com/myelin-chat/myelin/services/clientapi"
	"github.com/myelin-chat/myelin/services/fedreceiver"
	"github.com/myelin-chat/myelin/services/fedsender"
	"github.com/myelin-chat/myelin/services/keyserver"
	"github.com/myelin-chat/myelin/services/media"
	"github.com/myelin-chat/myelin/services/presence"
	"github.com/myelin-chat/myelin/services/roomserver"
)

// Target names. "all" runs every service; "edge" is the HTTP router that
// sits in front of split services.
const (
	TargetAll              = "all"
	TargetKeyServer        = "key-server"
	TargetRoomServer       = "room-server"
	TargetClientAPI        = "client-api"
	TargetPresence         = "presence"
	TargetMedia            = "media"
	TargetFederationSender = "federation-sender"
	TargetEdge             = "edge"
	// TargetFederationReceiver serves the federation API to other
	// homeservers.
	TargetFederationReceiver = "federation-receiver"
	// TargetAppservice pushes transactions to application services and
	// answers the client-API's queries of them (issue #17).
	TargetAppservice = "appservice"
)

// service is the shape every service has: it registers onto the process's
// one gRPC server and one HTTP router, and runs until ctx ends.
type service interface {
	RegisterGRPC(*grpc.Server)
	RegisterHTTP(chi.Router)
	Run(ctx context.Context) error
	// Ready reports whether the service can serve now (health.go).
	Ready(ctx context.Context) error
	Close()
}

// module is one row of the module table.
type module struct {
	name string
	// start builds the service from the process's shared parts.
	start func(ctx context.Context, p *process) (service, error)
}

// modules is the module table, in start order. "all" is every row.
var modules = []module{
	{name: TargetKeyServer, start: startKeyServer},
	{name: TargetRoomServer, start: startRoomServer},
	{name: TargetPresence, start: startPresence},
	{name: TargetClientAPI, start: startClientAPI},
	{name: TargetMedia, start: startMedia},
	{name: TargetFederationSender, start: startFederationSender},
	{name: TargetFederationReceiver, start: startFederationReceiver},
	{name: TargetAppservice, start: startAppservice},
}

// ParseTargets expands a comma-separated target list. "all" is every
// service; "edge" may be combined with anything.
func ParseTargets(s string) ([]string, error) {
	known := map[string]bool{TargetEdge: true}
	for _, m := range modules {
		known[m.name] = true
	}
	set := map[string]bool{}
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
		case t == TargetAll:
			for _, m := range modules {
				set[m.name] = true
			}
		case known[t]:
			set[t] = true
		default:
			return nil, fmt.Errorf("unknown target %q (known: all, %s)", t, strings.Join(TargetNames(), ", "))
		}
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("no target given")
	}
	var out []string
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

// TargetNames lists every target except "all".
func TargetNames() []string {
	names := []string{TargetEdge}
	for _, m := range modules {
		names = append(names, m.name)
	}
	sort.Strings(names)
	return names
}

func startKeyServer(ctx context.Context, p *process) (service, error) {
	return keyserver.New(ctx, p.cfg.KeyServer, keyserver.Deps{
		Logger:      p.log.With(logging.Service(TargetKeyServer)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.KeyServer.DatabaseURL),
		Federation:  p.fedTransport,
		JetStream:   p.js,
	})
}

func startRoomServer(ctx context.Context, p *process) (service, error) {
	ks, err := p.dial(TargetRoomServer, TargetKeyServer)
	if err != nil {
		return nil, err
	}
	return roomserver.New(ctx, p.cfg.RoomServer, roomserver.Deps{
		Logger:      p.log.With(logging.Service(TargetRoomServer)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.RoomServer.DatabaseURL),
		JetStream:   p.js,
		KeyServer:   keyserverv1.NewKeyServiceClient(ks),
		ServerKeys:  keyserverv1.NewServerKeyServiceClient(ks),

		SignaturesCheckedCallers: SignaturesCheckedCallers(),
	})
}

func startClientAPI(ctx context.Context, p *process) (service, error) {
	ks, err := p.dial(TargetClientAPI, TargetKeyServer)
	if err != nil {
		return nil, err
	}
	rs, err := p.dial(TargetClientAPI, TargetRoomServer)
	if err != nil {
		return nil, err
	}
	ps, err := p.dial(TargetClientAPI, TargetPresence)
	if err != nil {
		return nil, err
	}
	ms, err := p.dial(TargetClientAPI, TargetMedia)
	if err != nil {
		return nil, err
	}
	// The appservice service only when there are appservices to ask.
	var as appservicev1.AppserviceServiceClient
	if p.appservices.Len() > 0 {
		conn, err := p.dial(TargetClientAPI, TargetAppservice)
		if err != nil {
			return nil, err
		}
		as = appservicev1.NewAppserviceServiceClient(conn)
	}
	deps := clientapi.Deps{
		Logger:      p.log.With(logging.Service(TargetClientAPI)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.ClientAPI.DatabaseURL),
		JetStream:   p.js,
		E2EKeys:     keyserverv1.NewE2EKeyServiceClient(ks),
		RoomServer:  roomserverv1.NewRoomServiceClient(rs),
		Presence:    presencev1.NewPresenceServiceClient(ps),
		Media:       mediav1.NewMediaServiceClient(ms),
		Appservices: p.appservices,
		Appservice:  as,
	}
	// With federation on, local users reach other servers' rooms, users
	// and keys through the federation sender (in the split shape at
	// services.federation_sender.grpc; without it they reach only this
	// server's, and the process says so).
	if p.cfg.Federation.Enabled {
		if p.address(TargetFederationSender).GRPC == "" && !slices.Contains(p.targets, TargetFederationSender) {
			p.log.Warn("federation is on but services.federation_sender.grpc is not set: local users cannot reach other servers' rooms and users")
		} else {
			fs, err := p.dial(TargetClientAPI, TargetFederationSender)
			if err != nil {
				return nil, err
			}
			deps.FederationSender = fedsenderv1.NewFederationSenderServiceClient(fs)
		}
	}
	return clientapi.New(ctx, p.cfg.ClientAPI, deps)
}

func startPresence(ctx context.Context, p *process) (service, error) {
	rs, err := p.dial(TargetPresence, TargetRoomServer)
	if err != nil {
		return nil, err
	}
	return presence.New(ctx, p.cfg.Presence, presence.Deps{
		Logger:      p.log.With(logging.Service(TargetPresence)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.Presence.DatabaseURL),
		JetStream:   p.js,
		RoomServer:  roomserverv1.NewRoomServiceClient(rs),
	})
}

func startMedia(ctx context.Context, p *process) (service, error) {
	ca, err := p.dial(TargetMedia, TargetClientAPI)
	if err != nil {
		return nil, err
	}
	cfg := p.cfg.Media
	if cfg.Storage.Backend == media.BackendFile && cfg.Storage.Path == "" {
		cfg.Storage.Path = p.cfg.dataPath("media")
	}
	deps := media.Deps{
		Logger:      p.log.With(logging.Service(TargetMedia)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(cfg.DatabaseURL),
		Users:       clientapiv1.NewUserServiceClient(ca),
	}
	// With federation on, federation media checks X-Matrix with the
	// key-server's keys, and remote media is fetched over federation,
	// signed with the key-server's key; without federation the media
	// process needs no key-server.
	if p.cfg.Federation.Enabled {
		ks, err := p.dial(TargetMedia, TargetKeyServer)
		if err != nil {
			return nil, err
		}
		deps.ServerKeys = keyserverv1.NewServerKeyServiceClient(ks)
		if cfg.Remote.Enabled {
			deps.Federation = federation.NewClient(p.fedTransport, deps.ServerKeys)
		}
	}
	return media.New(ctx, cfg, deps)
}

func startFederationReceiver(ctx context.Context, p *process) (service, error) {
	conns := map[string]*grpc.ClientConn{}
	for _, t := range []string{TargetKeyServer, TargetRoomServer, TargetPresence, TargetClientAPI} {
		c, err := p.dial(TargetFederationReceiver, t)
		if err != nil {
			return nil, err
		}
		conns[t] = c
	}
	return fedreceiver.New(ctx, p.cfg.FederationReceiver, fedreceiver.Deps{
		Logger:      p.log.With(logging.Service(TargetFederationReceiver)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.FederationReceiver.DatabaseURL),
		Version:     buildVersion(),
		JetStream:   p.js,
		Federation:  p.fedTransport,
		ServerKeys:  keyserverv1.NewServerKeyServiceClient(conns[TargetKeyServer]),
		E2EKeys:     keyserverv1.NewE2EKeyServiceClient(conns[TargetKeyServer]),
		RoomServer:  roomserverv1.NewRoomServiceClient(conns[TargetRoomServer]),
		Presence:    presencev1.NewPresenceServiceClient(conns[TargetPresence]),
		Users:       clientapiv1.NewUserServiceClient(conns[TargetClientAPI]),
	})
}

func startFederationSender(ctx context.Context, p *process) (service, error) {
	ks, err := p.dial(TargetFederationSender, TargetKeyServer)
	if err != nil {
		return nil, err
	}
	rs, err := p.dial(TargetFederationSender, TargetRoomServer)
	if err != nil {
		return nil, err
	}
	return fedsender.New(ctx, p.cfg.FederationSender, fedsender.Deps{
		Logger:      p.log.With(logging.Service(TargetFederationSender)),
		ServerName:  p.cfg.ServerName,
		DatabaseURL: p.cfg.databaseURL(p.cfg.FederationSender.DatabaseURL),
		JetStream:   p.js,
		RoomServer:  roomserverv1.NewRoomServiceClient(rs),
		ServerKeys:  keyserverv1.NewServerKeyServiceClient(ks),
		Federation:  p.fedTransport,
		Metrics:     p.metrics,
	})
}

func startAppservice(ctx context.Context, p *process) (service, error) {
	rs, err := p.dial(TargetAppservice, TargetRoomServer)
	if err != nil {
		return nil, err
	}
	return appservice.New(ctx, p.cfg.Appservice, appservice.Deps{
		Logger:        p.log.With(logging.Service(TargetAppservice)),
		ServerName:    p.cfg.ServerName,
		DatabaseURL:   p.cfg.databaseURL(p.cfg.Appservice.DatabaseURL),
		JetStream:     p.js,
		Registrations: p.appservices,
		RoomServer:    roomserverv1.NewRoomServiceClient(rs),
		Metrics:       p.metrics,
	})
}
