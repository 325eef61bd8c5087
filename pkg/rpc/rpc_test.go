package rpc

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// A call to a peer that is not listening waits for it (WaitForReady), but
// only until the default deadline: it must not hang.
func TestCallToDownPeerEndsAtDefaultDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(defaultDeadline(300*time.Millisecond)),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	done := make(chan error, 1)
	go func() {
		_, err := grpc_health_v1.NewHealthClient(conn).Check(context.Background(), &grpc_health_v1.HealthCheckRequest{})
		done <- err
	}()
	select {
	case err := <-done:
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("call to a down peer did not end")
	}
}

// A caller's own deadline is kept, not replaced by the default.
func TestCallerDeadlineKept(t *testing.T) {
	want := time.Now().Add(time.Hour)
	ctx, cancel := context.WithDeadline(context.Background(), want)
	defer cancel()
	var got time.Time
	invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		got, _ = ctx.Deadline()
		return nil
	}
	if err := defaultDeadline(time.Second)(ctx, "/m", nil, nil, nil, invoker); err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Fatalf("deadline %v, want %v", got, want)
	}
}

// countingHealth answers health checks and counts them.
type countingHealth struct {
	grpc_health_v1.UnimplementedHealthServer
	calls atomic.Int64
}

func (h *countingHealth) Check(context.Context, *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	h.calls.Add(1)
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

// A target that resolves to several replicas gets calls spread over all of
// them, call by call, not one connection to the first (gRPC's default
// pick_first). The resolver stands in for DNS answering with every pod of
// a headless Service.
func TestCallsSpreadOverResolvedReplicas(t *testing.T) {
	var replicas [3]countingHealth
	var addrs []resolver.Address
	for i := range replicas {
		g := NewServer(zaptest.NewLogger(t))
		grpc_health_v1.RegisterHealthServer(g, &replicas[i])
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = g.Serve(l) }()
		t.Cleanup(g.Stop)
		addrs = append(addrs, resolver.Address{Addr: l.Addr().String()})
	}
	r := manual.NewBuilderWithScheme("replicas")
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := dial(r.Scheme()+":///peer", grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := grpc_health_v1.NewHealthClient(conn)
	// round_robin takes only ready connections, so the first calls may all
	// go to the replica that connected first; within a few hundred calls
	// every replica has had its turn. pick_first would send them all to one.
	const maxCalls = 500
	got := make([]int64, len(replicas))
	for calls := 1; ; calls++ {
		if _, err := client.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		all := true
		for i := range replicas {
			got[i] = replicas[i].calls.Load()
			all = all && got[i] > 0
		}
		if all {
			return
		}
		if calls == maxCalls {
			t.Fatalf("calls per replica after %d calls: %v; want every replica called", calls, got)
		}
	}
}

// panickyHealth's streaming Watch panics.
type panickyHealth struct {
	grpc_health_v1.UnimplementedHealthServer
}

func (panickyHealth) Watch(*grpc_health_v1.HealthCheckRequest, grpc.ServerStreamingServer[grpc_health_v1.HealthCheckResponse]) error {
	panic("boom")
}

func (panickyHealth) Check(context.Context, *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

// A panic in a streaming handler becomes an Internal error for that call;
// the server keeps serving.
func TestStreamPanicIsInternalError(t *testing.T) {
	srv := NewServer(zaptest.NewLogger(t))
	grpc_health_v1.RegisterHealthServer(srv, panickyHealth{})
	lis := ListenInProcess()
	go srv.Serve(lis) //nolint:errcheck
	defer srv.Stop()
	conn, err := DialInProcess(lis, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := grpc_health_v1.NewHealthClient(conn)
	stream, err := client.Watch(context.Background(), &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Internal {
		t.Fatalf("panicking stream: %v, want Internal", err)
	}
	if _, err := client.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{}); err != nil {
		t.Fatalf("server after the panic: %v", err)
	}
}
