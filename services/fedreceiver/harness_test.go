package fedreceiver_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// hsName is the Myelin server under test.
const hsName = "hs1.test"

// env is one Myelin server (all-in-one, federation on, real HTTPS with a
// test CA) and the test's remote servers, which drive its
// federation-receiver as other homeservers would.
type env struct {
	t       *testing.T
	ca      *testkit.CA
	hs      *stack.Stack
	fedAddr string
	remote  *remoteServer // remote.test: joins rooms, sends transactions
	evil    *remoteServer // evil.test: in no room
	rs      roomserverv1.RoomServiceClient
	e2e     keyserverv1.E2EKeyServiceClient
	db      *pgxpool.Pool
	ctx     context.Context
}

// newEnv starts the remote servers, then Myelin with both in its
// server-name map. edit changes Myelin's configuration first.
func newEnv(t *testing.T, edit func(*myelin.Config)) *env {
	t.Helper()
	ca := testkit.NewCA(t)
	e := &env{t: t, ca: ca, ctx: context.Background()}
	e.remote = newRemoteServer(t, ca, "remote.test")
	e.evil = newRemoteServer(t, ca, "evil.test")
	cfg := stack.TestConfig(t)
	cfg.ServerName = hsName
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, hsName)
	cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.Federation.ServerNameMap = map[string]string{"remote.test": e.remote.addr, "evil.test": e.evil.addr}
	cfg.FederationReceiver.FetchTimeout = 2 * time.Second
	cfg.FederationReceiver.GapBudget = 6 * time.Second
	cfg.FederationReceiver.TransactionBudget = 30 * time.Second
	cfg.FederationReceiver.TransactionStale = time.Minute
	if edit != nil {
		edit(&cfg)
	}
	e.hs = stack.StartWithConfig(t, cfg)
	e.fedAddr = e.hs.Process.FederationAddr()
	for _, r := range []*remoteServer{e.remote, e.evil} {
		r.target, r.client = e.fedAddr, httpsClient(t, ca, hsName)
	}
	conn, err := rpc.Dial(e.hs.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.rs = roomserverv1.NewRoomServiceClient(conn)
	e.e2e = keyserverv1.NewE2EKeyServiceClient(conn)
	if e.db, err = pgxpool.New(e.ctx, cfg.Database.URL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.db.Close)
	return e
}

// httpsClient trusts ca and checks certificates for serverName.
func httpsClient(t *testing.T, ca *testkit.CA, serverName string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}}
}

