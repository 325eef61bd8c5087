package myelin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// getJSON fetches url and returns the status and the decoded body.
func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s: %s: %v", url, raw, err)
	}
	return resp.StatusCode, body
}

// The process reports itself live and ready over HTTP and gRPC while its
// database answers, unready (naming what failed) while it does not, and
// ready again once it does; the services keep running through it.
func TestHealthFollowsTheDatabase(t *testing.T) {
	s := stack.Start(t)
	ctx := context.Background()
	if code, body := getJSON(t, s.URL()+"/healthz"); code != 200 || body["status"] != "ok" {
		t.Fatalf("/healthz: %d %v", code, body)
	}
	conn, err := rpc.Dial(s.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := grpc_health_v1.NewHealthClient(conn)
	grpcStatus := func(service string) grpc_health_v1.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := hc.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("gRPC health of %q: %v", service, err)
		}
		return resp.GetStatus()
	}
	ready := func(want bool) {
		t.Helper()
		wantStatus := grpc_health_v1.HealthCheckResponse_SERVING
		if !want {
			wantStatus = grpc_health_v1.HealthCheckResponse_NOT_SERVING
		}
		testkit.Eventually(t, 20*time.Second, func() error {
			code, body := getJSON(t, s.URL()+"/readyz")
			if (code == 200) != want {
				return fmt.Errorf("/readyz: %d %v", code, body)
			}
			if !want {
				failed, _ := body["failed"].(map[string]any)
				for _, svc := range []string{"key-server", "room-server", "presence", "client-api", "media"} {
					if msg, _ := failed[svc].(string); !strings.Contains(msg, "database") {
						return fmt.Errorf("/readyz does not name %s's database: %v", svc, body)
					}
				}
			}
			for _, svc := range []string{"", "myelin.roomserver.v1.RoomService", "myelin.keyserver.v1.KeyService"} {
				if got := grpcStatus(svc); got != wantStatus {
					return fmt.Errorf("gRPC health of %q: %s, want %s", svc, got, wantStatus)
				}
			}
			return nil
		})
	}
	ready(true)

	// Refuse the process's database: new connections are turned away and
	// the open ones are ended.
	cfg, err := pgx.ParseConfig(s.Config.Database.URL)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	cfg.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(ctx) })
	allow := func(on bool) {
		t.Helper()
		if _, err := admin.Exec(ctx, fmt.Sprintf(`ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t`, pgx.Identifier{db}.Sanitize(), on)); err != nil {
			t.Fatalf("allow connections %t: %v", on, err)
		}
		if !on {
			if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, db); err != nil {
				t.Fatalf("end connections: %v", err)
			}
		}
	}
	allow(false)
	ready(false)
	if code, _ := getJSON(t, s.URL()+"/healthz"); code != 200 {
		t.Fatalf("/healthz while the database is away: %d", code)
	}
	allow(true)
	ready(true)
}
