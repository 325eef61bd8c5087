package rpc_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
)

// A gRPC server with mutual TLS and a policy admitting only "room-server"
// to the health service: that caller gets through, another caller with a
// valid certificate gets PermissionDenied, and a client without a valid
// certificate (none, plain, or one from another CA) is refused at the
// handshake. In-process calls need no certificate.
func TestMutualTLSAndCallerPolicy(t *testing.T) {
	ca := testkit.NewCA(t)
	creds := func(names ...string) *rpc.Credentials {
		t.Helper()
		cert, key := ca.Issue(t, names...)
		c, err := rpc.LoadCredentials(rpc.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.CertFile})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	server := creds("key-server", "127.0.0.1")
	policy := rpc.Policy{"grpc.health.v1.Health": {"room-server"}}
	srv := rpc.NewServer(zaptest.NewLogger(t), append(policy.ServerOptions(), server.ServerOption())...)
	grpc_health_v1.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inProc := rpc.ListenInProcess()
	go func() { _ = srv.Serve(lis) }()
	go func() { _ = srv.Serve(inProc) }()
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()

	check := func(conn *grpc.ClientConn, err error) error {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		return err
	}
	if err := check(rpc.DialTLS(addr, creds("room-server"))); err != nil {
		t.Errorf("allowed caller: %v", err)
	}
	if err := check(rpc.DialInProcess(inProc, "media")); err != nil {
		t.Errorf("in-process caller: %v", err)
	}
	if err := check(rpc.DialTLS(addr, creds("media"))); status.Code(err) != codes.PermissionDenied {
		t.Errorf("other caller: %v, want PermissionDenied", err)
	}
	other := testkit.NewCA(t)
	cert, key := other.Issue(t, "room-server")
	otherCreds, err := rpc.LoadCredentials(rpc.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	noCert := credentials.NewTLS(&tls.Config{RootCAs: server.RootCAs(), MinVersion: tls.VersionTLS12})
	for name, conn := range map[string]func() (*grpc.ClientConn, error){
		"no client certificate": func() (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(noCert))
		},
		"plain": func() (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
		"certificate of another CA": func() (*grpc.ClientConn, error) { return rpc.DialTLS(addr, otherCreds) },
	} {
		err := check(conn())
		if code := status.Code(err); code == codes.OK || code == codes.PermissionDenied {
			t.Errorf("%s: %v, want the connection refused", name, err)
		}
	}
}

func TestTLSConfigValidate(t *testing.T) {
	if err := (rpc.TLSConfig{CertFile: "a"}).Validate(); err == nil {
		t.Error("a partial configuration validated")
	}
	if c, err := rpc.LoadCredentials(rpc.TLSConfig{}); c != nil || err != nil {
		t.Errorf("empty configuration: %v %v, want plain", c, err)
	}
}
