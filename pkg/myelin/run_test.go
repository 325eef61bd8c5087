package myelin

import (
	"context"
	"net"
	"sync"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/myelin-chat/myelin/pkg/rpc"
)

// peerRecorder is a health service that remembers over which network the
// last call reached the server.
type peerRecorder struct {
	grpc_health_v1.UnimplementedHealthServer
	mu      sync.Mutex
	network string
}

func (r *peerRecorder) Check(ctx context.Context, _ *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	if p, ok := peer.FromContext(ctx); ok {
		r.mu.Lock()
		r.network = p.Addr.Network()
		r.mu.Unlock()
	}
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

// callOver makes a real call through the connection dial gives for target
// and returns the network the server saw it arrive on.
func (r *peerRecorder) callOver(t *testing.T, p *process, target string) string {
	t.Helper()
	conn, err := p.dial(target)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	if _, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{}); err != nil {
		t.Fatalf("call to %s: %v", target, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.network
}

// A peer that runs in this process is called through the gRPC server's
// in-memory listener, not loopback TCP; a peer with a configured address
// (another process, as in the split shape) is called at that address, over
// TCP; a peer that is neither is a configuration error.
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

	if got := rec.callOver(t, p, TargetRoomServer); got != rpc.InProcessNetwork {
		t.Errorf("in-process peer reached over %q, want %q", got, rpc.InProcessNetwork)
	}
	if got := rec.callOver(t, p, TargetKeyServer); got != "tcp" {
		t.Errorf("configured peer reached over %q, want tcp", got)
	}
	if _, err := p.dial(TargetPresence); err == nil {
		t.Error("dial of a peer neither here nor configured succeeded")
	}
}
