package matrixhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// connectRefused is the error pgx gives for a PostgreSQL server that is
// not there: a real connection attempt to a port nothing listens on.
func connectRefused(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = pgx.Connect(context.Background(), "postgres://myelin@"+addr+"/myelin?sslmode=disable&connect_timeout=5")
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	return err
}

// Errors that say a dependency is down become 503 M_UNKNOWN with
// Retry-After; other failures stay 500 without it.
func TestWriteErrorUnavailable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"database not reachable", fmt.Errorf("load user: %w", connectRefused(t)), http.StatusServiceUnavailable},
		{"database shutting down", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, http.StatusServiceUnavailable},
		{"too many connections", &pgconn.PgError{Code: "53300"}, http.StatusServiceUnavailable},
		{"peer unavailable", fmt.Errorf("SendEvent: %w", status.Error(codes.Unavailable, "connection refused")), http.StatusServiceUnavailable},
		{"explicit 503", Unavailable("not now"), http.StatusServiceUnavailable},
		{"unique violation", &pgconn.PgError{Code: "23505"}, http.StatusInternalServerError},
		{"peer internal error", status.Error(codes.Internal, "bug"), http.StatusInternalServerError},
		{"plain error", errors.New("boom"), http.StatusInternalServerError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { WriteError(w, c.err) }))
			defer srv.Close()
			res, err := http.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var body Error
			if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != c.want || body.ErrCode != "M_UNKNOWN" {
				t.Fatalf("%d %s, want %d M_UNKNOWN", res.StatusCode, body.ErrCode, c.want)
			}
			retryAfter := res.Header.Get("Retry-After")
			if (c.want == http.StatusServiceUnavailable) != (retryAfter != "") {
				t.Fatalf("status %d with Retry-After %q", res.StatusCode, retryAfter)
			}
		})
	}
}
