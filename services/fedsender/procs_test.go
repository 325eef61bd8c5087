package fedsender_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/rpc"
	"github.com/myelin-chat/myelin/pkg/testkit"
	"github.com/myelin-chat/myelin/pkg/testkit/stack"
	fedsenderv1 "github.com/myelin-chat/myelin/proto/fedsender/v1"
)

// senderProc is a federation sender running as an OS process of the
// myelin binary ($MYELIN_BIN, which make test sets), so a test can
// SIGTERM, kill -9, SIGSTOP and SIGCONT it.
type senderProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	log  string
}

func (e *env) startProcess(t *testing.T, name string) *senderProc {
	t.Helper()
	cfg := e.cfg
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Listen, cfg.GRPC.Listen, cfg.Metrics.Listen = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Federation.Listen = "127.0.0.1:0"
	cfg.Services.KeyServer.GRPC = e.main.Process.GRPCAddr()
	cfg.Services.RoomServer.GRPC = e.main.Process.GRPCAddr()
	cfg.Logging.Level = "info"
	out, err := config.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "myelin.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &senderProc{name: name, log: filepath.Join(dir, "log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(os.Getenv("MYELIN_BIN"), "-config", path, "-target", myelin.TargetFederationSender)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		defer func() {
			if t.Failed() {
				b, _ := os.ReadFile(p.log)
				t.Logf("==== %s log:\n%s", p.name, b)
			}
		}()
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *senderProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: %v: %v", p.name, sig, err)
	}
}

// waitExit waits for the process to end after SIGTERM or kill -9.
func (p *senderProc) waitExit(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit", p.name)
	}
}

