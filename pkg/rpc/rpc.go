// Package rpc builds the process's one gRPC server and the client
// connections services use to reach each other. Cross-cutting behaviour
// (logging, panic recovery) lives here as interceptors, never as wrappers
// around generated clients.
package rpc

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// MaxMessageSize bounds one gRPC message. Room state (for example a join of
// a large room) can be big, so it is well above gRPC's 4 MiB default.
const MaxMessageSize = 256 << 20

// MaxConnectionAge is how long a server keeps a client connection before
// asking the client to reconnect (GOAWAY; calls in flight get
// maxConnectionAgeGrace to finish). A client resolves its target's name
// again when a connection ends, so this is how soon callers find replicas
// added behind a name (see Dial).
const MaxConnectionAge = 5 * time.Minute

const maxConnectionAgeGrace = time.Minute

// streamWorkers is how many goroutines a server keeps for running calls.
const streamWorkers = 32

// NewServer returns a gRPC server that logs slow or failed calls and turns
// handler panics into Internal errors instead of crashing the process.
// Extra options come after those (interceptors they chain run inside the
// logging and recovery ones).
func NewServer(log *zap.Logger, opts ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      MaxConnectionAge,
			MaxConnectionAgeGrace: maxConnectionAgeGrace,
		}),
		// Calls run on long-lived workers rather than a new goroutine
		// each: a new goroutine starts with a small stack, and a handler
		// that signs or canonicalises JSON grows it, copying, on every
		// call (a few percent of the server's CPU under load). Calls
		// beyond the workers still get goroutines of their own.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.ChainUnaryInterceptor(recoverUnary(log), logUnary(log)),
		grpc.ChainStreamInterceptor(recoverStream(log)),
		// Plain gRPC on network listeners (Credentials.ServerOption
		// replaces it with mutual TLS), the caller's name on in-process
		// ones.
		grpc.Creds(&serverCreds{TransportCredentials: insecure.NewCredentials()}),
	}, opts...)...)
}

// DefaultCallTimeout bounds a unary call whose context has no deadline.
// Calls wait for the peer to become ready (a peer restarting is normal in
// the split shape), and this is how long: a peer that stays down turns into
// DeadlineExceeded instead of a request that hangs forever.
const DefaultCallTimeout = 30 * time.Second

// Dial connects to a gRPC address ("host:port"). The connection is lazy:
// a service that starts before its peer retries on its first call, for up
// to DefaultCallTimeout unless the caller's context says otherwise.
//
// The host is resolved through DNS, and calls are spread over every
// address it resolves to, call by call (round_robin). So a name with one
// address per replica (a Kubernetes headless Service) balances the
// replicas per request; a name with one address (a ClusterIP Service, a
// load balancer) gets one connection. The name is resolved again whenever
// a connection ends, which servers make happen every MaxConnectionAge.
func Dial(addr string) (*grpc.ClientConn, error) {
	return dial(addr)
}

// roundRobin is the client's default service config: one connection per
// resolved address, calls taken in turn.
const roundRobin = `{"loadBalancingConfig": [{"round_robin": {}}]}`

func dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithDefaultServiceConfig(roundRobin),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(defaultDeadline(DefaultCallTimeout)),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
			grpc.WaitForReady(true),
		),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return conn, nil
}

// InProcessNetwork is the Network() of the addresses of in-process
// connections (see ListenInProcess), as a handler sees them in
// peer.FromContext.
const InProcessNetwork = "bufconn"

// inProcessBuffer is each direction's buffer of an in-process connection: a
// writer blocks only when its peer is this far behind, as with a socket's
// kernel buffer.
const inProcessBuffer = 256 << 10

// ListenInProcess returns an in-memory listener for the process's gRPC
// server to serve next to its TCP one. Services in the same process reach
// each other through it (DialInProcess): the same server, interceptors and
// generated clients, only without each message's trip through the kernel's
// loopback TCP stack on both sides.
func ListenInProcess() *bufconn.Listener {
	return bufconn.Listen(inProcessBuffer)
}

// DialInProcess connects to the process's own gRPC server through lis, as
// caller: the name of the calling service, which the server's handlers see
// in CallerOf as they see a certificate's name in the split shape (the
// server must be NewServer's, which reads it; see inProcessCreds). Like
// Dial, the connection is lazy.
func DialInProcess(lis *bufconn.Listener, caller string) (*grpc.ClientConn, error) {
	if len(caller) > maxCallerName {
		return nil, fmt.Errorf("in-process caller name %.40q... is longer than %d bytes", caller, maxCallerName)
	}
	// passthrough: the target names no host to resolve; the dialer below
	// ignores it.
	return dial("passthrough:///in-process", grpc.WithContextDialer(
		func(ctx context.Context, _ string) (net.Conn, error) {
			conn, err := lis.DialContext(ctx)
			if err != nil {
				return nil, err
			}
			// The connection's first bytes name the caller; the server's
			// handshake reads them (readInProcessCaller).
			if _, err := conn.Write(append([]byte{byte(len(caller))}, caller...)); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		}))
}

func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func recoverUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in gRPC handler", zap.String("method", info.FullMethod),
					zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in gRPC stream handler", zap.String("method", info.FullMethod),
					zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(srv, ss)
	}
}

func logUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if code := status.Code(err); code == codes.Internal || code == codes.Unknown {
			log.Error("gRPC call failed", zap.String("method", info.FullMethod),
				zap.Duration("took", time.Since(start)), zap.Error(err))
		} else if log.Core().Enabled(zap.DebugLevel) {
			log.Debug("gRPC call", zap.String("method", info.FullMethod),
				zap.Duration("took", time.Since(start)), zap.String("code", code.String()))
		}
		return resp, err
	}
}
