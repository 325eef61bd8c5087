package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/matrixhttp"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const testServerName = "example.test"

// harness runs one client-API on real PostgreSQL and real NATS JetStream,
// serving real HTTP.
type harness struct {
	t     *testing.T
	cfg   Config
	dbURL string
	js    jetstream.JetStream
	rooms roomserverv1.RoomServiceClient
	// e2e is the key-server's E2EKeyService (nil: none).
	e2e    keyserverv1.E2EKeyServiceClient
	svc    *Service
	srv    *httptest.Server
	cancel context.CancelFunc
	done   chan error
}

// newHarness starts a client-API. rooms may be nil for tests that never
// reach the room-server: the client then points at an address where
// nothing listens.
func newHarness(t *testing.T, cfg Config, rooms roomserverv1.RoomServiceClient) *harness {
	t.Helper()
	h := &harness{t: t, cfg: cfg, dbURL: testkit.Postgres(t), rooms: rooms}
	h.js = testkit.JetStream(t, testkit.NATS(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, h.js, 1); err != nil {
		t.Fatal(err)
	}
	if h.rooms == nil {
		conn, err := rpc.Dial("127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		h.rooms = roomserverv1.NewRoomServiceClient(conn)
	}
	h.start()
	return h
}

// start (re)starts the service on the harness's database and stream.
func (h *harness) start() {
	t := h.t
	t.Helper()
	svc, err := New(context.Background(), h.cfg, Deps{
		Logger: zaptest.NewLogger(t), ServerName: testServerName, DatabaseURL: h.dbURL,
		JetStream: h.js, RoomServer: h.rooms, E2EKeys: h.e2e,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	r := chi.NewRouter()
	r.Use(matrixhttp.CORS)
	r.NotFound(matrixhttp.NotFoundHandler)
	r.MethodNotAllowed(matrixhttp.MethodNotAllowedHandler)
	svc.RegisterHTTP(r)
	h.srv = httptest.NewServer(r)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- svc.Run(ctx) }()
	t.Cleanup(h.stop)
}

// stop stops the service (idempotent).
func (h *harness) stop() {
	if h.svc == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
	h.srv.Close()
	h.svc.Close()
	h.svc = nil
}

// response is a decoded HTTP response.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (r response) errcode() string {
	s, _ := r.body["errcode"].(string)
	return s
}

// do sends a request; body may be a string (sent as is) or a value
// (JSON-encoded). token may be empty.
func (h *harness) do(method, path, token string, body any) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	out := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &out.body); err != nil {
			h.t.Fatalf("%s %s: bad JSON response %q: %v", method, path, raw, err)
		}
	}
	return out
}

// expect checks status and errcode ("" for success).
func (h *harness) expect(r response, status int, errcode string) {
	h.t.Helper()
	if r.status != status || r.errcode() != errcode {
		h.t.Fatalf("got %d %q (%s), want %d %q", r.status, r.errcode(), r.raw, status, errcode)
	}
}

// register creates an account with the two-step dummy flow and returns
// its access token and user ID.
func (h *harness) register(username, password string) (token, userID string) {
	h.t.Helper()
	first := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": username, "password": password})
	h.expect(first, 401, "")
	session, _ := first.body["session"].(string)
	second := h.do("POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": username, "password": password,
		"auth": map[string]any{"type": "m.login.dummy", "session": session},
	})
	h.expect(second, 200, "")
	return second.body["access_token"].(string), second.body["user_id"].(string)
}

// testConfig is the configuration the tests start from.
func testConfig() Config { return DefaultConfig() }

// The UIA stages, as the spec names them.
const (
	authDummy    = "m.login.dummy"
	authPassword = "m.login.password"
	authRegToken = "m.login.registration_token"
)

// opaqueID is the spec's opaque identifier grammar (registration tokens).
var opaqueID = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)
