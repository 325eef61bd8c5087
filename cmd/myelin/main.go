// Command myelin runs any subset of Myelin's services in one process:
//
//	myelin -config myelin.yaml                 # every service (all-in-one)
//	myelin -config myelin.yaml -target room-server
//	myelin generate-config > myelin.yaml      # the default configuration
//	myelin register-user -url http://localhost:8008 -config myelin.yaml -user alice -password-file - [-admin]
//	myelin health -config myelin.yaml [-path /readyz|/healthz]   # exit status 0 when ready
//	myelin rotate-key [-config myelin.yaml] [-grpc key-server:9101]   # new signing key; the old one stays published
//	myelin version
//	myelin help
//
// It only loads configuration and calls myelin.Run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"

	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/myelin"
)

// defaultGCPercent replaces Go's GOGC default of 100 when GOGC is unset.
// Under load the collector was 12 % of the server's CPU (#5); at 200 it
// runs half as often for a heap that may grow to three times the live
// data instead of twice. Idle memory barely changes, since little is live.
// Deployments with a memory limit should also set runtime.memory_limit
// (or GOMEMLIMIT); the all-in-one shape has one by default.
const defaultGCPercent = 200

// usage lists every command. A command's own flags: myelin <command> -h.
const usage = `Usage:
  myelin [-config FILE] [-target LIST]   run services (default: all of them, in one process)
  myelin generate-config                 print the default configuration (YAML)
  myelin register-user [flags]           create an account on a running server (shared-secret registration)
  myelin health [flags]                  ask a running process whether it is ready (exit status 0 if so)
  myelin rotate-key [flags]              make the key-server sign with a new key (the old one stays published)
  myelin version                         print the version
  myelin help                            print this text

Flags of the server:
  -config FILE   the YAML configuration (optional; MYELIN_* environment variables override it)
  -target LIST   comma-separated services to run: all, or any of %v

Run "myelin register-user -h", "myelin health -h" or "myelin rotate-key -h" for their flags.
`

// usageError is a command line that is not understood: main prints it
// and the usage text to standard error, and exits with status 2.
type usageError string

func (e usageError) Error() string { return string(e) }

func usageErrorf(format string, args ...any) error { return usageError(fmt.Sprintf(format, args...)) }

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "myelin: %v\n\n", err)
			printUsage(os.Stderr)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "myelin:", err)
		os.Exit(1)
	}
}

func printUsage(w io.Writer) { fmt.Fprintf(w, usage, myelin.TargetNames()) }

// noArgs refuses arguments after a command that takes none.
func noArgs(cmd string, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd, args)
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch cmd, rest := args[0], args[1:]; cmd {
		case "generate-config":
			if err := noArgs(cmd, rest); err != nil {
				return err
			}
			cfg := myelin.DefaultConfig()
			out, err := config.Marshal(&cfg)
			if err != nil {
				return err
			}
			_, err = stdout.Write(out)
			return err
		case "register-user":
			return registerUser(rest, os.Stdin, stdout)
		case "health":
			return health(rest, stdout)
		case "rotate-key":
			return rotateKey(rest, stdout)
		case "version", "-version", "--version":
			if err := noArgs(cmd, rest); err != nil {
				return err
			}
			_, err := fmt.Fprintf(stdout, "myelin %s (%s, %s/%s)\n", myelin.Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		case "help", "-h", "-help", "--help":
			printUsage(stdout)
			return nil
		default:
			if cmd == "" || cmd[0] != '-' {
				return usageErrorf("unknown command %q", cmd)
			}
		}
	}
	fs := flag.NewFlagSet("myelin", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // main prints the error and the usage text
	configPath := fs.String("config", "", "")
	target := fs.String("target", myelin.TargetAll, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h after other flags
			printUsage(stdout)
			return nil
		}
		return usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := myelin.Load(*configPath)
	if err != nil {
		return err
	}
	targets, err := myelin.ParseTargets(*target)
	if err != nil {
		return err
	}
	log, err := logging.New(cfg.Logging)
	if err != nil {
		return err
	}
	limit, from, err := myelin.ApplyMemoryLimit(cfg, targets)
	if err != nil {
		return err
	}
	if limit > 0 && limit < math.MaxInt64 {
		log.Info("Go soft memory limit", zap.Int64("bytes", limit), zap.String("from", from))
	}
	ctx, stop := stopOnSignal(log)
	defer stop()
	err = myelin.Run(ctx, cfg, targets, log)
	if err != nil && ctx.Err() != nil {
		// "start key-server: context canceled" says who ended it.
		err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	return err
}

// stopOnSignal returns a context that ends at the first SIGINT or SIGTERM
// (later ones are ignored until stop), with the signal as its cause, and
// logs which signal came: a process ended by a stray signal (say, one
// meant for a PID since reused) says so in its log. Go does not tell who
// sent it; `perf record -e signal:signal_generate -a` does (see
// docs/architecture.md, "Tests").
func stopOnSignal(log *zap.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			log.Info("stopping: signal received", zap.String("signal", sig.String()), zap.Int("pid", os.Getpid()))
			cancel(fmt.Errorf("stopped by signal %v", sig))
		case <-done:
		}
	}()
	return ctx, func() {
		close(done)
		signal.Stop(sigs)
		cancel(context.Canceled)
	}
}
