// Package myelin assembles services into a process: it reads the module
// table, provisions the infrastructure the configuration leaves empty
// (embedded NATS, local PostgreSQL), opens the process's one gRPC server and
// one HTTP server, and runs every requested service until one fails or the
// context ends.
package myelin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	asreg "github.com/myelin-chat/myelin/pkg/appservice"
	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/devinfra"
	"github.com/myelin-chat/myelin/pkg/edge"
	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/metrics"
	"github.com/myelin-chat/myelin/pkg/rpc"
)

// Process is a running Myelin process.
type Process struct {
	p    *process
	g    *errgroup.Group
	stop context.CancelFunc
	done chan struct{}
	err  error
}

// process holds what services share within one OS process.
type process struct {
	cfg     Config
	targets []string
	log     *zap.Logger
	grpcLis net.Listener
	httpLis net.Listener
	grpcSrv *grpc.Server
	router  chi.Router
	nc      *nats.Conn
	js      jetstream.JetStream
	conns   map[string]*grpc.ClientConn
	// creds are the mutual TLS material (grpc.tls; nil: plain gRPC).
	creds    *rpc.Credentials
	cleanups []func()
	mu       sync.Mutex
	// pprofAddr is the debug.pprof_listen listener's address, if any.
	pprofAddr string
	// metricsAddr is the metrics.listen listener's address, if any.
	metricsAddr string
	// inProcLis is the in-memory listener the gRPC server also serves, for
	// calls between services of this process (rpc.ListenInProcess).
	inProcLis *bufconn.Listener
	// lock is data_dir's lock file, held while this process runs (nil
	// when it keeps nothing there).
	lock *os.File
	// fedTransport is the outbound federation transport of this process.
	fedTransport *federation.Transport
	// fed is the federation listener, when this process has one.
	fed *federationListener
	// metrics is the process's Prometheus registry.
	metrics *metrics.Metrics
	// appservices are the registrations of appservice.config_files.
	appservices *asreg.Set
}

