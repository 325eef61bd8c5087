package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// makeRunLocal is `make run`'s shape with nothing external: a config from
// `myelin generate-config`, and the local PostgreSQL cluster and embedded
// NATS under its data directory.
func makeRunLocal(t *testing.T) (s *server, cfg, dataDir string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "myelin-e2e-life-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // the cluster may run as another user (root)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg = filepath.Join(dir, "myelin.yaml")
	out, err := exec.Command(myelinBinary(t), "generate-config").Output()
	if err != nil {
		t.Fatalf("myelin generate-config: %v", err)
	}
	if err := os.WriteFile(cfg, out, 0o644); err != nil {
		t.Fatal(err)
	}
	dataDir = filepath.Join(dir, "data")
	httpAddr := freeAddr(t)
	s = &server{url: "http://" + httpAddr, procs: []*proc{{
		name: "myelin",
		args: []string{"-config", cfg},
		env: []string{
			"MYELIN_DATA_DIR=" + dataDir,
			"MYELIN_HTTP_LISTEN=" + httpAddr,
			"MYELIN_DATABASE_URL=", "MYELIN_NATS_URL=",
			"MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET=",
		},
		log: filepath.Join(dir, "myelin.log"),
	}}}
	return s, cfg, dataDir
}

// runMyelin runs the binary to completion with extra environment.
func runMyelin(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, myelinBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The life of the process `make run` starts, on its own data directory:
//   - a second myelin on the same data directory refuses to start, naming
//     the running one, and the running one goes on (its PostgreSQL used to
//     be stopped as a leftover);
//   - register-user explains the missing shared secret on either side;
//   - killed with SIGKILL, it leaves no PostgreSQL behind (the watcher
//     stops it), and a new start on the directory has the data;
//   - restarted with a shared secret, the README's register-user sequence
//     creates an account.
func TestMakeRunLifecycle(t *testing.T) {
	s, cfg, dataDir := makeRunLocal(t)
	// Registered first: a process that did start is stopped even when
	// another fails to.
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	s.start(t)
	first := s.procs[0]
	ctx := context.Background()
	alice := register(t, s.url, "alice")
	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}

	// A second myelin on the same data directory (another HTTP address).
	out, err := runMyelin(t, []string{"MYELIN_DATA_DIR=" + dataDir, "MYELIN_HTTP_LISTEN=" + freeAddr(t), "MYELIN_DATABASE_URL=", "MYELIN_NATS_URL="}, "-config", cfg)
	if want := fmt.Sprintf("already running (pid %d)", first.cmd.Process.Pid); err == nil || !strings.Contains(out, want) {
		t.Fatalf("second myelin: %v, output:\n%s\nwant it to refuse with %q", err, out, want)
	}
	if _, err := alice.cli.JoinedRooms(ctx); err != nil {
		t.Fatalf("the running server after the refused start: %v", err)
	}

	// register-user without a secret, from the config and against the server.
	out, err = runMyelin(t, []string{"MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET="}, "register-user", "-url", s.url, "-config", cfg, "-user", "op", "-password", "pw")
	if err == nil || !strings.Contains(out, "client_api.registration.shared_secret") || !strings.Contains(out, "restart the server") {
		t.Fatalf("register-user with the default config: %v\n%s", err, out)
	}
	out, err = runMyelin(t, nil, "register-user", "-url", s.url, "-secret", "guess", "-user", "op", "-password", "pw")
	if err == nil || !strings.Contains(out, "client_api.registration.shared_secret") || !strings.Contains(out, "restart the server") {
		t.Fatalf("register-user against a server without a secret: %v\n%s", err, out)
	}

	// SIGKILL: no cleanup runs; the watcher stops PostgreSQL.
	pidFile := filepath.Join(dataDir, "postgres", "pgdata", "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("the local cluster is not running: %v", err)
	}
	_ = first.signal(syscall.SIGKILL)
	<-first.done
	first.cmd = nil
	testkit.Eventually(t, 2*time.Minute, func() error {
		if _, err := os.Stat(pidFile); err == nil {
			return errors.New("PostgreSQL still runs after myelin was killed")
		}
		return nil
	})

	// Restarted with a shared secret, as the README says.
	const secret = "e2e-lifecycle-secret"
	first.env = append(first.env, "MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET="+secret)
	s.start(t)
	if _, err := alice.cli.JoinedRooms(ctx); err != nil {
		t.Fatalf("alice after the restart: %v", err)
	}
	var name struct {
		Name string `json:"name"`
	}
	if err := alice.cli.StateEvent(ctx, room.RoomID, event.StateRoomName, "", &name); err != nil || name.Name != "kept" {
		t.Fatalf("the room after the kill and restart: %q %v", name.Name, err)
	}
	out, err = runMyelin(t, []string{"MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET=" + secret}, "register-user", "-url", s.url, "-config", cfg, "-user", "op", "-password", "op-password", "-admin")
	if err != nil || !strings.Contains(out, "created @op:") {
		t.Fatalf("register-user after the restart with a secret: %v\n%s", err, out)
	}
}
