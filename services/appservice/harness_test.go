package appservice_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	appservicev1 "github.com/myelin-chat/myelin/proto/appservice/v1"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const serverName = "as.test"

// Receiver modes: how the appservice answers transactions.
const (
	modeOK      = "ok"
	modeDown    = "down"    // the connection is dropped
	mode500     = "500"     // 500 M_UNKNOWN
	modeGarbage = "garbage" // processed, then 200 with a body that is not JSON
	modeSlow    = "slow"    // processed, then answered after the request timeout
	modeBlock   = "block"   // held until released (or the caller goes)
)

// receiver is an appservice over net/http: it checks the hs_token, keeps
// the transactions it processed (a transaction ID seen again is a repeat
// and must carry the same content), and answers as its mode says.
type receiver struct {
	t       testing.TB
	srv     *httptest.Server
	hsToken string
	slow    time.Duration

	mu        sync.Mutex
	mode      string
	txns      map[string][32]byte
	txnOrder  []string
	events    []map[string]any
	ephemeral []map[string]any
	toDevice  []map[string]any
	badAuth   int
	attempts  int
	blocked   chan struct{} // closed when a blocked request arrives
	release   chan struct{}
	queries   []string
	queryCode int
	arrived   map[string]time.Time // event ID -> when its transaction came
	// legacyOnly: an appservice of the API's earlier drafts, serving only
	// the legacy routes (with the access_token parameter); the versioned
	// routes answer 404 M_UNRECOGNIZED. Otherwise the legacy routes do.
	legacyOnly   bool
	unrecognized []string // paths answered 404 M_UNRECOGNIZED
	paths        []string // paths of the transactions answered 200
}

func (r *receiver) txnPaths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.paths...)
}

func newReceiver(t testing.TB, hsToken string) *receiver {
	r := &receiver{t: t, hsToken: hsToken, mode: modeOK, txns: map[string][32]byte{}, queryCode: http.StatusOK,
		arrived: map[string]time.Time{},
		slow:    1500 * time.Millisecond}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() {
		r.setMode(modeOK)
		r.srv.CloseClientConnections()
		r.srv.Close()
	})
	return r
}

func (r *receiver) setMode(m string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == modeBlock && r.release != nil {
		close(r.release)
		r.release = nil
	}
	r.mode = m
	if m == modeBlock {
		r.blocked, r.release = make(chan struct{}), make(chan struct{})
	}
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Authorization") != "Bearer "+r.hsToken {
		r.mu.Lock()
		r.badAuth++
		r.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN"}`))
		return
	}
	path, legacy := req.URL.Path, !strings.HasPrefix(req.URL.Path, "/_matrix/app/v1/")
	r.mu.Lock()
	legacyOnly := r.legacyOnly
	if legacy != legacyOnly {
		r.unrecognized = append(r.unrecognized, path)
	}
	r.mu.Unlock()
	switch {
	case legacy != legacyOnly:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED"}`))
		return
	case legacy && req.URL.Query().Get("access_token") != r.hsToken:
		r.t.Errorf("legacy route without the hs_token as access_token: %s", req.URL)
	case legacy:
		// The same handlers, at the versioned paths.
		if rest, ok := strings.CutPrefix(path, "/_matrix/app/unstable/"); ok {
			path = "/_matrix/app/v1/" + rest
		} else {
			path = "/_matrix/app/v1" + path
		}
	case req.URL.Query().Has("access_token"):
		r.t.Errorf("legacy access_token query parameter sent: %s", req.URL)
	}
	body, _ := io.ReadAll(req.Body)
	switch {
	case strings.HasPrefix(path, "/_matrix/app/v1/transactions/") && req.Method == http.MethodPut:
		r.transaction(w, req, strings.TrimPrefix(path, "/_matrix/app/v1/transactions/"), body)
	case path == "/_matrix/app/v1/ping":
		r.mu.Lock()
		code := r.queryCode
		r.queries = append(r.queries, "ping "+string(body))
		r.mu.Unlock()
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{}`))
	default:
		r.mu.Lock()
		code := r.queryCode
		r.queries = append(r.queries, req.URL.RawPath+req.URL.Path+"?"+req.URL.RawQuery)
		r.mu.Unlock()
		if code == 0 {
			time.Sleep(r.slow)
			code = http.StatusOK
		}
		w.WriteHeader(code)
		if code == http.StatusNotFound { // the spec's answer for no such user or alias
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND"}`))
			return
		}
		if strings.Contains(req.URL.Path, "/thirdparty/protocol/") {
			_, _ = w.Write([]byte(`{"user_fields":["nick"],"location_fields":["chan"],"icon":"mxc://x/y","field_types":{},"instances":[{"desc":"Net","network_id":"net1","fields":{}}]}`))
			return
		}
		if strings.Contains(req.URL.Path, "/thirdparty/") {
			_, _ = w.Write([]byte(`[{"alias":"#_irc_x:as.test","protocol":"irc","fields":{"q":"` + req.URL.Query().Get("q") + `"}}]`))
			return
		}
		_, _ = w.Write([]byte(`{}`))
	}
}

