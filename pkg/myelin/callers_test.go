package myelin_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
	clientapiv1 "github.com/myelin-chat/myelin/proto/clientapi/v1"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	mediav1 "github.com/myelin-chat/myelin/proto/media/v1"
	presencev1 "github.com/myelin-chat/myelin/proto/presence/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

// Every service over mutual TLS (grpc.tls): each gRPC service admits the
// callers of the caller matrix and answers every other one
// PermissionDenied; a client without a valid certificate is refused by
// all of them; the process's own services still call each other (in
// process, plain), so it starts and serves.
func TestGRPCMutualTLSCallerMatrix(t *testing.T) {
	ca := testkit.NewCA(t)
	cfg := stack.TestConfig(t)
	cfg.GRPC.TLS.CertFile, cfg.GRPC.TLS.KeyFile = ca.Issue(t, "myelin", "127.0.0.1")
	cfg.GRPC.TLS.CAFile = ca.CertFile
	s := stack.StartWithConfig(t, cfg)
	addr := s.Process.GRPCAddr()
	policy := myelin.CallerPolicy()

	call := func(conn *grpc.ClientConn, method string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	// firstCall calls the first method of a service (a stream when it has
	// only streams): the check is per service.
	firstCall := func(conn *grpc.ClientConn, d grpc.ServiceDesc) (string, error) {
		if len(d.Methods) > 0 {
			method := "/" + d.ServiceName + "/" + d.Methods[0].MethodName
			return method, call(conn, method)
		}
		sd := d.Streams[0]
		method := "/" + d.ServiceName + "/" + sd.StreamName
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: sd.ServerStreams, ClientStreams: sd.ClientStreams}, method)
		if err != nil {
			return method, err
		}
		_ = st.SendMsg(&emptypb.Empty{})
		_ = st.CloseSend()
		return method, st.RecvMsg(&emptypb.Empty{})
	}
	dialAs := func(name string) *grpc.ClientConn {
		cert, key := ca.Issue(t, name)
		creds, err := rpc.LoadCredentials(rpc.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.CertFile})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := rpc.DialTLS(addr, creds)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	descs := []grpc.ServiceDesc{keyserverv1.KeyService_ServiceDesc, keyserverv1.ServerKeyService_ServiceDesc,
		keyserverv1.E2EKeyService_ServiceDesc, roomserverv1.RoomService_ServiceDesc, presencev1.PresenceService_ServiceDesc,
		mediav1.MediaService_ServiceDesc, clientapiv1.UserService_ServiceDesc, fedsenderv1.FederationSenderService_ServiceDesc,
		appservicev1.AppserviceService_ServiceDesc}
	callers := append(myelin.TargetNames(), myelin.AdminCaller, "someone-else")
	for _, caller := range callers {
		conn := dialAs(caller)
		for _, d := range descs {
			allowed := slices.Contains(policy[d.ServiceName], caller)
			method, err := firstCall(conn, d)
			if denied := status.Code(err) == codes.PermissionDenied; denied == allowed {
				t.Errorf("%s calling %s: %v (allowed: %v)", caller, method, err, allowed)
			}
		}
		if err := call(conn, grpc_health_v1.Health_Check_FullMethodName); err != nil {
			t.Errorf("%s: health check: %v", caller, err)
		}
	}
	// Signing: only the room-server builds and signs events.
	for _, caller := range []string{myelin.TargetClientAPI, myelin.TargetFederationSender, myelin.TargetMedia} {
		err := call(dialAs(caller), keyserverv1.KeyService_SignJSON_FullMethodName)
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s may call SignJSON: %v", caller, err)
		}
	}
	if err := call(dialAs(myelin.TargetRoomServer), keyserverv1.ServerKeyService_RotateKey_FullMethodName); status.Code(err) != codes.PermissionDenied {
		t.Errorf("room-server may rotate the key: %v", err)
	}

	// Without a certificate every service refuses the connection.
	plain, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, d := range descs {
		method, err := firstCall(plain, d)
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("a plain client calling %s: %v, want the connection refused", method, code)
		}
	}
	// A certificate of another CA, even with a caller's name, is refused
	// by every service too.
	other := testkit.NewCA(t)
	cert, key := other.Issue(t, myelin.TargetRoomServer)
	creds, err := rpc.LoadCredentials(rpc.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := rpc.DialTLS(addr, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer forged.Close()
	for _, d := range descs {
		method, err := firstCall(forged, d)
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("a client with another CA's certificate calling %s: %v, want the connection refused", method, code)
		}
	}
	// The process works: its services reach each other in process.
	if code, _ := getJSON(t, s.URL()+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d", code)
	}
}

// The Helm chart's NetworkPolicies admit, to each component it deploys,
// exactly the deployed components the caller policy admits to its
// services.
func TestChartCallerMatrixFollowsPolicy(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/helm/myelin/templates/_helpers.tpl")
	if err != nil {
		t.Fatal(err)
	}
	define := func(name string) string {
		t.Helper()
		_, block, ok := strings.Cut(string(raw), `{{- define "`+name+`" -}}`)
		block, _, ok2 := strings.Cut(block, `{{- end -}}`)
		if !ok || !ok2 {
			t.Fatalf("no %s block in _helpers.tpl", name)
		}
		return block
	}
	var chart map[string][]string
	if err := yaml.Unmarshal([]byte(define("myelin.grpcCallers")), &chart); err != nil {
		t.Fatal(err)
	}
	var components map[string]string
	if err := yaml.Unmarshal([]byte(define("myelin.components")), &components); err != nil {
		t.Fatal(err)
	}
	deployed := map[string]bool{}
	for _, target := range components {
		deployed[target] = true
	}
	owner := map[string]string{
		keyserverv1.KeyService_ServiceDesc.ServiceName:              myelin.TargetKeyServer,
		keyserverv1.ServerKeyService_ServiceDesc.ServiceName:        myelin.TargetKeyServer,
		keyserverv1.E2EKeyService_ServiceDesc.ServiceName:           myelin.TargetKeyServer,
		roomserverv1.RoomService_ServiceDesc.ServiceName:            myelin.TargetRoomServer,
		presencev1.PresenceService_ServiceDesc.ServiceName:          myelin.TargetPresence,
		mediav1.MediaService_ServiceDesc.ServiceName:                myelin.TargetMedia,
		clientapiv1.UserService_ServiceDesc.ServiceName:             myelin.TargetClientAPI,
		fedsenderv1.FederationSenderService_ServiceDesc.ServiceName: myelin.TargetFederationSender,
		appservicev1.AppserviceService_ServiceDesc.ServiceName:      myelin.TargetAppservice,
		keyserverv1.ServerKeyService_RotateKey_FullMethodName:       myelin.TargetKeyServer,
		grpc_health_v1.Health_ServiceDesc.ServiceName:               "",
	}
	want := map[string][]string{}
	for key, callers := range myelin.CallerPolicy() {
		target, ok := owner[key]
		if !ok {
			t.Fatalf("policy key %s: which component serves it?", key)
		}
		if target == "" {
			continue
		}
		for _, c := range callers {
			// The key-server's own pod (rotate-key) and an operator's
			// tool are not network callers of other pods.
			if c != target && c != myelin.AdminCaller && deployed[c] && !slices.Contains(want[target], c) {
				want[target] = append(want[target], c)
			}
		}
	}
	for target := range deployed {
		got := slices.Clone(chart[target])
		slices.Sort(got)
		w := want[target]
		slices.Sort(w)
		if !slices.Equal(got, w) {
			t.Errorf("chart: %s accepts gRPC from %v; the policy admits %v", target, got, w)
		}
	}
}
