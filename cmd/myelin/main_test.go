package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// envArgs makes the test binary run main with these arguments (JSON).
const envArgs = "MYELIN_MAIN_TEST_ARGS"

func TestMain(m *testing.M) {
	if raw := os.Getenv(envArgs); raw != "" {
		var args []string
		if err := json.Unmarshal([]byte(raw), &args); err != nil {
			panic(err)
		}
		os.Args = append([]string{"myelin"}, args...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// myelinCmd runs main in a child process with args. Were it to start a
// server, that server would find its HTTP address taken (busy) and stop
// at once, and its data directory would have a lock file.
func myelinCmd(t *testing.T, busy, dataDir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	raw, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envArgs+"="+string(raw),
		"MYELIN_HTTP_LISTEN="+busy, "MYELIN_DATA_DIR="+dataDir, "MYELIN_DATABASE_URL=", "MYELIN_NATS_URL=",
		"MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// Help, version and command lines that are not understood never start a
// server: help and version answer and exit 0; an unknown command, a stray
// argument or an unknown flag prints the usage text and exits 2. Help
// lists every command.
func TestCommandLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	commands := []string{"generate-config", "register-user", "health", "rotate-key", "version", "help"}
	cases := []struct {
		args     []string
		code     int
		stdout   []string // each must appear in standard output
		stderr   []string // each must appear in standard error
		noStdout bool
	}{
		{args: []string{"help"}, stdout: commands},
		{args: []string{"-h"}, stdout: commands},
		{args: []string{"--help"}, stdout: commands},
		{args: []string{"-target", "all", "-h"}, stdout: commands},
		{args: []string{"version"}, stdout: []string{"myelin ", "go1."}},
		{args: []string{"--version"}, stdout: []string{"myelin "}},
		{args: []string{"generate-config"}, stdout: []string{"server_name:", "shared_secret:"}},
		{args: []string{"generate-confg"}, code: 2, stderr: append([]string{`unknown command "generate-confg"`}, commands...), noStdout: true},
		{args: []string{"-target", "all", "stray"}, code: 2, stderr: []string{`unexpected argument "stray"`, "Usage:"}, noStdout: true},
		{args: []string{"-bogus"}, code: 2, stderr: []string{"-bogus", "Usage:"}, noStdout: true},
		{args: []string{"version", "extra"}, code: 2, stderr: []string{"takes no arguments", "Usage:"}, noStdout: true},
		{args: []string{"generate-config", "extra"}, code: 2, stderr: []string{"takes no arguments", "Usage:"}, noStdout: true},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			dataDir := t.TempDir()
			stdout, stderr, code := myelinCmd(t, busy.Addr().String(), dataDir, c.args...)
			if code != c.code {
				t.Fatalf("exit status %d, want %d\nstdout: %s\nstderr: %s", code, c.code, stdout, stderr)
			}
			for _, want := range c.stdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("standard output lacks %q:\n%s", want, stdout)
				}
			}
			for _, want := range c.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("standard error lacks %q:\n%s", want, stderr)
				}
			}
			if c.noStdout && stdout != "" {
				t.Errorf("standard output: %s", stdout)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "myelin.lock")); err == nil || strings.Contains(stderr, "http.listen") {
				t.Errorf("a server was started:\n%s", stderr)
			}
		})
	}
}

// register-user with a configuration that has no shared secret names the
// setting, its variable, and the restart the server needs.
func TestRegisterUserWithoutSecretExplains(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "myelin.yaml")
	stdout, _, code := myelinCmd(t, "127.0.0.1:0", t.TempDir(), "generate-config")
	if code != 0 {
		t.Fatalf("generate-config: exit %d", code)
	}
	if err := os.WriteFile(cfg, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := myelinCmd(t, "127.0.0.1:0", t.TempDir(), "register-user", "-config", cfg, "-user", "alice", "-password", "pw")
	if code != 1 {
		t.Fatalf("exit status %d, want 1: %s", code, stderr)
	}
	for _, want := range []string{"client_api.registration.shared_secret", "MYELIN_CLIENT_API_REGISTRATION_SHARED_SECRET", "restart the server"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the error does not say %q:\n%s", want, stderr)
		}
	}
}

// A SIGTERM ends the server's context with the signal as its cause, and
// the log says which signal came (the process's own PID with it).
func TestStopOnSignalSaysWhich(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	ctx, stop := stopOnSignal(zap.New(core))
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	if cause := context.Cause(ctx); cause == nil || !strings.Contains(cause.Error(), "signal terminated") {
		t.Errorf("cause %v, want the signal", cause)
	}
	entries := logs.FilterMessage("stopping: signal received").All()
	if len(entries) != 1 || entries[0].ContextMap()["signal"] != "terminated" {
		t.Errorf("log %v, want one entry naming SIGTERM", logs.All())
	}
}
