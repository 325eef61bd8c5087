package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// binary is the myelin binary under test: $MYELIN_BIN (make test sets it to
// bin/myelin) or one built into a temporary directory.
var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

func myelinBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		if p := os.Getenv("MYELIN_BIN"); p != "" {
			binaryPath, binaryErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "myelin-e2e-bin-")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "myelin")
		cmd := exec.Command("go", "build", "-o", binaryPath, "github.com/myelin-chat/myelin/cmd/myelin")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// proc is one myelin OS process.
type proc struct {
	name string
	// bin is the program to run (empty: the myelin binary under test) and
	// dir its working directory (empty: the test's).
	bin  string
	dir  string
	args []string
	env  []string
	log  string
	cmd  *exec.Cmd
	done chan error
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "==== start %s %v\n", p.name, time.Now().Format(time.RFC3339Nano))
	bin := p.bin
	if bin == "" {
		bin = myelinBinary(t)
	}
	cmd := exec.Command(bin, p.args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	fmt.Fprintf(f, "==== %s runs as pid %d\n", p.name, cmd.Process.Pid)
	p.cmd = cmd
	p.done = make(chan error, 1)
	go func() { p.done <- cmd.Wait(); f.Close() }()
}

// signal sends the process sig, and first says so in its log: every
// signal the test sends is there, so a process that logs a signal it was
// not sent ("stopping: signal received") got it from elsewhere. (Signals
// go through the process's pidfd: never to a PID since reused.)
func (p *proc) signal(sig syscall.Signal) error {
	if f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		fmt.Fprintf(f, "==== %s the test sends %v to %s (pid %d)\n", time.Now().Format(time.RFC3339Nano), sig, p.name, p.cmd.Process.Pid)
		f.Close()
	}
	return p.cmd.Process.Signal(sig)
}

// stop sends SIGTERM and waits; a process that does not stop is killed and
// the test fails (shutdown must be clean).
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.cmd == nil {
		return
	}
	_ = p.signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s exited with %v (log: %s)", p.name, err, p.log)
		}
	case <-time.After(30 * time.Second):
		_ = p.signal(syscall.SIGKILL)
		<-p.done
		t.Errorf("%s did not stop within 30s", p.name)
	}
	p.cmd = nil
}

// quit asks a still-running process for a goroutine dump (Go prints every
// goroutine's stack on SIGQUIT and exits), so a hang shows where it stuck.
func (p *proc) quit() {
	if p.cmd == nil {
		return
	}
	_ = p.signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.signal(syscall.SIGKILL)
		<-p.done
	}
	p.cmd = nil
}

// server is a Myelin deployment under test, reached at url.
type server struct {
	url   string
	procs []*proc
	logs  []string
	// mediaDir is where the media service keeps content (file backend).
	mediaDir string
	// natsURL is the external NATS server of the split shape ("" for the
	// all-in-one shape's embedded one).
	natsURL string
	// ready are further URLs that answer 200 once the deployment is up
	// (processes no request of the tests reaches, such as the federation
	// sender's /readyz).
	ready []string
}

func (s *server) start(t *testing.T) {
	t.Helper()
	for _, p := range s.procs {
		p.start(t)
	}
	waitReady(t, s.url+"/_matrix/client/versions", s)
	for _, u := range s.ready {
		waitReady(t, u, s)
	}
}

func (s *server) stop(t *testing.T) {
	t.Helper()
	// Stop in reverse order: edge first, key-server last.
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].stop(t)
	}
}

func (s *server) restart(t *testing.T) {
	t.Helper()
	s.stop(t)
	s.start(t)
}

// shutdown stops the processes; when the test failed they are first asked
// for goroutine dumps, which land in their logs.
func (s *server) shutdown(t *testing.T) {
	if t.Failed() {
		for _, p := range s.procs {
			p.quit()
		}
	}
	s.stop(t)
}

// dumpLogs prints the processes' logs when the test failed, and keeps a
// full copy of each (the printed part is cut to its end).
func (s *server) dumpLogs(t *testing.T) {
	if !t.Failed() && os.Getenv("MYELIN_E2E_LOGS") == "" {
		return
	}
	for _, p := range s.procs {
		data, _ := os.ReadFile(p.log)
		if t.Failed() {
			if f, err := os.CreateTemp("", "myelin-e2e-"+p.name+"-*.log"); err == nil {
				_, _ = f.Write(data)
				_ = f.Close()
				t.Logf("full log of %s kept at %s", p.name, f.Name())
			}
		}
		if len(data) > 64<<10 {
			data = append([]byte("...\n"), data[len(data)-64<<10:]...)
		}
		t.Logf("---- log of %s ----\n%s", p.name, data)
	}
}