// Run starts the process and blocks until ctx ends or a service fails.
func Run(ctx context.Context, cfg Config, targets []string, log *zap.Logger) error {
	p, err := Start(ctx, cfg, targets, log)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Start provisions infrastructure, starts the requested services and
// returns once they are serving.
func Start(ctx context.Context, cfg Config, targets []string, log *zap.Logger) (_ *Process, err error) {
	p := &process{cfg: cfg, targets: targets, log: log, conns: map[string]*grpc.ClientConn{}}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	// First what is quick to check and may refuse the start: the data
	// directory's lock, then every listen address, so that a second
	// process or a port in use is reported before PostgreSQL and NATS are
	// started (and without touching the running process's).
	if p.usesDataDir() {
		lock, err := lockDataDir(cfg.DataDir, log)
		if err != nil {
			return nil, err
		}
		p.lock = lock
		p.cleanups = append(p.cleanups, func() { unlockDataDir(lock) })
	}
	// The appservice registrations: a bad file refuses the start of any
	// process, before anything is provisioned.
	if p.appservices, err = asreg.LoadFiles(cfg.Appservice.ConfigFiles, cfg.ServerName); err != nil {
		return nil, err
	}
	if p.grpcLis, err = listen("grpc.listen", cfg.GRPC.Listen); err != nil {
		return nil, err
	}
	p.inProcLis = rpc.ListenInProcess()
	if p.httpLis, err = listen("http.listen", cfg.HTTP.Listen); err != nil {
		return nil, err
	}
	if err := p.startPprof(); err != nil {
		return nil, err
	}
	m := metrics.New(Version(), targets)
	p.metrics = m
	if err := p.startMetrics(m); err != nil {
		return nil, err
	}
	if err := p.provision(ctx); err != nil {
		return nil, err
	}
	if p.creds, err = rpc.LoadCredentials(cfg.GRPC.TLS); err != nil {
		return nil, err
	}
	grpcOpts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor())}
	if p.creds != nil {
		// Mutual TLS on the network listener; each service admits only
		// its callers (in-process calls stay plain and admitted).
		grpcOpts = append(grpcOpts, p.creds.ServerOption())
		grpcOpts = append(grpcOpts, CallerPolicy().ServerOptions()...)
	}
	p.grpcSrv = rpc.NewServer(log, grpcOpts...)
	r := chi.NewRouter()
	r.Use(m.HTTP, matrixhttp.Recover(log), matrixhttp.CORS)
	r.NotFound(matrixhttp.NotFoundHandler)
	r.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	p.router = r
	fedRouter := newFederationRouter(m, log)
	servesFederation := slices.Contains(targets, TargetEdge)
	if p.fedTransport, err = p.newFederationTransport(); err != nil {
		return nil, err
	}
	p.cleanups = append(p.cleanups, p.fedTransport.CloseIdleConnections)
	ready := &readiness{services: map[string]service{}, nc: p.nc, log: log}
	r.Get("/healthz", serveHealthz)
	r.Get("/readyz", ready.serveReadyz)

	var services []service
	var names []string
	for _, m := range modules {
		if !slices.Contains(targets, m.name) {
			continue
		}
		svc, err := m.start(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", m.name, err)
		}
		p.cleanups = append(p.cleanups, svc.Close)
		svc.RegisterGRPC(p.grpcSrv)
		svc.RegisterHTTP(p.router)
		if fs, ok := svc.(federationService); ok {
			fs.RegisterFederationHTTP(fedRouter)
			servesFederation = true
		}
		services = append(services, svc)
		names = append(names, m.name)
		ready.services[m.name] = svc
	}
	var grpcServices []string
	for name := range p.grpcSrv.GetServiceInfo() {
		grpcServices = append(grpcServices, name)
	}
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(p.grpcSrv, healthSrv)
	// Not serving until the first check (right after start) says so.
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	for _, name := range grpcServices {
		healthSrv.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	if slices.Contains(targets, TargetEdge) {
		if err := edge.Mount(p.router, p.edgeRoutes()); err != nil {
			return nil, err
		}
		if cfg.Federation.Enabled {
			if err := edge.Mount(fedRouter, p.federationEdgeRoutes()); err != nil {
				return nil, err
			}
		}
	}
	if p.fed, err = p.openFederationListener(fedRouter, servesFederation); err != nil {
		return nil, err
	}

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	g, gctx := errgroup.WithContext(runCtx)
	httpSrv := &http.Server{Handler: p.router, ReadHeaderTimeout: 10 * time.Second}
	// One gRPC server on both listeners: TCP for other processes, the
	// in-memory one for this process's own services.
	for _, lis := range []net.Listener{p.grpcLis, p.inProcLis} {
		g.Go(func() error {
			if err := p.grpcSrv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("grpc server on %s: %w", lis.Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		// Requests Go's server refuses itself (control bytes in a header)
		// get Matrix errors too.
		if err := httpSrv.Serve(matrixhttp.MatrixErrorsListener(p.httpLis)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	if p.fed != nil {
		g.Go(func() error {
			if err := p.fed.srv.ServeTLS(p.fed.lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("federation server: %w", err)
			}
			return nil
		})
	}
	for i, svc := range services {
		g.Go(func() error {
			// A service's error ends the whole process: say which.
			if err := svc.Run(gctx); err != nil {
				log.Error("service stopped with an error; stopping the process", zap.String("service", names[i]), zap.Error(err))
				return fmt.Errorf("%s: %w", names[i], err)
			}
			return nil
		})
	}
	g.Go(func() error { return ready.runGRPCHealth(gctx, healthSrv, grpcServices) })
	go runMemoryRelease(gctx, func(ctx context.Context) bool { return len(ready.check(ctx)) == 0 }) // memrelease.go
	g.Go(func() error {
		<-gctx.Done()
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutCtx)
		if p.fed != nil {
			_ = p.fed.srv.Shutdown(shutCtx)
		}
		stopped := make(chan struct{})
		go func() { p.grpcSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-shutCtx.Done():
			p.grpcSrv.Stop()
		}
		return nil
	})
	proc := &Process{p: p, g: g, stop: stop, done: make(chan struct{})}
	go func() {
		proc.err = g.Wait()
		p.close()
		close(proc.done)
	}()
	// The caller's ctx ending stops the process.
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-proc.done:
		}
	}()
	fedAddr := ""
	if p.fed != nil {
		fedAddr = p.fed.lis.Addr().String()
	}
	log.Info("myelin started", zap.Strings("targets", targets),
		zap.String("http", p.httpLis.Addr().String()), zap.String("grpc", p.grpcLis.Addr().String()),
		zap.String("federation", fedAddr))
	return proc, nil
}

// HTTPAddr is the address the HTTP server listens on.
func (pr *Process) HTTPAddr() string { return pr.p.httpLis.Addr().String() }

// GRPCAddr is the address the gRPC server listens on.
func (pr *Process) GRPCAddr() string { return pr.p.grpcLis.Addr().String() }

// Stop ends the process and waits for it.
func (pr *Process) Stop() error {
	pr.stop()
	return pr.Wait()
}

// Wait blocks until the process ends and returns the first service error.
func (pr *Process) Wait() error {
	<-pr.done
	return pr.err
}

// provision starts the embedded NATS server and the local PostgreSQL
// cluster when their URLs are not configured, and connects to NATS.
func (p *process) provision(ctx context.Context) error {
	if p.cfg.Database.URL == "" && p.needsDatabase() {
		pg, err := devinfra.StartPostgres(ctx, p.cfg.dataPath("postgres"), 0, splitSettings(p.cfg.Database.LocalSettings)...)
		if err != nil {
			return fmt.Errorf("database.url is empty, so a local PostgreSQL was to be started: %w", err)
		}
		p.cleanups = append(p.cleanups, pg.Stop)
		// Killed (SIGKILL, out of memory) this process runs no cleanup:
		// the watcher stops the cluster then, and holds the data
		// directory's lock until it is down.
		var hold []*os.File
		if p.lock != nil {
			hold = append(hold, p.lock)
		}
		if err := pg.StopOnExit(hold...); err != nil {
			return err
		}
		if err := pg.CreateDatabase(ctx, "myelin"); err != nil {
			return err
		}
		p.cfg.Database.URL = pg.URL("myelin")
		p.log.Info("started local PostgreSQL", zap.String("dir", p.cfg.dataPath("postgres")))
	}
	if !p.needsNATS() {
		return nil
	}
	if p.cfg.NATS.URL == "" {
		n, err := devinfra.StartNATS(p.cfg.dataPath("nats"), "127.0.0.1", -1)
		if err != nil {
			return err
		}
		p.cleanups = append(p.cleanups, n.Shutdown)
		p.cfg.NATS.URL = n.URL()
		p.log.Info("started embedded NATS JetStream", zap.String("url", n.URL()))
	}
	nc, js, err := bus.Connect(ctx, p.cfg.NATS.URL, "myelin")
	if err != nil {
		return err
	}
	p.cleanups = append(p.cleanups, nc.Close)
	p.nc, p.js = nc, js
	return bus.EnsureStreams(ctx, js, p.cfg.NATS.Replicas)
}

// usesDataDir says whether this process keeps infrastructure in data_dir:
// the local PostgreSQL cluster or the embedded NATS store.
func (p *process) usesDataDir() bool {
	return (p.cfg.Database.URL == "" && p.needsDatabase()) || (p.cfg.NATS.URL == "" && p.needsNATS())
}

// listen opens a TCP listener for a configuration setting; its error names
// the setting and its environment variable.
func listen(setting, addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err == nil {
		return lis, nil
	}
	env := "MYELIN_" + strings.ToUpper(strings.ReplaceAll(setting, ".", "_"))
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s %s is in use (by another myelin or another program): set %s (%s) to a free address: %w", setting, addr, setting, env, err)
	}
	return nil, fmt.Errorf("%s %s (%s): %w", setting, addr, env, err)
}

func (p *process) needsDatabase() bool {
	for _, t := range p.targets {
		if t != TargetEdge {
			return true
		}
	}
	return false
}

func (p *process) needsNATS() bool {
	return slices.Contains(p.targets, TargetRoomServer) || slices.Contains(p.targets, TargetClientAPI) ||
		slices.Contains(p.targets, TargetPresence) || slices.Contains(p.targets, TargetKeyServer) ||
		slices.Contains(p.targets, TargetFederationSender) || slices.Contains(p.targets, TargetFederationReceiver) ||
		slices.Contains(p.targets, TargetAppservice)
}

// dial returns caller's gRPC connection to a service: the configured
// address, or, when none is configured and the service runs here, this
// process's own gRPC server through its in-memory listener. The server
// knows the caller by the process's certificate on the network (grpc.tls)
// and by caller in-process (rpc.CallerOf), so in-process connections are
// one per caller and target, network ones one per target.
func (p *process) dial(caller, target string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr := p.address(target).GRPC
	key := target
	if addr == "" {
		key = caller + " -> " + target
	}
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	var c *grpc.ClientConn
	var err error
	if addr != "" {
		c, err = rpc.DialTLS(addr, p.creds)
	} else if slices.Contains(p.targets, target) {
		c, err = rpc.DialInProcess(p.inProcLis, caller)
	} else {
		return nil, fmt.Errorf("%s is not a target of this process: set services.%s.grpc", target, yamlKey(target))
	}
	if err != nil {
		return nil, err
	}
	p.conns[key] = c
	p.cleanups = append(p.cleanups, func() { _ = c.Close() })
	return c, nil
}

func (p *process) address(target string) ServiceAddress {
	switch target {
	case TargetKeyServer:
		return p.cfg.Services.KeyServer
	case TargetRoomServer:
		return p.cfg.Services.RoomServer
	case TargetClientAPI:
		return p.cfg.Services.ClientAPI
	case TargetPresence:
		return p.cfg.Services.Presence
	case TargetMedia:
		return p.cfg.Services.Media
	case TargetFederationSender:
		return p.cfg.Services.FederationSender
	case TargetFederationReceiver:
		return p.cfg.Services.FederationReceiver
	case TargetAppservice:
		return p.cfg.Services.Appservice
	}
	return ServiceAddress{}
}

// edgeRoutes maps public path prefixes to the services that own them, for
// services not running in this process.
func (p *process) edgeRoutes() []edge.Route {
	var routes []edge.Route
	add := func(target string, prefixes ...string) {
		if slices.Contains(p.targets, target) {
			return
		}
		for _, pre := range prefixes {
			routes = append(routes, edge.Route{Prefix: pre, Upstream: p.address(target).HTTP, Service: target})
		}
	}
	add(TargetClientAPI, "/_matrix/client/", "/.well-known/matrix/", "/_matrix/static/", "/_synapse/admin/")
	add(TargetMedia, "/_matrix/media/", "/_matrix/client/v1/media/")
	add(TargetKeyServer, "/_matrix/key/")
	return routes
}

func yamlKey(target string) string {
	switch target {
	case TargetKeyServer:
		return "key_server"
	case TargetRoomServer:
		return "room_server"
	case TargetClientAPI:
		return "client_api"
	case TargetFederationSender:
		return "federation_sender"
	case TargetFederationReceiver:
		return "federation_receiver"
	}
	return target
}

func (p *process) close() {
	if p.grpcLis != nil {
		_ = p.grpcLis.Close()
	}
	if p.inProcLis != nil {
		_ = p.inProcLis.Close()
	}
	if p.httpLis != nil {
		_ = p.httpLis.Close()
	}
	if p.fed != nil {
		_ = p.fed.lis.Close()
	}
	for i := len(p.cleanups) - 1; i >= 0; i-- {
		p.cleanups[i]()
	}
	p.cleanups = nil
	_ = p.log.Sync()
}

// splitSettings splits "a=1,b=2" into its non-empty settings.
func splitSettings(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
