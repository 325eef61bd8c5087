package myelin_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// scrape returns the metrics text served at addr.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	return string(raw)
}

// With metrics.listen set, the process serves Prometheus metrics there, and
// only there: Matrix requests counted by route pattern and status, the
// gRPC calls they made by method and code, and the runtime's own.
func TestMetrics(t *testing.T) {
	cfg := stack.TestConfig(t)
	cfg.Metrics.Listen = "127.0.0.1:0"
	s := stack.StartWithConfig(t, cfg)
	ctx := context.Background()
	cli, err := mautrix.NewClient(s.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "metrics", Password: "pw-metrics"})
	if err != nil {
		t.Fatal(err)
	}
	cli.SetCredentials(reg.UserID, reg.AccessToken)
	for range 3 {
		if _, err := cli.Whoami(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"}); err != nil {
		t.Fatal(err)
	}
	// The media service's routes have their patterns too, and its token
	// check is one gRPC call to the client-API.
	if _, err := cli.GetMediaConfig(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(s.URL() + "/_matrix/client/v3/rooms/!nowhere:x/state")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	text := scrape(t, s.Process.MetricsAddr())
	for _, want := range []string{
		`myelin_http_requests_total{code="200",method="GET",route="/_matrix/client/v3/account/whoami"} 3`,
		`myelin_http_requests_total{code="401",method="GET",route="/_matrix/client/v3/rooms/{roomId}/state"} 1`,
		`myelin_http_request_duration_seconds_count{method="POST",route="/_matrix/client/v3/createRoom"} 1`,
		`myelin_grpc_server_handled_total{code="OK",method="/myelin.roomserver.v1.RoomService/CreateRoom"} 1`,
		`myelin_grpc_server_handling_seconds_count{method="/myelin.roomserver.v1.RoomService/CreateRoom"} 1`,
		`myelin_build_info{targets="appservice,client-api,federation-receiver,federation-sender,key-server,media,presence,room-server"`,
		`myelin_http_requests_total{code="200",method="GET",route="/_matrix/client/v1/media/config"} 1`,
		`myelin_grpc_server_handled_total{code="OK",method="/myelin.clientapi.v1.UserService/Authenticate"} 1`,
		`myelin_fedsender_pdus_sent_total 0`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if t.Failed() {
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "myelin_") && !strings.Contains(l, "_bucket") {
				t.Log(l)
			}
		}
	}
	// Not on the public listener.
	pub, err := http.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	pub.Body.Close()
	if pub.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics on the public listener: %d, want 404", pub.StatusCode)
	}
}
