package fedsender_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
	roomserverv1 "github.com/myelin-chat/myelin/proto/roomserver/v1"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// ourName is the Myelin server under test.
const ourName = "ours.test"

// env is Myelin (the real process, every service, federation on, HTTPS
// with certificates from a test CA) and remote servers on loopback that
// it reaches through federation.server_name_map. With split, the
// federation sender runs as a process of its own (the split shape), so
// a test can restart it alone.
type env struct {
	t       testing.TB
	ca      *testkit.CA
	cfg     myelin.Config
	main    *stack.Stack
	sender  *stack.Stack
	split   bool
	fedAddr string
	remotes map[string]*remote
	rs      roomserverv1.RoomServiceClient
	fs      fedsenderv1.FederationSenderServiceClient
}

type envOpts struct {
	remotes []string
	split   bool
	// receiver: the split shape's main process runs the federation
	// receiver too (for a remote Myelin that joins through it).
	receiver bool
	mutate   func(*myelin.Config)
}

func newEnv(t testing.TB, opts envOpts) *env {
	t.Helper()
	ca := testkit.NewCA(t)
	e := &env{t: t, ca: ca, remotes: map[string]*remote{}, split: opts.split}
	cfg := stack.TestConfig(t)
	cfg.ServerName = ourName
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = ca.Issue(t, ourName)
	cfg.Federation.TrustedCAFiles = []string{ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.Federation.ServerNameMap = map[string]string{}
	for _, name := range opts.remotes {
		r := newRemote(t, ca, name, ourName, func() string { return e.fedAddr })
		e.remotes[name] = r
		cfg.Federation.ServerNameMap[name] = r.addr
	}
	cfg.FederationSender.BackoffMin = 50 * time.Millisecond
	cfg.FederationSender.BackoffMax = 400 * time.Millisecond
	cfg.FederationSender.RequestTimeout = 5 * time.Second
	cfg.FederationSender.LeaseTTL = 2 * time.Second
	if opts.mutate != nil {
		opts.mutate(&cfg)
	}
	e.cfg = cfg
	if opts.split {
		targets := []string{myelin.TargetKeyServer, myelin.TargetRoomServer, myelin.TargetPresence, myelin.TargetClientAPI, myelin.TargetMedia}
		if opts.receiver {
			targets = append(targets, myelin.TargetFederationReceiver)
		}
		e.main = stack.StartWithConfig(t, cfg, targets...)
		e.startSender()
	} else {
		e.main = stack.StartWithConfig(t, cfg)
		e.sender = e.main
	}
	e.fedAddr = e.main.Process.FederationAddr()
	conn, err := rpc.Dial(e.main.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.rs = roomserverv1.NewRoomServiceClient(conn)
	return e
}

// startSender starts the federation sender as its own process (split).
func (e *env) startSender() {
	t := e.t
	t.Helper()
	e.sender = e.startReplica(nil)
	conn, err := rpc.Dial(e.sender.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.fs = fedsenderv1.NewFederationSenderServiceClient(conn)
}

// startReplica starts a federation sender process (mutate, if set,
// changes its configuration).
func (e *env) startReplica(mutate func(*myelin.Config)) *stack.Stack {
	e.t.Helper()
	cfg := e.cfg
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.GRPC.Listen = "127.0.0.1:0"
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Services.KeyServer.GRPC = e.main.Process.GRPCAddr()
	cfg.Services.RoomServer.GRPC = e.main.Process.GRPCAddr()
	if mutate != nil {
		mutate(&cfg)
	}
	return stack.StartWithConfig(e.t, cfg, myelin.TargetFederationSender)
}

// senderClient is the FederationSenderService of the process running it.
func (e *env) senderClient() fedsenderv1.FederationSenderServiceClient {
	if e.fs == nil {
		conn, err := rpc.Dial(e.sender.Process.GRPCAddr())
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { _ = conn.Close() })
		e.fs = fedsenderv1.NewFederationSenderServiceClient(conn)
	}
	return e.fs
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
	cli.DeviceID = resp.DeviceID
	return cli
}

// room creates a public room of c's.
func (e *env) room(c *mautrix.Client) id.RoomID {
	e.t.Helper()
	resp, err := c.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.RoomID
}

// remoteJoin makes a remote user join a local room the way the resident
// side of make_join/send_join does: the room-server's template, signed by
// the remote, input as a new event. It returns the join's event ID.
func (e *env) remoteJoin(r *remote, roomID id.RoomID, local string) string {
	t := e.t
	t.Helper()
	ctx := context.Background()
	userID := r.user(local)
	var vers []string
	for v := range gomatrixserverlib.StableRoomVersions() {
		vers = append(vers, string(v))
	}
	tmpl, err := e.rs.MakeMembershipEvent(ctx, &roomserverv1.MakeMembershipEventRequest{RoomId: roomID.String(), UserId: userID,
		Membership: "join", SupportedRoomVersions: vers, Origin: r.name})
	if err != nil || tmpl.GetRefusal() != roomserverv1.Refusal_REFUSAL_NONE {
		t.Fatalf("make_join for %s: %v %s %s", userID, err, tmpl.GetRefusal(), tmpl.GetReason())
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(tmpl.GetRoomVersion()))
	var pe gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(tmpl.GetEventTemplate(), &pe); err != nil {
		t.Fatal(err)
	}
	ev := r.sign(verImpl, &pe)
	resp, err := e.rs.InputEvents(ctx, &roomserverv1.InputEventsRequest{Events: []*roomserverv1.InputEvent{{
		RoomVersion: string(verImpl.Version()), EventJson: ev.JSON(), Kind: roomserverv1.InputKind_INPUT_KIND_NEW}}})
	if err != nil || resp.GetResults()[0].GetStatus() != roomserverv1.InputStatus_INPUT_STATUS_ACCEPTED {
		t.Fatalf("input %s's join: %v %v", userID, err, resp.GetResults())
	}
	return ev.EventID()
}

// send sends n messages as c and returns their event IDs in order.
func send(t testing.TB, c *mautrix.Client, roomID id.RoomID, n int, prefix string) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		resp, err := c.SendText(context.Background(), roomID, fmt.Sprintf("%s %d", prefix, i))
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		ids = append(ids, resp.EventID.String())
	}
	return ids
}

// wantExactlyInOrder checks that the remote received exactly want of the
// room (each once, in that order), and nothing else of ours.
func wantExactlyInOrder(r *remote, roomID id.RoomID, want []string) error {
	got := r.received(roomID.String())
	var ids []string
	for _, p := range got {
		ids = append(ids, p.eventID)
	}
	if len(ids) != len(want) {
		return fmt.Errorf("%s has %d events of the room, want %d", r.name, len(ids), len(want))
	}
	for i := range want {
		if ids[i] != want[i] {
			return fmt.Errorf("%s: event %d is %s, want %s (order or duplicates)", r.name, i, ids[i], want[i])
		}
	}
	return nil
}

// metrics scrapes a process's metrics and returns the value of each
// sample line by its name and labels as printed.
func metrics(t *testing.T, s *stack.Stack) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Process.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func eventually(t *testing.T, fn func() error) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, fn)
}

func userIDOf(c *mautrix.Client) string { return c.UserID.String() }
