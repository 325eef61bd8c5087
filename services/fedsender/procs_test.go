package fedsender_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/myelin"
	"github.com/myelin-chat/myelin/pkg/testkit"
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

// Sender processes of the real binary share destinations, healthy ones
// and a slow, a failing and an unreachable one, under a steady stream of
// events, through: a fourth joining, SIGTERM of one (it hands its
// destinations over), kill -9 of one (its leases expire), SIGSTOP of one
// past its lease and SIGCONT (it finds its leases gone and rejoins).
// After each change the leases settle on the live replicas (the time is
// printed); in the end every remote, the broken ones once repaired, has
// every event exactly once, in order, and none ever had two different
// transactions in flight at once.
func TestSenderProcessesTermKillStop(t *testing.T) {
	if os.Getenv("MYELIN_BIN") == "" {
		t.Skip("needs the myelin binary: MYELIN_BIN (make build; make test sets it)")
	}
	if testing.Short() {
		t.Skip("long")
	}
	var names []string
	for i := range 24 {
		names = append(names, fmt.Sprintf("h%02d.test", i))
	}
	broken := []string{"slow.test", "failing.test", "down.test"}
	names = append(names, broken...)
	e := newEnv(t, envOpts{remotes: names, split: true})
	e.sender.Stop() // only the processes below send
	alice := e.user("alice")
	room := e.room(alice)
	for _, n := range names {
		e.remoteJoin(e.remotes[n], room, "rita")
	}
	e.remotes["slow.test"].setMode(modeSlow)
	e.remotes["failing.test"].setMode(modeError)
	e.remotes["down.test"].down()
	ttl := e.cfg.FederationSender.LeaseTTL
	var procs []*senderProc
	for i := range 3 {
		procs = append(procs, e.startProcess(t, fmt.Sprintf("sender-%d", i)))
	}
	view := newLeaseView(t, e.cfg.NATS.URL)
	s := startStream(t, alice, room)
	settle := func(what string, members int) {
		t.Helper()
		began := time.Now()
		testkit.Eventually(t, 60*time.Second, func() error { return view.settled(members, len(names)) })
		t.Logf("%s: the destinations settled on %d replicas in %s (lease TTL %s)", what, members, time.Since(began).Round(time.Millisecond), ttl)
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
	e.remotes["slow.test"].setMode(modeUp)
	e.remotes["slow.test"].release()
	e.remotes["failing.test"].setMode(modeUp)
	e.remotes["down.test"].up()
	for _, n := range names {
		r := e.remotes[n]
		eventually(t, func() error {
			got := r.received(room.String())
			if len(got) != len(ids) {
				return fmt.Errorf("%s has %d of %d events", n, len(got), len(ids))
			}
			for i := range ids {
				if got[i].eventID != ids[i] {
					return fmt.Errorf("%s: event %d is %s, want %s (order or duplicates)", n, i, got[i].eventID, ids[i])
				}
			}
			return nil
		})
		r.mu.Lock()
		overlaps, same := r.overlaps, r.sameIDOverlaps
		r.mu.Unlock()
		if overlaps > 0 {
			t.Errorf("%s had %d transactions begin while another transaction was in flight", n, overlaps)
		}
		if same > 0 {
			t.Logf("%s: %d retries of a transaction began while its first attempt was still in flight (deduplicated by its ID)", n, same)
		}
	}
	t.Logf("%d events reached each of %d remotes exactly once, in order", len(ids), len(names))
}
