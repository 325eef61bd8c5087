package testkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// envPanicChild makes TestClusterGoneAfterPanic's child run: it starts a
// cluster, prints its URL and panics.
const envPanicChild = "MYELIN_TESTKIT_PANIC_CHILD"

func TestPanickingChild(t *testing.T) {
	if os.Getenv(envPanicChild) == "" {
		t.Skip("runs only as TestClusterGoneAfterPanic's child")
	}
	url := Postgres(t)
	fmt.Printf("cluster %s %s\n", clusterDir, url)
	panic("a test binary that panics runs no TestMain cleanup")
}

// A test binary that panics skips its TestMain, which stops the cluster it
// started; the cluster's watcher stops it anyway, and deletes its files.
func TestClusterGoneAfterPanic(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestPanickingChild$", "-test.v")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvDatabaseURL+"=") { // the child starts its own
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, envPanicChild+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dir, url string
	var lines []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if rest, ok := strings.CutPrefix(sc.Text(), "cluster "); ok {
			dir, url, _ = strings.Cut(rest, " ")
		}
	}
	if err := cmd.Wait(); err == nil {
		t.Fatalf("the child did not fail:\n%s", strings.Join(lines, "\n"))
	}
	if dir == "" || url == "" {
		t.Fatalf("the child printed no cluster directory and URL:\n%s", strings.Join(lines, "\n"))
	}
	Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, url); err == nil {
			conn.Close(ctx)
			return errors.New("the cluster still accepts connections")
		}
		if _, err := os.Stat(dir); err == nil {
			return fmt.Errorf("%s still exists", dir)
		}
		return nil
	})
}