func waitReady(t *testing.T, url string, s *server) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		for _, p := range s.procs {
			select {
			case err := <-p.done:
				p.done <- err
				t.Errorf("%s exited during start-up: %v", p.name, err)
				s.dumpLogs(t)
				t.FailNow()
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("%s not ready: %v", url, err)
			s.dumpLogs(t)
			t.FailNow()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// handedOut are the addresses freeAddr has returned in this test binary.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// freeAddr returns a loopback address that was free a moment ago and that
// it has not returned before: the kernel may give a port just closed to the
// next listener, so without the check two processes of one test could be
// told the same address.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
}

// allInOne is `make run`'s shape: one process, no database or NATS URL, so
// it starts its own PostgreSQL cluster and embedded JetStream under its
// data directory.
func allInOne(t *testing.T) *server {
	dir, err := os.MkdirTemp("", "myelin-e2e-aio-")
	if err != nil {
		t.Fatal(err)
	}
	// The PostgreSQL cluster may run as another user when tests run as root.
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	httpAddr := freeAddr(t)
	s := &server{url: "http://" + httpAddr, mediaDir: filepath.Join(dir, "data", "media")}
	s.procs = []*proc{{
		name: "all-in-one",
		args: []string{"-target", "all"},
		env: []string{
			"MYELIN_DATA_DIR=" + filepath.Join(dir, "data"),
			"MYELIN_HTTP_LISTEN=" + httpAddr,
			"MYELIN_GRPC_LISTEN=127.0.0.1:0",
			"MYELIN_DATABASE_URL=",
			"MYELIN_NATS_URL=",
		},
		log: filepath.Join(dir, "all-in-one.log"),
	}}
	return s
}

// split runs key-server, room-server, presence, client-api, media, the
// two federation services (receiver and sender) and the appservice
// service as eight OS processes plus the edge router, against an
// external PostgreSQL and NATS server.
func split(t *testing.T) *server { return splitWith(t, nil) }

// splitWith is split with application service registration files, which
// every process loads.
func splitWith(t *testing.T, appserviceFiles []string) *server {
	dir := t.TempDir()
	natsURL := testkit.NATS(t)
	common := []string{
		"MYELIN_DATABASE_URL=" + testkit.Postgres(t),
		"MYELIN_NATS_URL=" + natsURL,
		"MYELIN_DATA_DIR=" + dir,
	}
	if len(appserviceFiles) > 0 {
		common = append(common, "MYELIN_APPSERVICE_CONFIG_FILES="+strings.Join(appserviceFiles, ","))
	}
	type addrs struct{ http, grpc string }
	ks := addrs{freeAddr(t), freeAddr(t)}
	rs := addrs{freeAddr(t), freeAddr(t)}
	ps := addrs{freeAddr(t), freeAddr(t)}
	ca := addrs{freeAddr(t), freeAddr(t)}
	ms := addrs{freeAddr(t), freeAddr(t)}
	fr := addrs{freeAddr(t), freeAddr(t)}
	fs := addrs{freeAddr(t), freeAddr(t)}
	as := addrs{freeAddr(t), freeAddr(t)}
	edge := freeAddr(t)
	mk := func(name, target string, a addrs, extra ...string) *proc {
		env := append(append([]string{}, common...),
			"MYELIN_HTTP_LISTEN="+a.http, "MYELIN_GRPC_LISTEN="+a.grpc)
		return &proc{name: name, args: []string{"-target", target}, env: append(env, extra...), log: filepath.Join(dir, name+".log")}
	}
	s := &server{url: "http://" + edge, mediaDir: filepath.Join(dir, "media"), natsURL: natsURL, ready: []string{"http://" + fs.http + "/readyz"}}
	s.procs = []*proc{
		mk("key-server", "key-server", ks),
		mk("room-server", "room-server", rs, "MYELIN_SERVICES_KEY_SERVER_GRPC="+ks.grpc),
		mk("presence", "presence", ps, "MYELIN_SERVICES_ROOM_SERVER_GRPC="+rs.grpc),
		mk("client-api", "client-api", ca,
			"MYELIN_SERVICES_KEY_SERVER_GRPC="+ks.grpc, "MYELIN_SERVICES_ROOM_SERVER_GRPC="+rs.grpc,
			"MYELIN_SERVICES_PRESENCE_GRPC="+ps.grpc, "MYELIN_SERVICES_MEDIA_GRPC="+ms.grpc),
		mk("media", "media", ms, "MYELIN_SERVICES_CLIENT_API_GRPC="+ca.grpc, "MYELIN_SERVICES_KEY_SERVER_GRPC="+ks.grpc,
			"MYELIN_MEDIA_STORAGE_PATH="+filepath.Join(dir, "media")),
		mk("federation-receiver", "federation-receiver", fr,
			"MYELIN_SERVICES_KEY_SERVER_GRPC="+ks.grpc, "MYELIN_SERVICES_ROOM_SERVER_GRPC="+rs.grpc,
			"MYELIN_SERVICES_PRESENCE_GRPC="+ps.grpc, "MYELIN_SERVICES_CLIENT_API_GRPC="+ca.grpc),
		mk("federation-sender", "federation-sender", fs,
			"MYELIN_SERVICES_KEY_SERVER_GRPC="+ks.grpc, "MYELIN_SERVICES_ROOM_SERVER_GRPC="+rs.grpc),
		mk("appservice", "appservice", as, "MYELIN_SERVICES_ROOM_SERVER_GRPC="+rs.grpc),
		mk("edge", "edge", addrs{edge, "127.0.0.1:0"},
			"MYELIN_SERVICES_CLIENT_API_HTTP="+ca.http, "MYELIN_SERVICES_KEY_SERVER_HTTP="+ks.http,
			"MYELIN_SERVICES_MEDIA_HTTP="+ms.http, "MYELIN_SERVICES_FEDERATION_RECEIVER_HTTP="+fr.http),
	}
	if len(appserviceFiles) > 0 {
		// With registrations the client-API asks the appservice service.
		for _, p := range s.procs {
			if p.name == "client-api" {
				p.env = append(p.env, "MYELIN_SERVICES_APPSERVICE_GRPC="+as.grpc)
			}
		}
	}
	return s
}

// do sends a raw HTTP request (for inputs a client library cannot produce)
// and returns the status and body.
func do(t *testing.T, method, url, token string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	return res.StatusCode, buf.Bytes()
}