// Sender processes of the real binary share 200 destinations: a remote
// Myelin server and fake remotes, most healthy, some slow (each answer
// held a second), failing (500) or unreachable. Under a steady stream of
// events they go through, in turn: a fourth joining, SIGTERM of one (it
// hands its destinations over), kill -9 of one (its leases expire),
// SIGSTOP of one past its lease and SIGCONT (it finds its leases gone and
// rejoins). After each change the leases settle on the live replicas (the
// time is printed), every event sent so far reaches every healthy
// destination exactly once, in order (the fakes count by event ID; the
// remote Myelin's user sees each once), and no destination ever had two
// different transactions in flight at once (the fakes record overlapping
// requests). In the end the broken ones, repaired, get every event exactly
// once too.
func TestSenderProcessesTermKillStop(t *testing.T) {
	if os.Getenv("MYELIN_BIN") == "" {
		t.Skip("needs the myelin binary: MYELIN_BIN (make build; make test sets it)")
	}
	if testing.Short() {
		t.Skip("long")
	}
	const remoteMyelin = "b.test"
	slow := []string{"slow0.test", "slow1.test", "slow2.test"}
	failing := []string{"failing0.test", "failing1.test", "failing2.test"}
	down := []string{"down0.test", "down1.test"}
	var names []string
	for i := range 200 - 1 - len(slow) - len(failing) - len(down) {
		names = append(names, fmt.Sprintf("h%03d.test", i))
	}
	healthy := append(slices.Clone(names), slow...)
	names = slices.Concat(names, slow, failing, down)

	ourFed, theirFed := freeLoopback(t), freeLoopback(t)
	e := newEnv(t, envOpts{remotes: names, split: true, receiver: true, mutate: func(c *myelin.Config) {
		c.Federation.Listen = ourFed
		c.Federation.ServerNameMap[remoteMyelin] = theirFed
		// The default TTL: on a loaded shared host (load average 20-50
		// on 2 cores) 2 s leases ran out between renewals.
		c.FederationSender.LeaseTTL = 5 * time.Second
	}})
	e.sender.Stop() // only the processes below send
	bob, bStack := e.remoteMyelin(remoteMyelin, theirFed)
	alice := e.user("alice")
	room := e.room(alice)
	for _, n := range names {
		e.remoteJoin(e.remotes[n], room, "rita")
	}
	// bob of the remote Myelin joins through its own sender and our
	// receiver (his server fetches the fakes' keys to check the room's
	// state); from then on our senders send it the room's events.
	joinRemoteMyelin(t, bStack, bob, room, ourName)
	for _, n := range slow {
		e.remotes[n].setDelay(time.Second)
	}
	for _, n := range failing {
		e.remotes[n].setMode(modeError)
	}
	for _, n := range down {
		e.remotes[n].down()
	}
	dests := len(names) + 1
	ttl := e.cfg.FederationSender.LeaseTTL
	var procs []*senderProc
	for i := range 3 {
		procs = append(procs, e.startProcess(t, fmt.Sprintf("sender-%d", i)))
	}
	view := newLeaseView(t, e.cfg.NATS.URL)
	s := startStream(t, alice, room, time.Second)

	// overlaps fails the test for any fake that had a transaction begin
	// while another was in flight.
	overlaps := func(what string) {
		t.Helper()
		for _, n := range names {
			r := e.remotes[n]
			r.mu.Lock()
			o, same := r.overlaps, r.sameIDOverlaps
			r.mu.Unlock()
			if o > 0 {
				t.Errorf("%s: %s had %d transactions begin while another transaction was in flight", what, n, o)
			}
			if same > 0 {
				t.Logf("%s: %s: %d retries of a transaction began while its first attempt was still in flight (deduplicated by its ID)", what, n, same)
			}
		}
	}
	// delivered waits until every event sent so far has reached every
	// healthy destination exactly once, in order.
	delivered := func(what string, ids []string) {
		t.Helper()
		began := time.Now()
		for _, n := range healthy {
			eventually(t, func() error { return exactlyOnce(e.remotes[n], room, ids) })
		}
		eventually(t, func() error { return seesOnce(bob, room, ids) })
		t.Logf("%s: the %d events sent so far reached each of %d healthy destinations (the remote Myelin and %d fakes) exactly once, in order (all there %s after the leases settled)",
			what, len(ids), len(healthy)+1, len(healthy), time.Since(began).Round(time.Millisecond))
		overlaps(what)
	}
	settle := func(what string, members int) {
		t.Helper()
		began := time.Now()
		testkit.Eventually(t, 2*time.Minute, func() error { return view.settled(members, dests) })
		t.Logf("%s: the %d destinations settled on %d replicas in %s (lease TTL %s)", what, dests, members,
			time.Since(began).Round(time.Millisecond), ttl)
		delivered(what, s.sent())
	}
	settle("three processes", 3)

	procs = append(procs, e.startProcess(t, "sender-3"))
	settle("a fourth joined", 4)

	time.Sleep(ttl)
	procs[0].signal(t, syscall.SIGTERM)
	procs[0].waitExit(t)
	settle("SIGTERM", 3)

	time.Sleep(ttl)
	procs[1].signal(t, syscall.SIGKILL)
	procs[1].waitExit(t)
	settle("kill -9", 2)

	time.Sleep(ttl)
	procs[2].signal(t, syscall.SIGSTOP)
	settle("SIGSTOP past the lease", 1)
	time.Sleep(ttl)
	procs[2].signal(t, syscall.SIGCONT)
	settle("SIGCONT", 2)

	time.Sleep(ttl)
	ids := s.end()
	if len(ids) < 20 {
		t.Fatalf("only %d events were sent", len(ids))
	}
	for _, n := range failing {
		e.remotes[n].setMode(modeUp)
	}
	for _, n := range down {
		e.remotes[n].up()
	}
	healthy = names
	delivered("the broken ones repaired, the stream ended", ids)
	pdus, repeats := 0, 0
	for _, n := range names {
		got := ours(e.remotes[n].received(room.String()))
		if len(got) != len(ids) {
			t.Errorf("%s has %d events of ours, want %d", n, len(got), len(ids))
		}
		pdus += len(got)
		e.remotes[n].mu.Lock()
		repeats += e.remotes[n].repeats
		e.remotes[n].mu.Unlock()
	}
	t.Logf("in all: %d events × %d fakes = %d PDUs received once each (and by the remote Myelin); %d transactions came again with an ID already received (a retry after a lost answer or a moved lease; dropped by ID)",
		len(ids), len(names), pdus, repeats)
}

