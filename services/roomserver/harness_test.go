package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/myelin-chat/myelin/pkg/bus"
	"github.com/myelin-chat/myelin/pkg/federation"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	keyserverv1 "github.com/myelin-chat/myelin/proto/keyserver/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
	"github.com/myelin-chat/myelin/services/keyserver"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const testServer = "rs.test"

// fedSenderCaller is the caller name whose InputEvent.signatures_checked
// the harness's room-server honours (myelin.SignaturesCheckedCallers).
const fedSenderCaller = "federation-sender"

var (
	alice = "@alice:" + testServer
	bob   = "@bob:" + testServer
	carol = "@carol:" + testServer
)

// harness runs a real key-server and a real room-server, each on a real
// gRPC server on 127.0.0.1, with real PostgreSQL and JetStream.
type harness struct {
	t     testing.TB
	ctx   context.Context
	cfg   Config
	db    string
	js    jetstream.JetStream
	ks    keyserverv1.KeyServiceClient
	sks   keyserverv1.ServerKeyServiceClient
	rs    roomserverv1.RoomServiceClient
	svc   *Service
	stopM sync.Mutex
	stop  func()
}

// newHarness starts the harness's servers. Its key-server has a federation
// transport, as in production: the servers among peers are reachable over
// HTTPS (see federationTo), any other server name is not.
func newHarness(t testing.TB, mutate func(*Config), peers ...peer) *harness {
	t.Helper()
	return newHarnessOn(t, mutate, testkit.NATS(t), peers...)
}

// newHarnessOn is newHarness on the NATS server at natsURL (a test that
// stops and restarts NATS starts its own).
func newHarnessOn(t testing.TB, mutate func(*Config), natsURL string, peers ...peer) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, cfg: DefaultConfig(), db: testkit.Postgres(t)}
	if mutate != nil {
		mutate(&h.cfg)
	}
	h.js = testkit.JetStream(t, natsURL)

	ks, err := keyserver.New(ctx, keyserver.DefaultConfig(), keyserver.Deps{
		Logger: testLogger(t).Named("keyserver"), ServerName: testServer, DatabaseURL: h.db,
		Federation: federationTo(t, peers...),
	})
	if err != nil {
		t.Fatalf("keyserver.New: %v", err)
	}
	addr := serveGRPC(t, ks.RegisterGRPC)
	t.Cleanup(ks.Close)
	conn, err := rpc.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.ks = keyserverv1.NewKeyServiceClient(conn)
	h.sks = keyserverv1.NewServerKeyServiceClient(conn)
	h.start(true)
	t.Cleanup(h.shutdown)
	return h
}

// peer is another homeserver the harness's key-server can reach.
type peer interface {
	serverName() string
	// federationHandler answers the server's federation requests (its
	// keys at /_matrix/key/v2/server at least).
	federationHandler() http.Handler
}