func (r *receiver) transaction(w http.ResponseWriter, req *http.Request, txnID string, body []byte) {
	r.mu.Lock()
	r.attempts++
	mode := r.mode
	blocked, release := r.blocked, r.release
	r.mu.Unlock()
	switch mode {
	case modeDown:
		hj, _ := w.(http.Hijacker)
		conn, _, err := hj.Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return
	case mode500:
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN"}`))
		return
	case modeBlock:
		select {
		case <-blocked:
		default:
			close(blocked)
		}
		select {
		case <-release:
		case <-req.Context().Done():
			return
		}
	}
	r.process(txnID, body)
	r.mu.Lock()
	r.paths = append(r.paths, req.URL.Path)
	r.mu.Unlock()
	switch mode {
	case modeGarbage:
		_, _ = w.Write([]byte(`<html>oops`))
	case modeSlow:
		time.Sleep(r.slow)
		_, _ = w.Write([]byte(`{}`))
	default:
		_, _ = w.Write([]byte(`{}`))
	}
}

// process records a transaction once; a repeat must be identical.
func (r *receiver) process(txnID string, body []byte) {
	sum := sha256.Sum256(body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.txns[txnID]; ok {
		if prev != sum {
			r.t.Errorf("transaction %s sent again with other content", txnID)
		}
		return
	}
	var txn struct {
		Events    []map[string]any `json:"events"`
		Ephemeral []map[string]any `json:"ephemeral"`
		ToDevice  []map[string]any `json:"de.sorunome.msc2409.to_device"`
	}
	if err := json.Unmarshal(body, &txn); err != nil || txn.Events == nil {
		r.t.Errorf("transaction %s: bad body %s (%v)", txnID, body, err)
	}
	r.txns[txnID] = sum
	r.txnOrder = append(r.txnOrder, txnID)
	at := time.Now()
	for _, ev := range txn.Events {
		if id, ok := ev["event_id"].(string); ok {
			r.arrived[id] = at
		}
	}
	r.events = append(r.events, txn.Events...)
	r.ephemeral = append(r.ephemeral, txn.Ephemeral...)
	r.toDevice = append(r.toDevice, txn.ToDevice...)
}

// toDeviceOf lists the processed to-device messages as
// "<to_user_id>/<to_device_id>/<sender>/<type>/<content>", in order.
func (r *receiver) toDeviceOf() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.toDevice {
		c, _ := json.Marshal(m["content"])
		out = append(out, fmt.Sprintf("%v/%v/%v/%v/%s", m["to_user_id"], m["to_device_id"], m["sender"], m["type"], c))
	}
	return out
}

// eventIDs lists the IDs of the processed events of a type in a room.
func (r *receiver) eventIDs(roomID id.RoomID, typ string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if e["room_id"] == string(roomID) && (typ == "" || e["type"] == typ) {
			out = append(out, e["event_id"].(string))
		}
	}
	return out
}

func (r *receiver) ephemeralOf(typ string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, e := range r.ephemeral {
		if typ == "" || e["type"] == typ {
			out = append(out, e)
		}
	}
	return out
}

