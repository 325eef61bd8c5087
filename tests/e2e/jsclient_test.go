package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// jsClientDir holds the matrix-js-sdk conversation (package.json, its
// lock file and conversation.mjs); `npm ci --prefix tests/jsclient`
// installs its node_modules, and `make test` runs that first.
const jsClientDir = "../jsclient"

// TestJSClient drives the server with a second client library in another
// language: tests/jsclient/conversation.mjs, a two-user conversation through
// matrix-js-sdk (register, login, a private_chat room, name and topic,
// invite, join, messages, an edit, a redaction, backwards pagination,
// search, leave, with the SDK's own /sync loop watching). The server runs
// as `make run` runs it: bin/myelin, every service in one process, on a
// config file written by `myelin generate-config`, here pointed at the test
// kit's PostgreSQL and NATS. The script asserts every step; its report is
// the failure message.
func TestJSClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not on PATH: the matrix-js-sdk test needs Node.js 20 or newer and npm (see README)")
	}
	dir, err := filepath.Abs(jsClientDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk", "package.json")); err != nil {
		t.Fatalf("matrix-js-sdk is not installed in %s/node_modules: run `npm ci --prefix tests/jsclient` (make test does): %v", dir, err)
	}

	s := makeRunShape(t)
	s.start(t)
	t.Cleanup(func() { s.stop(t); s.dumpLogs(t) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "conversation.mjs", s.url)
	cmd.Dir = dir
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("node conversation.mjs did not finish in time; output so far:\n%s", out)
		}
		t.Fatalf("node conversation.mjs %s: %v\n%s", s.url, err, out)
	}
	t.Logf("node conversation.mjs:\n%s", out)
}

// makeRunShape is the all-in-one process as `make run` starts it (a config
// file from `myelin generate-config`, no -target), with a throwaway data
// directory, free ports, and the test kit's PostgreSQL and NATS instead of
// the cluster and JetStream server it would start under its data directory.
func makeRunShape(t *testing.T) *server {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "myelin.yaml")
	out, err := exec.Command(myelinBinary(t), "generate-config").Output()
	if err != nil {
		t.Fatalf("myelin generate-config: %v", err)
	}
	if err := os.WriteFile(cfg, out, 0o644); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	return &server{
		url: "http://" + httpAddr,
		procs: []*proc{{
			name: "myelin",
			args: []string{"-config", cfg},
			env: []string{
				"MYELIN_DATA_DIR=" + filepath.Join(dir, "data"),
				"MYELIN_HTTP_LISTEN=" + httpAddr,
				"MYELIN_GRPC_LISTEN=127.0.0.1:0",
				"MYELIN_DATABASE_URL=" + testkit.Postgres(t),
				"MYELIN_NATS_URL=" + testkit.NATS(t),
			},
			log: filepath.Join(dir, "myelin.log"),
		}},
	}
}
