// Command myelin-load drives any Matrix homeserver on this machine through
// the client-server API and writes what it measured as JSON:
//
//	myelin-load -url http://127.0.0.1:8008 -quick -out result.json
//	myelin-load -url http://127.0.0.1:8008 -pids myelin=1234,postgres=1300+ \
//	    -db-url postgres://... -pprof-url http://127.0.0.1:6060
//
// Users are created by open registration (m.login.dummy), or through
// Synapse-compatible shared-secret registration when $LOADGEN_SHARED_SECRET
// is set and the server offers it. `myelin-load -h` lists the scenarios and
// their size flags; the load generator itself is pkg/loadgen.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/myelin-chat/myelin/pkg/loadgen"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "myelin-load:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("myelin-load", flag.ContinueOnError)
	base := fs.String("url", "http://127.0.0.1:8008", "homeserver base URL (loopback only)")
	out := fs.String("out", "", "write the JSON result here (default stdout)")
	quiet := fs.Bool("quiet", false, "no live progress on stderr")
	lf := loadgen.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	opts, err := lf.Options(*base)
	if err != nil {
		return err
	}
	if !*quiet {
		opts.Progress = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, runErr := loadgen.Run(ctx, opts)
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.Write(append(data, '\n'))
	} else {
		err = os.WriteFile(*out, append(data, '\n'), 0o644)
	}
	return errors.Join(runErr, err)
}
