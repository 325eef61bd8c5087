package myelin

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/myelin-chat/myelin/pkg/rpc"
)

// peerRecorder is a health service that remembers over which network the
// last call reached the server, and who made it.
type peerRecorder struct {
	grpc_health_v1.UnimplementedHealthServer
	mu      sync.Mutex
	network string
	caller  rpc.Caller
}

func (r *peerRecorder) Check(ctx context.Context, _ *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	if p, ok := peer.FromContext(ctx); ok {
		r.mu.Lock()
		r.network = p.Addr.Network()
		r.caller = rpc.CallerOf(ctx)
		r.mu.Unlock()
	}
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

// callOver makes a real call through the connection dial gives caller for
// target and returns the network the server saw it arrive on and the
// caller it saw.
func (r *peerRecorder) callOver(t *testing.T, p *process, caller, target string) (string, rpc.Caller) {
	t.Helper()
	conn, err := p.dial(caller, target)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	if _, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{}); err != nil {
		t.Fatalf("call to %s: %v", target, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.network, r.caller
}

// A peer that runs in this process is called through the gRPC server's
// in-memory listener, not loopback TCP; a peer with a configured address
// (another process, as in the split shape) is called at that address, over
// TCP; a peer that is neither is a configuration error. In-process calls
// name their caller (each caller has its own connection); plain TCP calls
// name none (with grpc.tls, the certificate names the process).
func TestDialPicksTransport(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &process{
		targets:   []string{TargetRoomServer, TargetClientAPI},
		log:       zap.NewNop(),
		grpcLis:   tcp,
		inProcLis: rpc.ListenInProcess(),
		conns:     map[string]*grpc.ClientConn{},
	}
	defer p.close()
	// The "other process" is this same server reached by its TCP address:
	// what matters is which listener the call comes through.
	p.cfg.Services.KeyServer.GRPC = tcp.Addr().String()

	p.grpcSrv = rpc.NewServer(zap.NewNop())
	rec := &peerRecorder{}
	grpc_health_v1.RegisterHealthServer(p.grpcSrv, rec)
	go func() { _ = p.grpcSrv.Serve(p.grpcLis) }()
	go func() { _ = p.grpcSrv.Serve(p.inProcLis) }()
	defer p.grpcSrv.Stop()

	for _, caller := range []string{TargetFederationSender, TargetClientAPI, TargetFederationSender} {
		got, c := rec.callOver(t, p, caller, TargetRoomServer)
		if got != rpc.InProcessNetwork {
			t.Errorf("in-process peer reached over %q, want %q", got, rpc.InProcessNetwork)
		}
		if !c.InProcess || !slices.Equal(c.Names, []string{caller}) {
			t.Errorf("in-process call of %s seen as %+v", caller, c)
		}
	}
	if got, c := rec.callOver(t, p, TargetClientAPI, TargetKeyServer); got != "tcp" || c.InProcess || len(c.Names) != 0 {
		t.Errorf("configured peer reached over %q by %+v, want tcp, unnamed", got, c)
	}
	if _, err := p.dial(TargetClientAPI, TargetPresence); err == nil {
		t.Error("dial of a peer neither here nor configured succeeded")
	}
}
