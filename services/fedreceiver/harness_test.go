package fedreceiver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/fedpeer"
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
	remote  *fedpeer.Server // remote.test: joins rooms, sends transactions
	evil    *fedpeer.Server // evil.test: in no room
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
	cfg.Federation.ServerNameMap = map[string]string{"remote.test": e.remote.Addr, "evil.test": e.evil.Addr}
	cfg.FederationReceiver.FetchTimeout = 2 * time.Second
	cfg.FederationReceiver.GapBudget = 6 * time.Second
	cfg.FederationReceiver.TransactionBudget = 30 * time.Second
	cfg.FederationReceiver.TransactionStale = time.Minute
	if edit != nil {
		edit(&cfg)
	}
	e.hs = stack.StartWithConfig(t, cfg)
	e.fedAddr = e.hs.Process.FederationAddr()
	for _, r := range []*fedpeer.Server{e.remote, e.evil} {
		r.Connect(hsName, e.fedAddr, ca)
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
// The remote servers are pkg/testkit/fedpeer servers: their own keys,
// served over HTTPS with a certificate of the test CA, the federation
// reads the receiver makes while filling gaps, and signed requests to
// Myelin.

func newRemoteServer(t *testing.T, ca *testkit.CA, name string) *fedpeer.Server {
	t.Helper()
	r := fedpeer.New(t, name)
	r.Serve(ca)
	return r
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

func raws(evs ...gomatrixserverlib.PDU) []json.RawMessage { return fedpeer.JSONs(evs) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
