package devinfra

import (
	"bufio"
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

	"github.com/jackc/pgx/v5"
)

// envOwnerChild makes TestOwnerChild run: it starts a cluster in the
// directory named, with StopOnExit, prints its URL and waits to be killed.
const envOwnerChild = "MYELIN_DEVINFRA_OWNER_DIR"

func TestOwnerChild(t *testing.T) {
	dir := os.Getenv(envOwnerChild)
	if dir == "" {
		t.Skip("runs only as TestClusterStopsWhenItsOwnerIsKilled's child")
	}
	pg, err := StartPostgres(context.Background(), dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.StopOnExit(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("cluster %s\n", pg.URL("postgres"))
	select {} // until killed
}

// poll retries fn every 50 ms until it succeeds or timeout passes.
func poll(t *testing.T, timeout time.Duration, fn func() error) {
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
		time.Sleep(50 * time.Millisecond)
	}
}

// A cluster started with the defaults is durable (fsync, synchronous
// commit and full-page writes on). When the process that started it is
// killed (SIGKILL: no deferred Stop runs), the watcher stops the cluster
// and keeps its data: a new start on the directory finds the rows.
func TestClusterStopsWhenItsOwnerIsKilled(t *testing.T) {
	dir, err := os.MkdirTemp("", "myelin-devinfra-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // the cluster may run as another user (root)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	pgDir := filepath.Join(dir, "postgres")

	cmd := exec.Command(os.Args[0], "-test.run=^TestOwnerChild$", "-test.v")
	cmd.Env = append(os.Environ(), envOwnerChild+"="+pgDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var url string
	var lines []string
	sc := bufio.NewScanner(out)
	for url == "" && sc.Scan() {
		lines = append(lines, sc.Text())
		if rest, ok := strings.CutPrefix(sc.Text(), "cluster "); ok {
			url = rest
		}
	}
	if url == "" {
		t.Fatalf("the child printed no cluster URL:\n%s", strings.Join(lines, "\n"))
	}
	go func() { // drain the rest of the child's output
		for sc.Scan() {
		}
	}()

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes"} {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != "on" {
			t.Errorf("%s = %s, want on: the default cluster must be durable", name, v)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the kill')`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	pidFile := filepath.Join(pgDir, "pgdata", "postmaster.pid")
	poll(t, 60*time.Second, func() error {
		if _, err := os.Stat(pidFile); err == nil {
			return errors.New("postmaster.pid is still there: the cluster runs on")
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if c, err := pgx.Connect(cctx, url); err == nil {
			c.Close(cctx)
			return errors.New("the cluster still accepts connections")
		}
		return nil
	})

	pg, err := StartPostgres(ctx, pgDir, 0)
	if err != nil {
		t.Fatalf("start again on the same directory: %v", err)
	}
	defer pg.Stop()
	if !postmasterRunning(filepath.Join(pgDir, "pgdata")) {
		t.Fatal("the running cluster's postmaster.pid is taken for stale")
	}
	// The same PID in another data directory's postmaster.pid is another
	// cluster's postgres: stale there. The watchers' shell check agrees.
	raw, err := os.ReadFile(filepath.Join(pgDir, "pgdata", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "postmaster.pid"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	stops := func(dataDir string) bool {
		t.Helper()
		out, err := exec.Command("/bin/sh", "-c", pgCtlStopIfRunning+"echo stop", "sh", dataDir).Output()
		if err != nil && len(out) > 0 {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out)) == "stop"
	}
	if !stops(filepath.Join(pgDir, "pgdata")) {
		t.Fatal("the watchers' check does not stop the running cluster")
	}
	if stops(other) {
		t.Fatal("the watchers' check would stop another data directory's postgres")
	}
	if postmasterRunning(other) {
		t.Fatal("another cluster's postgres was taken for this data directory's postmaster")
	}
	if fileExists(filepath.Join(other, "postmaster.pid")) {
		t.Fatal("the stale postmaster.pid is still there")
	}
	conn, err = pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != "before the kill" {
		t.Fatalf("after the restart: %q %v, want the row written before the kill", v, err)
	}
}

// A postmaster.pid whose PID belongs to another process (here the test
// itself: what PID reuse leaves after a postmaster was killed outright) is
// stale: it is removed and nothing is signalled, so pg_ctl stop never
// sends that process a SIGINT. A missing file is not running either.
func TestStalePostmasterPIDIsNotSignalled(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "postmaster.pid")
	if err := os.WriteFile(pidFile, []byte(fmt.Sprintf("%d\n%s\n", os.Getpid(), dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if postmasterRunning(dir) {
		t.Fatal("the test process was taken for a postmaster")
	}
	if fileExists(pidFile) {
		t.Fatal("the stale postmaster.pid is still there")
	}
	if postmasterRunning(dir) {
		t.Fatal("a data directory without postmaster.pid counts as running")
	}
}
