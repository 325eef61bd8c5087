// Command myelin-bench is `make bench`: it starts bin/myelin in make run's
// all-in-one shape on a fresh data directory, runs the load generator
// (pkg/loadgen) against it with the server's PIDs, database and pprof
// listener, writes bench/results/<date>-<commit>.json with the profiles,
// and regenerates docs/benchmarks.md and its plots.
//
//	myelin-bench run [-quick] [load generator flags]   # what make bench runs
//	myelin-bench compare -dendrite BIN [-quick] [...]  # make bench-compare (compare.go)
//	myelin-bench report -in bench/results/X.json       # only the report
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/myelin-chat/myelin/bench/report"
	"github.com/myelin-chat/myelin/pkg/loadgen"
)

func main() {
	err := errors.New("usage: myelin-bench run|compare|report [flags]")
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "run":
			err = runCmd(os.Args[2:])
		case "compare":
			err = compareCmd(os.Args[2:])
		case "report":
			err = reportCmd(os.Args[2:])
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "myelin-bench:", err)
		os.Exit(1)
	}
}

// maxCommittedProfiles caps the profiles copied next to the results JSON;
// bigger ones stay under the (ignored) tmp directory.
const maxCommittedProfiles = 400 << 10

func runCmd(args []string) error {
	fs := flag.NewFlagSet("myelin-bench run", flag.ContinueOnError)
	bin := fs.String("bin", "bin/myelin", "the myelin binary to start")
	resultsDir := fs.String("results", "bench/results", "where the results JSON (and small profiles) go")
	tmpDir := fs.String("tmp", "bench/tmp", "scratch space: data directory, server log, large profiles")
	docs := fs.String("docs", "docs/benchmarks.md", "report to regenerate (empty: none)")
	note := fs.String("note", "", "a note on the machine or run, kept in the JSON and the report")
	pgSettings := fs.String("pg-settings", "", "extra settings of the server's local PostgreSQL (database.local_settings, name=value comma separated), e.g. synchronous_commit=off to compare with the durable default")
	lf := loadgen.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	commit := gitCommit()
	date := time.Now().UTC().Format("2006-01-02")
	runDir, err := filepath.Abs(filepath.Join(*tmpDir, fmt.Sprintf("run-%s", time.Now().UTC().Format("20060102-150405"))))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "starting %s (all-in-one, fresh data dir %s)\n", *bin, runDir)
	// The federation scenarios' peers need their listeners in the server's
	// server-name map before it starts; the sizes come from the flags.
	opts, err := lf.Options("http://127.0.0.1:1") // sizes only
	if err != nil {
		return err
	}
	fedEnv, fedTarget, closePeers, err := federationSetup(runDir, opts.Federation.PeersNeeded())
	if err != nil {
		return err
	}
	defer closePeers()
	benchAS, asToken, err := benchAppservice(runDir) // appservice.go
	if err != nil {
		return err
	}
	asEnv, asTarget, closeAS, err := appserviceSetup(runDir, benchAS)
	if err != nil {
		return err
	}
	defer closeAS()
	srv, err := startServer(ctx, *bin, runDir, *pgSettings, append(fedEnv, asEnv...), nil)
	if err != nil {
		return err
	}
	if opts, err = lf.Options(srv.url); err != nil {
		_ = srv.stop()
		return err
	}
	opts.Federation.Target = fedTarget
	asTarget.AdminURL = srv.url + "/_myelin/admin/appservices"
	opts.Appservice.Target = asTarget
	opts.Registration.AppserviceToken = asToken
	opts.Processes = []loadgen.Process{
		{Name: "myelin", PID: srv.cmd.Process.Pid},
		{Name: "postgres", PID: srv.pgPID, Tree: true},
	}
	opts.DatabaseURL = srv.databaseURL()
	durability, err := loadgen.PostgresSettings(ctx, opts.DatabaseURL, "fsync", "synchronous_commit", "full_page_writes")
	if err != nil {
		_ = srv.stop()
		return err
	}
	opts.PprofURL = srv.pprofURL
	opts.ProfileDir = runDir
	opts.Progress = os.Stderr
	res, runErr := loadgen.Run(ctx, opts)
	stopErr := srv.stop()
	if res == nil {
		return errors.Join(runErr, stopErr)
	}
	res.Meta = map[string]string{
		"commit": commit, "shape": "all-in-one (make run), fresh data dir, rate limits off",
		"server_env": srv.configTxt, "note": *note, "postgres_durability": durability,
	}
	if runErr != nil {
		res.Notes = append(res.Notes, "run failed: "+runErr.Error())
	}

	name := date + "-" + commit
	if err := os.MkdirAll(*resultsDir, 0o755); err != nil {
		return err
	}
	keepProfiles(res, *resultsDir, name)
	out := filepath.Join(*resultsDir, name+".json")
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", out)
	if runErr == nil && *docs != "" {
		if err := report.Write(res, out, *docs, report.AnalysisFile); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *docs)
	}
	if runErr == nil && stopErr == nil {
		_ = os.RemoveAll(filepath.Join(runDir, "data")) // the database is large; keep log and profiles
	}
	return errors.Join(runErr, stopErr)
}

// keepProfiles copies the fetched profiles next to the results JSON when
// they are small, and rewrites their paths (relative, for the report).
func keepProfiles(res *loadgen.Result, dir, name string) {
	var total int64
	for _, p := range res.Profiles {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	for kind, p := range res.Profiles {
		dst := p
		if total <= maxCommittedProfiles {
			dst = filepath.Join(dir, name+"."+kind+".pprof")
			if err := copyFile(p, dst); err != nil {
				dst = p
			}
		}
		if rel, err := filepath.Rel(".", dst); err == nil {
			dst = rel
		}
		res.Profiles[kind] = dst
	}
}

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("myelin-bench report", flag.ContinueOnError)
	in := fs.String("in", "", "results JSON (default: the newest under bench/results)")
	docs := fs.String("docs", "docs/benchmarks.md", "report to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" {
		matches, _ := filepath.Glob("bench/results/*.json")
		if len(matches) == 0 {
			return errors.New("no results under bench/results; run make bench")
		}
		*in = newest(matches)
	}
	raw, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var res loadgen.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	return report.Write(&res, *in, *docs, report.AnalysisFile)
}

func newest(paths []string) string {
	best, bestT := "", time.Time{}
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && st.ModTime().After(bestT) {
			best, bestT = p, st.ModTime()
		}
	}
	return best
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short=10", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if err := exec.Command("git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results", ":!docs/benchmarks*").Run(); err != nil {
		c += "-dirty"
	}
	return c
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