// federationTo serves each peer over real HTTPS on 127.0.0.1, with a
// certificate for its server name from a CA made for the test, and returns
// the outbound federation transport that reaches them as a deployment's
// configuration would: federation enabled, the test CA in
// trusted_ca_files, each peer's name in server_name_map, loopback in
// allowed_private_networks. DNS answers nothing, so any other server name
// is unreachable.
func federationTo(t testing.TB, peers ...peer) *federation.Transport {
	t.Helper()
	ca := testkit.NewCA(t)
	cfg := federation.DefaultConfig()
	cfg.Enabled = true
	cfg.TrustedCAFiles = []string{ca.CertFile}
	cfg.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.ServerNameMap = map[string]string{}
	for _, p := range peers {
		srv := httptest.NewUnstartedServer(p.federationHandler())
		srv.TLS = ca.TLSConfig(t, p.serverName())
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		t.Cleanup(srv.Close)
		cfg.ServerNameMap[p.serverName()] = srv.Listener.Addr().String()
	}
	tr, err := federation.NewTransport(federation.Options{Config: cfg, Logger: testLogger(t).Named("federation"), Resolver: &net.Resolver{
		PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.DNSError{Err: "no DNS in this test", IsNotFound: true}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// serveGRPC serves a registration on a fresh gRPC server; it stops when
// the test ends.
func serveGRPC(t testing.TB, register func(*grpc.Server)) string {
	t.Helper()
	g := rpc.NewServer(testLogger(t).Named("grpc"))
	register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// start starts a room-server on the harness's database; run says whether
// its Run (the publisher) runs.
func (h *harness) start(run bool) {
	t := h.t
	t.Helper()
	svc, err := New(h.ctx, h.cfg, Deps{
		Logger: testLogger(t).Named("roomserver"), ServerName: testServer, DatabaseURL: h.db,
		JetStream: h.js, KeyServer: h.ks, ServerKeys: h.sks,
		SignaturesCheckedCallers: []string{fedSenderCaller},
	})
	if err != nil {
		t.Fatalf("roomserver.New: %v", err)
	}
	g := rpc.NewServer(testLogger(t).Named("grpc"))
	svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	runCtx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	if run {
		go func() { done <- svc.Run(runCtx) }()
	} else {
		done <- nil
	}
	conn, err := rpc.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h.svc, h.rs = svc, roomserverv1.NewRoomServiceClient(conn)
	h.stopM.Lock()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		g.Stop()
		conn.Close()
		svc.Close()
	}
	h.stopM.Unlock()
}

// restart stops the room-server and starts a new one on the same database.
func (h *harness) restart(run bool) {
	h.shutdown()
	h.start(run)
}

func (h *harness) shutdown() {
	h.stopM.Lock()
	stop := h.stop
	h.stop = nil
	h.stopM.Unlock()
	if stop != nil {
		stop()
	}
}

// --- request helpers ---

func ptr(s string) *string { return &s }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stateTmpl(t testing.TB, typ, stateKey string, content any) *roomserverv1.EventTemplate {
	return &roomserverv1.EventTemplate{Type: typ, StateKey: ptr(stateKey), Content: mustJSON(t, content)}
}

func member(t testing.TB, user, membership string) *roomserverv1.EventTemplate {
	return stateTmpl(t, spec.MRoomMember, user, map[string]any{"membership": membership})
}

func message(t testing.TB, body string) *roomserverv1.EventTemplate {
	return &roomserverv1.EventTemplate{Type: "m.room.message", Content: mustJSON(t, map[string]any{"msgtype": "m.text", "body": body})}
}

// roomTemplates are the initial events of a typical room made by alice.
func roomTemplates(t testing.TB, version, joinRule string, users map[string]int) []*roomserverv1.EventTemplate {
	pl := map[string]any{"users": users, "state_default": 50, "events_default": 0, "invite": 50, "ban": 50, "kick": 50, "redact": 50}
	if version == "12" {
		// Creators have infinite power in v12 and must not be listed.
		delete(users, alice)
	}
	return []*roomserverv1.EventTemplate{
		member(t, alice, "join"),
		stateTmpl(t, spec.MRoomPowerLevels, "", pl),
		stateTmpl(t, spec.MRoomJoinRules, "", map[string]any{"join_rule": joinRule}),
		stateTmpl(t, spec.MRoomHistoryVisibility, "", map[string]any{"history_visibility": "shared"}),
	}
}

func (h *harness) createRoom(version, joinRule string, users map[string]int, extra ...*roomserverv1.EventTemplate) *roomserverv1.CreateRoomResponse {
	h.t.Helper()
	resp, err := h.rs.CreateRoom(h.ctx, &roomserverv1.CreateRoomRequest{
		Creator: alice, RoomVersion: version,
		InitialEvents: append(roomTemplates(h.t, version, joinRule, users), extra...),
	})
	if err != nil {
		h.t.Fatalf("CreateRoom(%s): %v", version, err)
	}
	return resp
}

func (h *harness) send(roomID, sender string, tmpl *roomserverv1.EventTemplate) (string, error) {
	resp, err := h.rs.SendEvent(h.ctx, &roomserverv1.SendEventRequest{RoomId: roomID, Sender: sender, Event: tmpl})
	if err != nil {
		return "", err
	}
	return resp.GetEventId(), nil
}

func (h *harness) mustSend(roomID, sender string, tmpl *roomserverv1.EventTemplate) string {
	h.t.Helper()
	id, err := h.send(roomID, sender, tmpl)
	if err != nil {
		h.t.Fatalf("SendEvent %s as %s: %v", tmpl.GetType(), sender, err)
	}
	return id
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got error %v, want code %s", err, code)
	}
}

// stateContent returns content[field] of the state event at (typ, key) in
// the room's current state (eventID == "") or at an event; "" if absent.
func (h *harness) stateContent(roomID, eventID string, after bool, typ, key, field string) string {
	h.t.Helper()
	resp, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{
		RoomId: roomID, EventId: eventID, After: after,
		Filter: []*roomserverv1.StateKeyTuple{{Type: typ, StateKey: key}},
	})
	if err != nil {
		h.t.Fatalf("QueryState: %v", err)
	}
	if len(resp.GetState()) == 0 {
		return ""
	}
	var ev struct {
		Content map[string]any `json:"content"`
	}
	if err := json.Unmarshal(resp.GetState()[0].GetEventJson(), &ev); err != nil {
		h.t.Fatal(err)
	}
	switch v := ev.Content[field].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return string(mustJSON(h.t, v))
	}
}

func (h *harness) roomInfo(roomID string) *roomserverv1.QueryRoomInfoResponse {
	h.t.Helper()
	info, err := h.rs.QueryRoomInfo(h.ctx, &roomserverv1.QueryRoomInfoRequest{RoomId: roomID})
	if err != nil {
		h.t.Fatal(err)
	}
	return info
}

func (h *harness) membership(roomID, user string) string {
	h.t.Helper()
	resp, err := h.rs.QueryMembership(h.ctx, &roomserverv1.QueryMembershipRequest{RoomId: roomID, UserId: user})
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.GetMembership()
}

func (h *harness) event(id string) *roomserverv1.Event {
	h.t.Helper()
	resp, err := h.rs.QueryEvents(h.ctx, &roomserverv1.QueryEventsRequest{EventIds: []string{id}})
	if err != nil {
		h.t.Fatal(err)
	}
	if len(resp.GetEvents()) != 1 {
		return nil
	}
	return resp.GetEvents()[0]
}

func (h *harness) countRows(query string, args ...any) int64 {
	h.t.Helper()
	var n int64
	if err := h.svc.store.Pool().QueryRow(h.ctx, query, args...).Scan(&n); err != nil {
		h.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// --- building events directly (forked graphs) ---

// build makes a signed event with explicit prev_events, using the
// room-server's own builder (EventBuilder + key-server signing). Its
// auth_events come from the state after authFrom (an event ID).
func (h *harness) build(roomID, sender, typ string, stateKey *string, content any, prevs []string, authFrom string) gomatrixserverlib.PDU {
	h.t.Helper()
	info := h.roomInfo(roomID)
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.GetRoomVersion()))
	var depth int64
	for _, p := range prevs {
		if ev := h.event(p); ev != nil {
			pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(p, ev.GetEventJson(), false)
			if err != nil {
				h.t.Fatal(err)
			}
			depth = max(depth, pdu.Depth())
		}
	}
	pe := &gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: roomID, Type: typ, StateKey: stateKey, PrevEvents: prevs,
		Depth: depth + 1, Content: mustJSON(h.t, content), Version: verImpl,
	}
	st, err := h.rs.QueryState(h.ctx, &roomserverv1.QueryStateRequest{RoomId: roomID, EventId: authFrom, After: true})
	if err != nil {
		h.t.Fatal(err)
	}
	var pdus []gomatrixserverlib.PDU
	for _, ev := range st.GetState() {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(ev.GetEventId(), ev.GetEventJson(), false)
		if err != nil {
			h.t.Fatal(err)
		}
		pdus = append(pdus, pdu)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		h.t.Fatal(err)
	}
	eb := verImpl.NewEventBuilderFromProtoEvent(pe)
	if err := eb.AddAuthEvents(provider); err != nil {
		h.t.Fatal(err)
	}
	pe.AuthEvents = eb.AuthEvents
	ev, err := h.svc.signer.Build(h.ctx, verImpl, pe)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

func (h *harness) input(kind roomserverv1.InputKind, evs ...gomatrixserverlib.PDU) []*roomserverv1.InputEventResult {
	h.t.Helper()
	req := &roomserverv1.InputEventsRequest{}
	for _, ev := range evs {
		req.Events = append(req.Events, &roomserverv1.InputEvent{RoomVersion: string(ev.Version()), EventJson: ev.JSON(), Kind: kind})
	}
	resp, err := h.rs.InputEvents(h.ctx, req)
	if err != nil {
		h.t.Fatalf("InputEvents: %v", err)
	}
	return resp.GetResults()
}

func (h *harness) inputOne(ev gomatrixserverlib.PDU, want roomserverv1.InputStatus) *roomserverv1.InputEventResult {
	h.t.Helper()
	res := h.input(roomserverv1.InputKind_INPUT_KIND_NEW, ev)[0]
	if res.GetStatus() != want {
		h.t.Fatalf("input %s (%s): status %s (%s), want %s", ev.EventID(), ev.Type(), res.GetStatus(), res.GetReason(), want)
	}
	if res.GetEventId() != ev.EventID() {
		h.t.Fatalf("result event ID %s, want %s", res.GetEventId(), ev.EventID())
	}
	return res
}

// --- JetStream ---

type published struct {
	out   *roomserverv1.OutputRoomEvent
	msgID string
}

// readRoom reads every message published so far for a room.
func (h *harness) readRoom(roomID string) ([]published, error) {
	stream, err := h.js.Stream(h.ctx, bus.RoomEventsStream)
	if err != nil {
		return nil, err
	}
	cons, err := stream.OrderedConsumer(h.ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.RoomEventsSubject(roomID)}})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(h.ctx)
	if err != nil {
		return nil, err
	}
	pending := int(info.NumPending)
	var out []published
	for len(out) < pending {
		batch, err := cons.Fetch(pending-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var o roomserverv1.OutputRoomEvent
			if err := proto.Unmarshal(m.Data(), &o); err != nil {
				return nil, err
			}
			out = append(out, published{out: &o, msgID: m.Headers().Get("Nats-Msg-Id")})
		}
		if n == 0 {
			return nil, errors.New("no messages fetched")
		}
	}
	return out, nil
}

// waitPublished waits until exactly want messages of the room are on
// JetStream and returns them.
func (h *harness) waitPublished(roomID string, want int) []published {
	h.t.Helper()
	var got []published
	testkit.Eventually(h.t, 15*time.Second, func() error {
		var err error
		got, err = h.readRoom(roomID)
		if err != nil {
			return err
		}
		if len(got) < want {
			return errors.New("not all published yet")
		}
		return nil
	})
	if len(got) != want {
		h.t.Fatalf("room %s: %d messages published, want %d", roomID, len(got), want)
	}
	return got
}

// testLogger logs into the test's output; benchmarks log only warnings,
// so that logging does not count as the code's CPU time.
func testLogger(t testing.TB) *zap.Logger {
	if _, bench := t.(*testing.B); bench {
		return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	return zaptest.NewLogger(t)
}
