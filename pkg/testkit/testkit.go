// Package testkit starts real dependencies for tests: a PostgreSQL cluster
// (one per test binary, a fresh database per test) and an embedded NATS
// JetStream server (one per test). It imports no service, so every
// service's tests can use it; the whole stack lives in testkit/stack.
package testkit

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/myelin-chat/myelin/pkg/devinfra"
)

// EnvDatabaseURL names an existing PostgreSQL server (a URL whose database
// may create databases) that tests use instead of starting their own.
const EnvDatabaseURL = "MYELIN_TEST_DATABASE_URL"

var (
	clusterOnce sync.Once
	clusterURL  string // URL of the maintenance database
	clusterDir  string // the cluster's directory, when this binary started it
	clusterErr  error
	dbCounter   atomic.Int64
)

// Postgres returns the URL of a new, empty database. The cluster is the one
// named by MYELIN_TEST_DATABASE_URL, or one started for this test binary
// from the machine's PostgreSQL binaries. The test is skipped never: a
// missing PostgreSQL fails it.
func Postgres(t testing.TB) string {
	t.Helper()
	clusterOnce.Do(startCluster)
	if clusterErr != nil {
		t.Fatalf("testkit: PostgreSQL: %v", clusterErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, clusterURL)
	if err != nil {
		t.Fatalf("testkit: connect: %v", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, dbCounter.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testkit: create database: %v", err)
	}
	// Dropped when the test ends (after the test's own cleanups, which were
	// registered later), so a long-lived shared cluster does not fill the disk.
	t.Cleanup(func() { dropDatabase(t, name) })
	return withDatabase(clusterURL, name)
}

// dropDatabase drops a test's database, closing whatever connections the
// test's servers left open. A failure is logged, not fatal: the cluster is
// throwaway.
func dropDatabase(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, clusterURL)
	if err != nil {
		t.Logf("testkit: drop database %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Logf("testkit: drop database %s: %v", name, err)
	}
}

func startCluster() {
	if url := os.Getenv(EnvDatabaseURL); url != "" {
		clusterURL = url
		return
	}
	dir, err := os.MkdirTemp("", "myelin-testpg-")
	if err != nil {
		clusterErr = err
		return
	}
	// Throwaway data: the fast, non-durable settings.
	pg, err := devinfra.StartPostgres(context.Background(), dir, 0, devinfra.FastSettings...)
	if err != nil {
		clusterErr = err
		return
	}
	// The cluster lives as long as the test binary: TestMain stops it
	// (Main, StopCluster), and a watcher process does when the binary ends
	// without that (a panic, a timeout, a kill).
	if err := pg.StopWhenGone(); err != nil {
		pg.Stop()
		clusterErr = err
		return
	}
	clusterURL, clusterDir = pg.URL("postgres"), dir
	stopCluster = func() { pg.Stop(); _ = os.RemoveAll(dir) }
}

var stopCluster = func() {}

// StopCluster stops the cluster this binary started, if any. Call it from
// TestMain after m.Run.
func StopCluster() { stopCluster() }

// withDatabase swaps the database name in a postgres:// URL.
func withDatabase(url, db string) string {
	rest := url
	query := ""
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest, query = rest[:i], rest[i:]
	}
	schemeEnd := strings.Index(rest, "://") + 3
	if slash := strings.IndexByte(rest[schemeEnd:], '/'); slash >= 0 {
		rest = rest[:schemeEnd+slash]
	}
	return rest + "/" + db + query
}

// NATS starts an embedded JetStream server on a free port for this test and
// returns its URL. It stops when the test ends.
func NATS(t testing.TB) string {
	t.Helper()
	n, err := devinfra.StartNATS(t.TempDir(), "127.0.0.1", -1)
	if err != nil {
		t.Fatalf("testkit: NATS: %v", err)
	}
	t.Cleanup(n.Shutdown)
	return n.URL()
}

// JetStream connects to a NATS URL (from NATS) and returns a JetStream
// handle closed when the test ends.
func JetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("testkit: connect NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testkit: JetStream: %v", err)
	}
	return js
}

// Eventually polls fn every 20ms until it returns nil or timeout passes,
// then fails the test with fn's last error.
func Eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Main runs a package's tests and then stops the PostgreSQL cluster the
// binary started. Use it as: func TestMain(m *testing.M) { testkit.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	StopCluster()
	os.Exit(code)
}