// registration writes a registration file for an appservice at the
// receiver's URL and returns its path.
func registration(t testing.TB, dir, asID, url, namespaces string, ephemeral bool) string {
	body := fmt.Sprintf("id: %s\nurl: %s\nas_token: as-%s\nhs_token: hs-%s\nsender_localpart: _%s_bot\nreceive_ephemeral: %v\nprotocols: [%s]\nnamespaces:\n%s\n",
		asID, url, asID, asID, asID, ephemeral, asID, namespaces)
	p := filepath.Join(dir, asID+".yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// env is Myelin with appservices registered, each with its receiver.
type env struct {
	t     testing.TB
	cfg   myelin.Config
	main  *stack.Stack
	as    *stack.Stack // the appservice process, in the split shape
	recv  map[string]*receiver
	split bool
	// asGRPC is where the client-API reaches the appservice service in
	// the split shape.
	asGRPC string
}

type asSpec struct {
	id         string
	namespaces string
	ephemeral  bool
	noURL      bool
}

func newEnv(t testing.TB, split bool, specs ...asSpec) *env {
	t.Helper()
	e := newEnvConfig(t, specs...)
	e.split = split
	if split {
		e.startMain()
		e.startAppservice(e.asGRPC)
	} else {
		e.main = stack.StartWithConfig(t, e.cfg)
	}
	return e
}

// newEnvConfig makes the receivers and the configuration, and starts
// nothing.
func newEnvConfig(t testing.TB, specs ...asSpec) *env {
	t.Helper()
	e := &env{t: t, recv: map[string]*receiver{}}
	cfg := stack.TestConfig(t)
	cfg.ServerName = serverName
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Appservice.BackoffMin = 20 * time.Millisecond
	cfg.Appservice.BackoffMax = 200 * time.Millisecond
	cfg.Appservice.RequestTimeout = 500 * time.Millisecond
	cfg.Appservice.QueryTimeout = time.Second
	cfg.Appservice.LeaderRetry = 200 * time.Millisecond
	cfg.Appservice.AdminToken = "admin-secret"
	dir := t.TempDir()
	for _, s := range specs {
		r := newReceiver(t, "hs-"+s.id)
		e.recv[s.id] = r
		u := r.srv.URL
		if s.noURL {
			u = "null"
		}
		cfg.Appservice.ConfigFiles = append(cfg.Appservice.ConfigFiles, registration(t, dir, s.id, u, s.namespaces, s.ephemeral))
	}
	e.cfg = cfg
	return e
}

// startMain starts every service but the appservice service, which the
// client-API reaches at e.asGRPC (the first appservice process's address).
func (e *env) startMain() {
	e.asGRPC = freeAddr(e.t)
	e.cfg.Services.Appservice.GRPC = e.asGRPC
	e.main = stack.StartWithConfig(e.t, e.cfg, myelin.TargetKeyServer, myelin.TargetRoomServer, myelin.TargetPresence,
		myelin.TargetClientAPI, myelin.TargetMedia)
}

// freeAddr is a loopback address with a port free now.
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startAppservice starts the appservice service as its own process, its
// gRPC on grpcAddr.
func (e *env) startAppservice(grpcAddr string) {
	cfg := e.cfg
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.GRPC.Listen = grpcAddr
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Services.RoomServer.GRPC = e.main.Process.GRPCAddr()
	e.as = stack.StartWithConfig(e.t, cfg, myelin.TargetAppservice)
}

// asProcess is the process running the appservice service.
func (e *env) asProcess() *stack.Stack {
	if e.as != nil {
		return e.as
	}
	return e.main
}

// client is the AppserviceService of the process running it.
func (e *env) client() appservicev1.AppserviceServiceClient {
	conn, err := rpc.Dial(e.asProcess().Process.GRPCAddr())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return appservicev1.NewAppserviceServiceClient(conn)
}

// user registers a local user and returns a mautrix client for them.
func (e *env) user(name string) *mautrix.Client {
	t := e.t
	t.Helper()
	cli, err := mautrix.NewClient(e.main.URL(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "secret password " + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	return cli
}

func (e *env) room(c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	e.t.Helper()
	if req == nil {
		req = &mautrix.ReqCreateRoom{Preset: "public_chat"}
	}
	resp, err := c.CreateRoom(context.Background(), req)
	if err != nil {
		e.t.Fatalf("create room: %v", err)
	}
	return resp.RoomID
}

func join(t testing.TB, c *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	if _, err := c.JoinRoomByID(context.Background(), roomID); err != nil {
		t.Fatalf("join %s: %v", roomID, err)
	}
}

func send(t testing.TB, c *mautrix.Client, roomID id.RoomID, n int, prefix string) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		resp, err := c.SendText(context.Background(), roomID, fmt.Sprintf("%s %d", prefix, i))
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		ids = append(ids, string(resp.EventID))
	}
	return ids
}

// waitEvents waits until the receiver has the room's messages and checks
// they are exactly want, in order.
func waitEvents(t testing.TB, r *receiver, roomID id.RoomID, want []string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error {
		got := r.eventIDs(roomID, "m.room.message")
		if len(got) < len(want) {
			return fmt.Errorf("%d of %d messages delivered", len(got), len(want))
		}
		return nil
	})
	got := r.eventIDs(roomID, "m.room.message")
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("messages delivered:\n%v\nwant (once each, in order):\n%v", got, want)
	}
}

func users(regex string, exclusive bool) string {
	return fmt.Sprintf("  users:\n    - exclusive: %v\n      regex: '%s'", exclusive, regex)
}

func (r *receiver) snapshot() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.events...)
}

// newEnvConfigOnly is a configuration like newEnv's, for starts a test
// makes itself.
func newEnvConfigOnly(t testing.TB) myelin.Config {
	cfg := stack.TestConfig(t)
	cfg.ServerName = serverName
	return cfg
}

func testLogger(t testing.TB) *zap.Logger { return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)) }
