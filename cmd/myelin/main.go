// Command myelin runs any subset of Myelin's services in one process:
//
//	myelin -config myelin.yaml                 # every service (all-in-one)
//	myelin -config myelin.yaml -target room-server
//	myelin generate-config > myelin.yaml      # the default configuration
//	myelin register-user -url http://localhost:8008 -config myelin.yaml -user alice -password-file - [-admin]
//	myelin health -config myelin.yaml [-path /readyz|/healthz]   # exit status 0 when ready
//	myelin rotate-key [-config myelin.yaml] [-grpc key-server:9101]   # new signing key; the old one stays published
//
// It only loads configuration and calls myelin.Run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/myelin-chat/myelin/pkg/config"
	"github.com/myelin-chat/myelin/pkg/logging"
	"github.com/myelin-chat/myelin/pkg/myelin"
)

// defaultGCPercent replaces Go's GOGC default of 100 when GOGC is unset.
// Under load the collector was 12 % of the server's CPU (#5); at 200 it
// runs half as often for a heap that may grow to three times the live
// data instead of twice. Idle memory barely changes, since little is live.
// Deployments with a memory limit should also set GOMEMLIMIT.
const defaultGCPercent = 200

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "myelin:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "generate-config" {
		cfg := myelin.DefaultConfig()
		out, err := config.Marshal(&cfg)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(out)
		return err
	}
	if len(args) > 0 && args[0] == "register-user" {
		return registerUser(args[1:], os.Stdin, os.Stdout)
	}
	if len(args) > 0 && args[0] == "health" {
		return health(args[1:], os.Stdout)
	}
	if len(args) > 0 && args[0] == "rotate-key" {
		return rotateKey(args[1:], os.Stdout)
	}
	fs := flag.NewFlagSet("myelin", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the YAML configuration (optional; MYELIN_* environment variables override it)")
	target := fs.String("target", myelin.TargetAll, "comma-separated services to run: all or any of "+fmt.Sprint(myelin.TargetNames()))
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return myelin.Run(ctx, cfg, targets, log)
}