// exactlyOnce checks that the remote received ids in order, each once,
// and no other event of ours in the room more than once (the remote
// Myelin's server sends it bob's join too).
func exactlyOnce(r *remote, roomID id.RoomID, ids []string) error {
	got := ours(r.received(roomID.String()))
	seen := map[string]int{}
	for _, p := range got {
		if seen[p.eventID]++; seen[p.eventID] > 1 {
			return fmt.Errorf("%s received %s %d times", r.name, p.eventID, seen[p.eventID])
		}
	}
	if len(got) < len(ids) {
		return fmt.Errorf("%s has %d of %d events", r.name, len(got), len(ids))
	}
	for i := range ids {
		if got[i].eventID != ids[i] {
			return fmt.Errorf("%s: event %d is %s, want %s (order)", r.name, i, got[i].eventID, ids[i])
		}
	}
	return nil
}

// ours keeps the PDUs sent by users of ours.
func ours(pdus []gotPDU) []gotPDU {
	var out []gotPDU
	for _, p := range pdus {
		var head struct {
			Sender string `json:"sender"`
		}
		if json.Unmarshal(p.raw, &head) == nil && strings.HasSuffix(head.Sender, ":"+ourName) {
			out = append(out, p)
		}
	}
	return out
}

// remoteMyelin starts another Myelin server (all in one process) named
// name, federation on fedAddr, that reaches ours through its
// server_name_map, and registers bob on it.
func (e *env) remoteMyelin(name, fedAddr string) (*mautrix.Client, *stack.Stack) {
	t := e.t.(*testing.T)
	cfg := stack.TestConfig(t)
	cfg.ServerName = name
	cfg.ClientAPI.RateLimit.Enabled = false
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = fedAddr
	cfg.Federation.TLSCertFile, cfg.Federation.TLSKeyFile = e.ca.Issue(t, name)
	cfg.Federation.TrustedCAFiles = []string{e.ca.CertFile}
	cfg.Federation.AllowedPrivateNetworks = []string{"127.0.0.0/8"}
	cfg.Federation.ServerNameMap = map[string]string{ourName: e.cfg.Federation.Listen}
	for n, addr := range e.cfg.Federation.ServerNameMap {
		if n != name {
			cfg.Federation.ServerNameMap[n] = addr
		}
	}
	// Its own sender's queue (bob's join for the fakes, which cannot check
	// its signature) waits: only its receiver matters here.
	cfg.FederationSender.BackoffMin, cfg.FederationSender.BackoffMax = 10*time.Minute, 10*time.Minute
	b := stack.StartWithConfig(t, cfg)
	return stackUser(t, b, "bob"), b
}

// joinRemoteMyelin makes c, a user of the Myelin server b, join roomID of
// server through b's federation sender.
func joinRemoteMyelin(t *testing.T, b *stack.Stack, c *mautrix.Client, roomID id.RoomID, server string) {
	t.Helper()
	conn, err := rpc.Dial(b.Process.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fedsenderv1.NewFederationSenderServiceClient(conn).PerformJoin(context.Background(), &fedsenderv1.PerformJoinRequest{
		RoomId: roomID.String(), UserId: c.UserID.String(), ServerNames: []string{server}}); err != nil {
		t.Fatalf("%s joins %s through its sender: %v", c.UserID, roomID, err)
	}
}

// seesOnce checks that c's view of the room's history (all of it, page
// by page) holds each of ids exactly once, in that order.
func seesOnce(c *mautrix.Client, roomID id.RoomID, ids []string) error {
	want := map[string]bool{}
	for _, x := range ids {
		want[x] = true
	}
	var got []string // newest first
	from := ""
	for {
		resp, err := c.Messages(context.Background(), roomID, from, "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			return err
		}
		for _, ev := range resp.Chunk {
			if want[ev.ID.String()] {
				got = append(got, ev.ID.String())
			}
		}
		if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
			break
		}
		from = resp.End
	}
	slices.Reverse(got)
	if !slices.Equal(got, ids) {
		return fmt.Errorf("%s sees %d of the %d events (or not once each, in order)", c.UserID, len(got), len(ids))
	}
	return nil
}
