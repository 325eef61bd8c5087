package myelin_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/myelin"
)

// A second process on a data directory in use refuses to start, naming
// the running one, and leaves the running one's PostgreSQL alone (it used
// to stop it as a leftover). Once the first has stopped, the second
// starts on the same directory and finds the data.
func TestDataDirLockedWhileRunning(t *testing.T) {
	cfg := myelin.DefaultConfig()
	cfg.DataDir = traversableDir(t)
	cfg.HTTP.Listen, cfg.GRPC.Listen = "127.0.0.1:0", "127.0.0.1:0"
	start := func() (*myelin.Process, error) {
		return myelin.Start(context.Background(), cfg, allTargets(t), zaptest.NewLogger(t))
	}
	first, err := start()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = first.Stop()
		}
	})
	ctx := context.Background()
	register := func(p *myelin.Process, user string) error {
		cli, err := mautrix.NewClient("http://"+p.HTTPAddr(), "", "")
		if err != nil {
			return err
		}
		_, err = cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: user, Password: "pw-" + user})
		return err
	}
	if err := register(first, "first"); err != nil {
		t.Fatal(err)
	}

	second, err := start()
	if err == nil {
		_ = second.Stop()
		t.Fatal("a second process started on the same data directory")
	}
	if want := fmt.Sprintf("already running (pid %d)", os.Getpid()); !errors.Is(err, myelin.ErrDataDirInUse) || !strings.Contains(err.Error(), want) {
		t.Fatalf("second start: %v, want %q", err, want)
	}
	if err := register(first, "still-served"); err != nil {
		t.Fatalf("the running process after the refused start: %v", err)
	}

	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	second, err = start()
	if err != nil {
		t.Fatalf("start after the first stopped: %v", err)
	}
	defer second.Stop()
	var httpErr mautrix.HTTPError
	if err := register(second, "first"); !errors.As(err, &httpErr) || httpErr.RespError == nil || httpErr.RespError.ErrCode != "M_USER_IN_USE" {
		t.Fatalf("registering the first user again: %v, want M_USER_IN_USE (the data kept)", err)
	}
}