// localUser registers a user on the Myelin server through mautrix-go.
func (e *env) localUser(name string) *mautrix.Client {
	e.t.Helper()
	cli, err := mautrix.NewClient(e.hs.URL(), "", "")
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(e.ctx, &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
	if err != nil {
		e.t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// createRoom makes a room on the Myelin server as cli.
func (e *env) createRoom(cli *mautrix.Client, version, preset string, initial ...*mautrixStateEvent) string {
	e.t.Helper()
	req := &mautrix.ReqCreateRoom{Preset: preset, RoomVersion: id.RoomVersion(version), Name: "room v" + version}
	for _, s := range initial {
		req.InitialState = append(req.InitialState, s.event())
	}
	resp, err := cli.CreateRoom(e.ctx, req)
	if err != nil {
		e.t.Fatalf("create room v%s: %v", version, err)
	}
	return resp.RoomID.String()
}

// event returns the stored event as the room-server has it (nil when it
// has none).
func (e *env) event(eventID string) *roomserverv1.Event {
	e.t.Helper()
	resp, err := e.rs.QueryEvents(e.ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{eventID}})
	if err != nil {
		e.t.Fatal(err)
	}
	if len(resp.GetEvents()) == 0 {
		return nil
	}
	return resp.GetEvents()[0]
}

// accepted reports whether the event is in the room graph (stored, not
// rejected, soft-failed or an outlier).
func (e *env) accepted(eventID string) bool {
	ev := e.event(eventID)
	return ev != nil && !ev.GetRejected() && !ev.GetSoftFailed() && !ev.GetOutlier()
}

func (e *env) waitAccepted(eventIDs ...string) {
	e.t.Helper()
	testkit.Eventually(e.t, 15*time.Second, func() error {
		for _, id := range eventIDs {
			if !e.accepted(id) {
				return fmt.Errorf("%s not accepted", id)
			}
		}
		return nil
	})
}

// membership is a user's current membership of a room, per the
// room-server.
func (e *env) membership(roomID, userID string) string {
	e.t.Helper()
	resp, err := e.rs.QueryMembership(e.ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: userID})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.GetMembership()
}

// stateIDs is the room's current state (sorted event IDs).
func (e *env) stateIDs(roomID string) []string {
	e.t.Helper()
	resp, err := e.rs.QueryState(e.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ev := range resp.GetState() {
		out = append(out, ev.GetEventId())
	}
	slices.Sort(out)
	return out
}

// transactions counts the receiver's stored transactions of a server.
func (e *env) transactions(origin string) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(e.ctx, `SELECT count(*) FROM fedreceiver.transactions WHERE origin = $1`, origin).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// timeline returns the event IDs of a room's timeline as cli's /messages
// shows them (newest 100, backwards).
func timeline(t *testing.T, cli *mautrix.Client, roomID string) []string {
	t.Helper()
	resp, err := cli.Messages(context.Background(), id.RoomID(roomID), "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		t.Fatalf("messages: %v", err)
	}
	var out []string
	for _, ev := range resp.Chunk {
		out = append(out, ev.ID.String())
	}
	return out
}

// mautrixStateEvent is an initial state event of createRoom.
type mautrixStateEvent struct {
	typ, key string
	content  map[string]any
}

func (s *mautrixStateEvent) event() *event.Event {
	key := s.key
	return &event.Event{Type: event.Type{Type: s.typ, Class: event.StateEventType}, StateKey: &key,
		Content: event.Content{Raw: s.content}}
}

// ---------------------------------------------------------------------------
// The remote server: another homeserver made of gomatrixserverlib pieces.

// remoteServer has its own ed25519 key, serves /_matrix/key/v2/server and
// the federation reads the receiver makes while filling gaps, from the
// events it holds, over real HTTPS with a certificate from the test CA;
// it signs its requests (X-Matrix) and events with its key.
type remoteServer struct {
	t      *testing.T
	name   spec.ServerName
	keyID  gomatrixserverlib.KeyID
	key    ed25519.PrivateKey
	addr   string
	target string // the Myelin federation listener
	client *http.Client
	txn    atomic.Int64

	mu     sync.Mutex
	events map[string]*remoteEvent
	rooms  map[string]*remoteRoom
	calls  map[string]int
	// behave makes an endpoint kind ("get_missing_events", "state_ids",
	// "state", "event", "event_auth") misbehave: "slow" (answers only
	// after the caller gave up), "garbage" (random bytes), "empty" (a
	// valid answer without events), "error" (500).
	behave map[string]string
	// onRequest, when set, runs before each federation request it
	// answers (to stall it, say).
	onRequest func(kind string)
}

// remoteEvent is an event the remote holds, with the state before it
// (event IDs by state key) when it knows it.
type remoteEvent struct {
	ev          gomatrixserverlib.PDU
	stateBefore map[gomatrixserverlib.StateKeyTuple]string
}

func newRemoteServer(t *testing.T, ca *testkit.CA, name string) *remoteServer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := &remoteServer{t: t, name: spec.ServerName(name), keyID: "ed25519:remote", key: key,
		events: map[string]*remoteEvent{}, rooms: map[string]*remoteRoom{}, calls: map[string]int{}, behave: map[string]string{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = lis.Addr().String()
	srv := &http.Server{Handler: r.router(), TLSConfig: ca.TLSConfig(t, name), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ServeTLS(lis, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

func (r *remoteServer) user(local string) string { return "@" + local + ":" + string(r.name) }

func (r *remoteServer) called(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[kind]
}

func (r *remoteServer) setBehaviour(kind, how string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if how == "" {
		delete(r.behave, kind)
	} else {
		r.behave[kind] = how
	}
}

func (r *remoteServer) router() http.Handler {
	m := chi.NewRouter()
	m.Get("/_matrix/key/v2/server", r.serveKeys)
	const v1 = "/_matrix/federation/v1"
	m.Post(v1+"/get_missing_events/{roomId}", r.federation("get_missing_events", r.serveMissing))
	m.Get(v1+"/state_ids/{roomId}", r.federation("state_ids", r.serveStateIDs))
	m.Get(v1+"/state/{roomId}", r.federation("state", r.serveState))
	m.Get(v1+"/event/{eventId}", r.federation("event", r.serveEvent))
	m.Get(v1+"/event_auth/{roomId}/{eventId}", r.federation("event_auth", r.serveEventAuth))
	return m
}

func (r *remoteServer) serveKeys(w http.ResponseWriter, _ *http.Request) {
	body, _ := json.Marshal(map[string]any{
		"server_name":     r.name,
		"verify_keys":     map[string]any{string(r.keyID): map[string]any{"key": spec.Base64Bytes(r.key.Public().(ed25519.PublicKey))}},
		"old_verify_keys": map[string]any{},
		"valid_until_ts":  time.Now().Add(time.Hour).UnixMilli(),
	})
	signed, err := gomatrixserverlib.SignJSON(string(r.name), r.keyID, r.key, body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(signed)
}

// federation wraps a handler: it checks that the request carries an
// X-Matrix header from hs1.test addressed here, counts it and applies
// the endpoint's misbehaviour.
func (r *remoteServer) federation(kind string, h func(*http.Request) (any, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		_, origin, dest, _, _ := fclient.ParseAuthorization(req.Header.Get("Authorization"))
		if origin != hsName || dest != r.name {
			http.Error(w, `{"errcode":"M_UNAUTHORIZED"}`, http.StatusUnauthorized)
			return
		}
		r.mu.Lock()
		r.calls[kind]++
		how, hook := r.behave[kind], r.onRequest
		r.mu.Unlock()
		if hook != nil {
			hook(kind)
		}
		switch how {
		case "slow":
			select {
			case <-req.Context().Done():
			case <-time.After(2 * time.Minute):
			}
			return
		case "garbage":
			junk := make([]byte, 4096)
			_, _ = rand.Read(junk)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(junk)
			return
		case "error":
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusInternalServerError)
			return
		}
		var resp any
		status := http.StatusOK
		if how == "empty" {
			resp = map[string]any{"events": []any{}, "pdus": []any{}, "pdu_ids": []any{}, "auth_chain": []any{}, "auth_chain_ids": []any{}}
		} else {
			resp, status = h(req)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(resp)
	}
}

func notFound() (any, int) {
	return map[string]string{"errcode": "M_NOT_FOUND", "error": "unknown"}, http.StatusNotFound
}

func param(req *http.Request, name string) string {
	v, _ := url.PathUnescape(chi.URLParam(req, name))
	return v
}

// serveMissing walks prev_events back from latest_events, not into
// earliest_events, down to min_depth, up to limit; oldest first.
func (r *remoteServer) serveMissing(req *http.Request) (any, int) {
	var body fclient.MissingEvents
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		return map[string]string{"errcode": "M_BAD_JSON"}, 400
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range slices.Concat(body.EarliestEvents, body.LatestEvents) {
		seen[id] = true
	}
	var out []gomatrixserverlib.PDU
	queue := []string{}
	for _, id := range body.LatestEvents {
		if e := r.events[id]; e != nil {
			queue = append(queue, e.ev.PrevEventIDs()...)
		}
	}
	for len(queue) > 0 && len(out) < body.Limit {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		e := r.events[id]
		if e == nil || e.ev.Depth() < int64(body.MinDepth) {
			continue
		}
		out = append(out, e.ev)
		queue = append(queue, e.ev.PrevEventIDs()...)
	}
	slices.SortFunc(out, func(a, b gomatrixserverlib.PDU) int { return int(a.Depth() - b.Depth()) })
	return map[string]any{"events": pduJSONs(out)}, 200
}

func pduJSONs(evs []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.JSON())
	}
	return out
}

// stateAndChain is the state before an event and its auth chain.
func (r *remoteServer) stateAndChain(eventID string) (state, chain []gomatrixserverlib.PDU, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events[eventID]
	if e == nil || e.stateBefore == nil {
		return nil, nil, false
	}
	for _, id := range e.stateBefore {
		if s := r.events[id]; s != nil {
			state = append(state, s.ev)
		}
	}
	return state, r.authChainLocked(state), true
}

func (r *remoteServer) authChainLocked(of []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	seen := map[string]bool{}
	var out []gomatrixserverlib.PDU
	queue := []string{}
	for _, ev := range of {
		queue = append(queue, ev.AuthEventIDs()...)
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		if e := r.events[id]; e != nil {
			out = append(out, e.ev)
			queue = append(queue, e.ev.AuthEventIDs()...)
		}
	}
	return out
}

func ids(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.EventID())
	}
	return out
}

func (r *remoteServer) serveStateIDs(req *http.Request) (any, int) {
	state, chain, ok := r.stateAndChain(req.URL.Query().Get("event_id"))
	if !ok {
		return notFound()
	}
	return map[string]any{"pdu_ids": ids(state), "auth_chain_ids": ids(chain)}, 200
}

func (r *remoteServer) serveState(req *http.Request) (any, int) {
	state, chain, ok := r.stateAndChain(req.URL.Query().Get("event_id"))
	if !ok {
		return notFound()
	}
	return map[string]any{"pdus": pduJSONs(state), "auth_chain": pduJSONs(chain)}, 200
}

func (r *remoteServer) serveEvent(req *http.Request) (any, int) {
	r.mu.Lock()
	e := r.events[param(req, "eventId")]
	r.mu.Unlock()
	if e == nil {
		return notFound()
	}
	return map[string]any{"origin": r.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{e.ev.JSON()}}, 200
}

func (r *remoteServer) serveEventAuth(req *http.Request) (any, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.events[param(req, "eventId")]
	if e == nil {
		return notFound()
	}
	return map[string]any{"auth_chain": pduJSONs(r.authChainLocked([]gomatrixserverlib.PDU{e.ev}))}, 200
}

// request is a signed (X-Matrix) request to the Myelin server.
type request struct {
	method, path string
	// body is marshalled as JSON; raw, when set, is sent as it is.
	body any
	raw  []byte
	// tamper changes the signed request before it is sent.
	tamper func(*http.Request)
	// destination overrides hs1.test in the signature.
	destination spec.ServerName
	// unsigned sends no Authorization header.
	unsigned bool
	// target overrides the Myelin federation listener (another replica).
	target string
}

// do sends a request to the Myelin federation listener and returns the
// status and body.
func (r *remoteServer) do(req request) (int, []byte) {
	r.t.Helper()
	status, _, body := r.doWithHeaders(req)
	return status, body
}

// doWithHeaders is do, with the response's headers.
func (r *remoteServer) doWithHeaders(req request) (int, http.Header, []byte) {
	r.t.Helper()
	dest := req.destination
	if dest == "" {
		dest = hsName
	}
	fr := fclient.NewFederationRequest(req.method, r.name, dest, req.path)
	switch {
	case req.raw != nil:
		if err := fr.SetContent(json.RawMessage(req.raw)); err != nil {
			r.t.Fatal(err)
		}
	case req.body != nil:
		if err := fr.SetContent(req.body); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := fr.Sign(r.name, r.keyID, r.key); err != nil {
		r.t.Fatal(err)
	}
	hr, err := fr.HTTPRequest()
	if err != nil {
		r.t.Fatal(err)
	}
	if req.raw != nil {
		hr.Body = io.NopCloser(strings.NewReader(string(req.raw)))
		hr.ContentLength = int64(len(req.raw))
	}
	hr.URL.Scheme, hr.URL.Host = "https", r.target
	if req.target != "" {
		hr.URL.Host = req.target
	}
	if req.unsigned {
		hr.Header.Del("Authorization")
	}
	if req.tamper != nil {
		req.tamper(hr)
	}
	res, err := r.client.Do(hr)
	if err != nil {
		r.t.Fatalf("%s %s: %v", req.method, req.path, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, body
}

// get and put are do's common cases.
func (r *remoteServer) get(path string) (int, []byte) {
	r.t.Helper()
	return r.do(request{method: "GET", path: path})
}

func (r *remoteServer) put(path string, body any) (int, []byte) {
	r.t.Helper()
	return r.do(request{method: "PUT", path: path, body: body})
}

// send sends a transaction with a fresh ID and returns the status and
// the per-PDU results.
func (r *remoteServer) send(pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	r.t.Helper()
	return r.sendTxn(r.nextTxn(), pdus, edus...)
}

func (r *remoteServer) nextTxn() string { return "txn" + strconv.FormatInt(r.txn.Add(1), 10) }

func (r *remoteServer) sendTxn(txnID string, pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	r.t.Helper()
	return r.sendTxnAt("", txnID, pdus, edus...)
}

// sendTxnAt sends a transaction to a listener (empty: the usual one).
func (r *remoteServer) sendTxnAt(target, txnID string, pdus []json.RawMessage, edus ...gomatrixserverlib.EDU) (int, map[string]fclient.PDUResult) {
	r.t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	status, body := r.do(request{method: "PUT", path: "/_matrix/federation/v1/send/" + txnID, target: target, body: map[string]any{
		"origin": r.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus, "edus": edus,
	}})
	var resp fclient.RespSend
	if status == 200 {
		if err := json.Unmarshal(body, &resp); err != nil {
			r.t.Fatalf("send: %s", body)
		}
	}
	return status, resp.PDUs
}

// errcode reads a Matrix error's code.
func errcode(body []byte) string {
	var e struct {
		ErrCode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return e.ErrCode
}

func esc(s string) string { return url.PathEscape(s) }

// ---------------------------------------------------------------------------
// Rooms as the remote holds them.

// remoteRoom is a room as the remote server sees it: its state and last
// event. The remote builds its events on the last one it knows.
type remoteRoom struct {
	r       *remoteServer
	roomID  string
	verImpl gomatrixserverlib.IRoomVersion
	state   map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	last    gomatrixserverlib.PDU
}

// allVersions is every room version Myelin supports (make_join's ver).
var allVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

func verQuery() string {
	var q []string
	for _, v := range allVersions {
		q = append(q, "ver="+v)
	}
	return strings.Join(q, "&")
}

// learn records events the remote got from elsewhere (send_join's state
// and auth chain).
func (r *remoteServer) learn(verImpl gomatrixserverlib.IRoomVersion, raws []json.RawMessage) []gomatrixserverlib.PDU {
	r.t.Helper()
	var out []gomatrixserverlib.PDU
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, raw := range raws {
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
		if err != nil {
			r.t.Fatalf("event from Myelin: %v: %s", err, raw)
		}
		if r.events[ev.EventID()] == nil {
			r.events[ev.EventID()] = &remoteEvent{ev: ev}
		}
		out = append(out, ev)
	}
	return out
}

// template turns a make_* answer's event into a proto-event.
func template(t *testing.T, raw json.RawMessage) *gomatrixserverlib.ProtoEvent {
	t.Helper()
	var pe gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(raw, &pe); err != nil {
		t.Fatalf("template: %v", err)
	}
	pe.PrevEvents, pe.AuthEvents = stringList(pe.PrevEvents), stringList(pe.AuthEvents)
	return &pe
}

// stringList turns a JSON list of strings into []string; reference lists
// (room versions 1 and 2) stay as they are.
func stringList(v any) any {
	list, ok := v.([]any)
	if !ok {
		return v
	}
	out := make([]string, len(list))
	for i, x := range list {
		if out[i], ok = x.(string); !ok {
			return v
		}
	}
	return out
}

// signProto builds and signs a proto-event as the remote.
func (r *remoteServer) signProto(verImpl gomatrixserverlib.IRoomVersion, pe *gomatrixserverlib.ProtoEvent) gomatrixserverlib.PDU {
	r.t.Helper()
	pe.Version = verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(pe).Build(time.Now(), r.name, r.keyID, r.key)
	if err != nil {
		r.t.Fatalf("build %s: %v", pe.Type, err)
	}
	return ev
}

// makeMembership asks for a make_join/make_leave/make_knock template and
// signs the event.
func (r *remoteServer) makeMembership(kind, roomID, userID string) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU) {
	r.t.Helper()
	path := "/_matrix/federation/v1/make_" + kind + "/" + esc(roomID) + "/" + esc(userID)
	if kind != "leave" {
		path += "?" + verQuery()
	}
	status, body := r.get(path)
	if status != 200 {
		r.t.Fatalf("make_%s: %d %s", kind, status, body)
	}
	var resp struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		r.t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(resp.RoomVersion))
	return verImpl, r.signProto(verImpl, template(r.t, resp.Event))
}

// join joins userID to a room of the Myelin server (make_join, send_join
// v1 or v2) and returns the room as the remote now holds it.
func (r *remoteServer) join(roomID, userID string, v1 bool) *remoteRoom {
	r.t.Helper()
	verImpl, join := r.makeMembership("join", roomID, userID)
	path := "/_matrix/federation/v2/send_join/"
	if v1 {
		path = "/_matrix/federation/v1/send_join/"
	}
	status, body := r.put(path+esc(roomID)+"/"+esc(join.EventID()), json.RawMessage(join.JSON()))
	if status != 200 {
		r.t.Fatalf("send_join: %d %s", status, body)
	}
	if v1 {
		var wrapped []json.RawMessage
		if err := json.Unmarshal(body, &wrapped); err != nil || len(wrapped) != 2 || string(wrapped[0]) != "200" {
			r.t.Fatalf("send_join v1 answer is not [200, {...}]: %s", body)
		}
		body = wrapped[1]
	}
	var resp struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
		Event     json.RawMessage   `json:"event"`
		Origin    string            `json:"origin"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		r.t.Fatal(err)
	}
	if resp.Origin != hsName || len(resp.State) == 0 || len(resp.AuthChain) == 0 {
		r.t.Fatalf("send_join answer: origin %q, %d state, %d auth chain", resp.Origin, len(resp.State), len(resp.AuthChain))
	}
	r.learn(verImpl, resp.AuthChain)
	state := r.learn(verImpl, resp.State)
	signed := r.learn(verImpl, []json.RawMessage{resp.Event})[0]
	if signed.EventID() != join.EventID() {
		r.t.Fatalf("send_join answered with event %s, sent %s", signed.EventID(), join.EventID())
	}
	rr := &remoteRoom{r: r, roomID: roomID, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}}
	for _, ev := range state {
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	rr.apply(signed)
	r.mu.Lock()
	r.rooms[roomID] = rr
	r.mu.Unlock()
	return rr
}

// newRoom creates a room on the remote server (for invites): create, the
// creator's join, power levels, join rules, history visibility, name.
func (r *remoteServer) newRoom(version, creator string) *remoteRoom {
	r.t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	rr := &remoteRoom{r: r, verImpl: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}}
	content := map[string]any{"room_version": version}
	if n, _ := strconv.Atoi(version); n <= 10 {
		content["creator"] = creator
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!r" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":" + string(r.name)
	}
	empty := ""
	create := r.signProto(verImpl, &gomatrixserverlib.ProtoEvent{SenderID: creator, RoomID: roomID, Type: spec.MRoomCreate,
		StateKey: &empty, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, Content: mustJSON(r.t, content)})
	rr.roomID = create.RoomID().String()
	rr.apply(create)
	rr.add(creator, spec.MRoomMember, &creator, map[string]any{"membership": "join"})
	users := map[string]any{creator: 100}
	if verImpl.PrivilegedCreators() {
		users = map[string]any{}
	}
	rr.add(creator, spec.MRoomPowerLevels, &empty, map[string]any{"users": users, "users_default": 0, "events_default": 0,
		"state_default": 50, "invite": 0, "ban": 50, "kick": 50, "redact": 50})
	rr.add(creator, spec.MRoomJoinRules, &empty, map[string]any{"join_rule": "invite"})
	rr.add(creator, spec.MRoomHistoryVisibility, &empty, map[string]any{"history_visibility": "shared"})
	rr.add(creator, spec.MRoomName, &empty, map[string]any{"name": "remote room"})
	r.mu.Lock()
	r.rooms[rr.roomID] = rr
	r.mu.Unlock()
	return rr
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// apply makes ev the room's last event (and state).
func (rr *remoteRoom) apply(ev gomatrixserverlib.PDU) {
	before := map[gomatrixserverlib.StateKeyTuple]string{}
	for k, s := range rr.state {
		before[k] = s.EventID()
	}
	rr.r.mu.Lock()
	rr.r.events[ev.EventID()] = &remoteEvent{ev: ev, stateBefore: before}
	rr.r.mu.Unlock()
	if sk := ev.StateKey(); sk != nil {
		rr.state[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
	}
	rr.last = ev
}

// proto is an event on the room's last event with auth events from its
// state.
func (rr *remoteRoom) proto(sender, typ string, stateKey *string, content any) *gomatrixserverlib.ProtoEvent {
	t := rr.r.t
	t.Helper()
	pe := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: rr.roomID, Type: typ, StateKey: stateKey,
		PrevEvents: []string{rr.last.EventID()}, Depth: rr.last.Depth() + 1, Content: mustJSON(t, content), Version: rr.verImpl}
	var st []gomatrixserverlib.PDU
	for _, ev := range rr.state {
		st = append(st, ev)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(st)
	if err != nil {
		t.Fatal(err)
	}
	eb := rr.verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	pe.AuthEvents = eb.AuthEvents
	return pe
}

// build signs an event on the room's last event without applying it.
func (rr *remoteRoom) build(sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.r.t.Helper()
	return rr.r.signProto(rr.verImpl, rr.proto(sender, typ, stateKey, content))
}

// add builds and applies an event.
func (rr *remoteRoom) add(sender, typ string, stateKey *string, content any) gomatrixserverlib.PDU {
	rr.r.t.Helper()
	ev := rr.build(sender, typ, stateKey, content)
	rr.apply(ev)
	return ev
}

// message adds a text message.
func (rr *remoteRoom) message(sender, body string) gomatrixserverlib.PDU {
	rr.r.t.Helper()
	return rr.add(sender, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body})
}

func raws(evs ...gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		out = append(out, ev.JSON())
	}
	return out
}
