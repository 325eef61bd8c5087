package myelin_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/devinfra"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
)

// natsServer is an embedded JetStream server the test stops and starts
// again on the same port and store.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	srv  *devinfra.NATS
}

func startNATS(t *testing.T) *natsServer {
	t.Helper()
	n := &natsServer{t: t, dir: t.TempDir(), port: -1}
	n.start()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(n.srv.URL(), "nats://"))
	n.port, _ = strconv.Atoi(port)
	t.Cleanup(func() {
		if n.srv != nil {
			n.srv.Shutdown()
		}
	})
	return n
}

func (n *natsServer) start() {
	n.t.Helper()
	srv, err := devinfra.StartNATS(n.dir, "127.0.0.1", n.port)
	if err != nil {
		n.t.Fatalf("start NATS: %v", err)
	}
	n.srv = srv
}

func (n *natsServer) stop()       { n.srv.Shutdown(); n.srv = nil }
func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// tcpProxy forwards connections to target until cut, which ends the open
// ones and refuses new ones until restore: a network partition between
// one process and NATS.
type tcpProxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cutOff bool
	conns  map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { lis.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *tcpProxy) url() string { return "nats://" + p.lis.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cutOff {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); out.Close(); in.Close() }()
		go func() { _, _ = io.Copy(in, out); out.Close(); in.Close() }()
	}
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *tcpProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = false
}

// waitNATSReady waits until the process at base reports its NATS
// connection up (or down).
func waitNATSReady(t *testing.T, base string, up bool) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error {
		code, body := getJSON(t, base+"/readyz")
		failed, _ := body["failed"].(map[string]any)
		if _, natsDown := failed["nats"]; natsDown == up {
			return fmt.Errorf("/readyz: %d %v", code, body)
		}
		return nil
	})
}

// messageBodies returns the room's message bodies, newest first.
func messageBodies(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	msgs, err := cli.Messages(context.Background(), roomID, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, ev := range msgs.Chunk {
		if ev.Type == event.EventMessage {
			bodies = append(bodies, fmt.Sprint(ev.Content.Raw["body"]))
		}
	}
	return bodies
}

// undeliverableClient registers a user on base and creates a room.
func undeliverableClient(t *testing.T, base string) (*mautrix.Client, id.RoomID) {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(base, "", "")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "sender", Password: "pw-sender"})
	if err != nil {
		t.Fatal(err)
	}
	cli.SetCredentials(reg.UserID, reg.AccessToken)
	room, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	return cli, room.RoomID
}

func sendText(cli *mautrix.Client, roomID id.RoomID, txn string) (id.EventID, error) {
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.EventMessage,
		map[string]any{"msgtype": "m.text", "body": txn}, mautrix.ReqSendEvent{TransactionID: txn})
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// With NATS down, a send fails fast with 503 and Retry-After (it used to
// wait 10 s for the client-API's copy and then answer 200 with an event
// nobody could read yet). Nothing is stored: once NATS is back the same
// transaction is sent, once.
func TestSendWhileNATSIsDown(t *testing.T) {
	n := startNATS(t)
	cfg := stack.TestConfig(t)
	cfg.NATS.URL = n.url()
	s := stack.StartWithConfig(t, cfg)
	cli, roomID := undeliverableClient(t, s.URL())
	if _, err := sendText(cli, roomID, "before"); err != nil {
		t.Fatal(err)
	}

	n.stop()
	waitNATSReady(t, s.URL(), false)
	_, err := sendText(cli, roomID, "during")
	wantUnavailable(t, "send while NATS is down", err)

	n.start()
	waitNATSReady(t, s.URL(), true)
	if _, err := sendText(cli, roomID, "during"); err != nil {
		t.Fatalf("the send retried after the outage: %v", err)
	}
	if got := messageBodies(t, cli, roomID); fmt.Sprint(got) != "[during before]" {
		t.Fatalf("messages: %v, want [during before]", got)
	}
}

// In the split shape the client-API (here with the media service, which
// it calls and which calls it) can lose NATS while the room-server has
// it: the room-server commits and publishes the event, but the
// client-API's copy cannot get it. The send answers 503 at once; the
// event is not lost: once the client-API reconnects it is in the room,
// and the client's retry with the same transaction ID returns it without
// sending it twice.
func TestSendWhenTheClientAPICannotReachNATS(t *testing.T) {
	natsURL := testkit.NATS(t)
	core := stack.TestConfig(t)
	core.NATS.URL = natsURL
	backend := stack.StartWithConfig(t, core, myelin.TargetKeyServer, myelin.TargetRoomServer, myelin.TargetPresence)

	proxy := startProxy(t, strings.TrimPrefix(natsURL, "nats://"))
	front := stack.TestConfig(t)
	front.Database.URL = core.Database.URL
	front.NATS.URL = proxy.url()
	for _, svc := range []*myelin.ServiceAddress{&front.Services.KeyServer, &front.Services.RoomServer, &front.Services.Presence} {
		svc.GRPC = backend.Process.GRPCAddr()
	}
	s := stack.StartWithConfig(t, front, myelin.TargetClientAPI, myelin.TargetMedia)
	cli, roomID := undeliverableClient(t, s.URL())
	if _, err := sendText(cli, roomID, "before"); err != nil {
		t.Fatal(err)
	}

	proxy.cut()
	waitNATSReady(t, s.URL(), false)
	_, err := sendText(cli, roomID, "during")
	wantUnavailable(t, "send while the client-API cannot reach NATS", err)

	proxy.restore()
	waitNATSReady(t, s.URL(), true)
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := messageBodies(t, cli, roomID); fmt.Sprint(got) != "[during before]" {
			return fmt.Errorf("messages: %v, want [during before]", got)
		}
		return nil
	})
	if _, err := sendText(cli, roomID, "during"); err != nil {
		t.Fatalf("the send retried after the outage: %v", err)
	}
	if got := messageBodies(t, cli, roomID); fmt.Sprint(got) != "[during before]" {
		t.Fatalf("messages after the retry: %v, want [during before]", got)
	}
}
