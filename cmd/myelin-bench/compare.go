package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myelin-chat/myelin/bench/report"
	"github.com/myelin-chat/myelin/pkg/devinfra"
	"github.com/myelin-chat/myelin/pkg/loadgen"
)

// dendriteConfig is Dendrite's configuration for the comparison, the only
// part of Dendrite in this repository besides its pinned version.
//
//go:embed dendrite.yaml.tmpl
var dendriteConfig string

// dendriteMaxConns is Dendrite's pool: its own default size (90), all of
// it kept open (max_idle_conns is the same), where Dendrite's default
// keeps only 2 idle connections and reconnects under load.
const dendriteMaxConns = 90

// compareCmd is `make bench-compare`: one PostgreSQL cluster with
// PostgreSQL's durable defaults (as make run's local cluster), Myelin on
// a fresh database of it, then Dendrite on another, each driven by the
// load generator's portable scenarios; the comparison is written under
// <results>/compare/ and docs/benchmarks.md regenerated with its section.
func compareCmd(args []string) error {
	fs := flag.NewFlagSet("myelin-bench compare", flag.ContinueOnError)
	bin := fs.String("bin", "bin/myelin", "the myelin binary to start")
	dendriteBin := fs.String("dendrite", "", "the Dendrite binary (make dendrite builds it; its generate-keys must be beside it)")
	dendriteVersion := fs.String("dendrite-version", "", "Dendrite's version, for the report")
	resultsDir := fs.String("results", "bench/results", "results directory: the comparison goes to its compare/ directory; the report's main results are its newest")
	tmpDir := fs.String("tmp", "bench/tmp", "scratch space: the cluster, the servers' data and logs")
	docs := fs.String("docs", "docs/benchmarks.md", "report to regenerate (empty: none)")
	note := fs.String("note", "", "a note on the machine or run, kept in the JSON and the report")
	pgSettings := fs.String("pg-settings", "", "extra settings of the shared PostgreSQL cluster (name=value comma separated); default durable")
	lf := loadgen.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dendriteBin == "" {
		return errors.New("-dendrite is required (make bench-compare passes bin/dendrite-<version>/dendrite)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	started := time.Now().UTC()
	runDir, err := filepath.Abs(filepath.Join(*tmpDir, "compare-"+started.Format("20060102-150405")))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(runDir, 0o755) // the cluster's user must reach it
	var settings []string
	if pgStatStatementsInstalled() {
		settings = append(settings, "shared_preload_libraries=pg_stat_statements")
	}
	for _, s := range strings.Split(*pgSettings, ",") {
		if s = strings.TrimSpace(s); s != "" {
			settings = append(settings, s)
		}
	}
	pgDir := filepath.Join(runDir, "postgres")
	fmt.Fprintf(os.Stderr, "starting PostgreSQL in %s\n", pgDir)
	pg, err := devinfra.StartPostgres(ctx, pgDir, 0, settings...)
	if err != nil {
		return err
	}
	defer pg.Stop()
	if err := pg.StopOnExit(); err != nil {
		return err
	}
	durability, err := loadgen.PostgresSettings(ctx, pg.URL("postgres"), "fsync", "synchronous_commit", "full_page_writes")
	if err != nil {
		return err
	}
	cmp := &report.Comparison{Started: started, Meta: map[string]string{
		"commit": gitCommit(), "dendrite_version": *dendriteVersion, "postgres_durability": durability,
		"postgres_settings": strings.Join(settings, ","), "note": *note,
	}}
	targets := []struct {
		name  string
		start func(db *clusterDB) (*server, string, error)
	}{
		{"myelin", func(db *clusterDB) (*server, string, error) {
			srv, err := startServer(ctx, *bin, filepath.Join(runDir, "myelin"), "", nil, db)
			if err != nil {
				return nil, "", err
			}
			return srv, srv.configTxt, nil
		}},
		{"dendrite", func(db *clusterDB) (*server, string, error) {
			return startDendrite(ctx, *dendriteBin, filepath.Join(runDir, "dendrite"), db)
		}},
	}
	for _, t := range targets {
		if err := pg.CreateDatabase(ctx, t.name); err != nil {
			return err
		}
		// Each run starts from a checkpoint: the previous run's dirty
		// pages are not written during this one.
		if err := checkpoint(ctx, pg.URL("postgres")); err != nil {
			return err
		}
		db := &clusterDB{url: pg.URL(t.name), dir: pgDir}
		fmt.Fprintf(os.Stderr, "== %s\n", t.name)
		before := loadAverage()
		srv, config, err := t.start(db)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		res, runErr := runAgainst(ctx, lf, srv, t.name, db.url)
		stopErr := srv.stop()
		cmp.Meta[t.name+"_loadavg"] = before + " → " + loadAverage()
		if err := errors.Join(runErr, stopErr); err != nil {
			return fmt.Errorf("%s: %w (log: %s)", t.name, err, srv.logPath)
		}
		cmp.Runs = append(cmp.Runs, report.ComparedRun{Server: t.name, Config: config, Result: res})
	}
	return writeComparisonResults(cmp, *resultsDir, *docs)
}

// runAgainst runs the portable scenarios (or those -scenarios names)
// against srv, watching its process (as name) and the cluster's.
func runAgainst(ctx context.Context, lf *loadgen.FlagSet, srv *server, name, dbURL string) (*loadgen.Result, error) {
	opts, err := lf.Options(srv.url)
	if err != nil {
		return nil, err
	}
	if len(opts.Scenarios) == 0 {
		opts.Scenarios = loadgen.PortableScenarios()
	}
	opts.Processes = []loadgen.Process{
		{Name: name, PID: srv.cmd.Process.Pid},
		{Name: "postgres", PID: srv.pgPID, Tree: true},
	}
	opts.DatabaseURL = dbURL
	opts.Progress = os.Stderr
	return loadgen.Run(ctx, opts)
}

// writeComparisonResults writes the comparison JSON and regenerates the
// report from the newest main results in dir (or, when dir has none, from
// the comparison's own Myelin run, written there as main results).
func writeComparisonResults(cmp *report.Comparison, dir, docs string) error {
	name := cmp.Started.Format("2006-01-02-150405") + "-" + cmp.Meta["commit"]
	if err := os.MkdirAll(filepath.Join(dir, report.ComparisonDir), 0o755); err != nil {
		return err
	}
	out := filepath.Join(dir, report.ComparisonDir, name+".json")
	if err := writeJSON(out, cmp); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", out)
	if docs == "" {
		return nil
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	mainPath := newest(matches)
	var main loadgen.Result
	if mainPath == "" {
		mainPath = filepath.Join(dir, name+".json")
		res := cmp.Runs[0].Result
		res.Meta = map[string]string{"commit": cmp.Meta["commit"], "shape": "all-in-one, database on the comparison's cluster",
			"postgres_durability": cmp.Meta["postgres_durability"], "note": "the Myelin run of make bench-compare"}
		if err := writeJSON(mainPath, res); err != nil {
			return err
		}
		main = *res
	} else {
		raw, err := os.ReadFile(mainPath)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &main); err != nil {
			return fmt.Errorf("%s: %w", mainPath, err)
		}
	}
	if err := report.Write(&main, mainPath, docs, report.AnalysisFile); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s (main results %s)\n", docs, mainPath)
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// startDendrite runs Dendrite in dir on db with dendrite.yaml.tmpl's
// configuration: its signing key from generate-keys (beside bin), its
// client API on a free loopback port, open registration (as Myelin's
// default, m.login.dummy).
func startDendrite(ctx context.Context, bin, dir string, db *clusterDB) (*server, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	bin, err := filepath.Abs(bin) // it runs in dir
	if err != nil {
		return nil, "", err
	}
	keys := exec.CommandContext(ctx, filepath.Join(filepath.Dir(bin), "generate-keys"), "--private-key", filepath.Join(dir, "matrix_key.pem"))
	if out, err := keys.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("generate-keys: %w: %s", err, out)
	}
	dsn, err := libpqDSN(db.url)
	if err != nil {
		return nil, "", err
	}
	cfg, err := renderDendriteConfig(dir, dsn)
	if err != nil {
		return nil, "", err
	}
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	s := &server{dir: dir, url: "http://" + httpAddr, logPath: filepath.Join(dir, "dendrite.log"), done: make(chan error, 1)}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, "", err
	}
	s.cmd = exec.Command(bin, "--config", cfgPath, "--http-bind-address", httpAddr, "--really-enable-open-registration")
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, "", err
	}
	go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	if err := s.waitReady(ctx); err != nil {
		s.stop()
		return nil, "", err
	}
	if err := s.readPostmaster(db.dir); err != nil {
		s.stop()
		return nil, "", err
	}
	return s, cfg, nil
}

// renderDendriteConfig fills dendrite.yaml.tmpl for a server in dir on
// the database dsn (lib/pq's key=value form).
func renderDendriteConfig(dir, dsn string) (string, error) {
	var cfg bytes.Buffer
	tmpl, err := template.New("dendrite.yaml").Option("missingkey=error").Parse(dendriteConfig)
	if err != nil {
		return "", err
	}
	err = tmpl.Execute(&cfg, map[string]any{"ServerName": "localhost", "Dir": dir, "DatabaseURL": dsn, "MaxConns": dendriteMaxConns})
	return cfg.String(), err
}

// libpqDSN turns a pgx URL (devinfra's, possibly naming a Unix socket
// directory) into the key=value form Dendrite's driver (lib/pq) reads, so
// that Dendrite reaches the cluster the way Myelin does.
func libpqDSN(url string) (string, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, cfg.Database), nil
}

func checkpoint(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CHECKPOINT")
	return err
}

// loadAverage is the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
