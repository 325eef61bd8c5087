package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/myelin-chat/myelin/pkg/devinfra"
)

// server is bin/myelin in make run's all-in-one shape: no database or NATS
// URL, so it starts its own PostgreSQL cluster and embedded JetStream under
// a fresh data directory.
type server struct {
	dir       string
	cmd       *exec.Cmd
	done      chan error
	url       string
	pprofURL  string
	pgPID     int
	pgPort    int
	logPath   string
	configTxt string
}

// startServer writes the default configuration (myelin generate-config)
// into dir and starts the binary on free loopback ports. Rate limits are
// off: they would measure the limiter, not the server. With db set, the
// server uses that database on a cluster of the caller's (make
// bench-compare) instead of starting its own.
func startServer(ctx context.Context, bin, dir, pgSettings string, fed []string, db *clusterDB) (*server, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// PostgreSQL refuses root and runs as another user: it must reach dir.
	_ = os.Chmod(dir, 0o755)
	cfg, err := exec.CommandContext(ctx, bin, "generate-config").Output()
	if err != nil {
		return nil, fmt.Errorf("%s generate-config: %w", bin, err)
	}
	cfgPath := filepath.Join(dir, "myelin.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	pprofAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, url: "http://" + httpAddr, pprofURL: "http://" + pprofAddr,
		logPath: filepath.Join(dir, "server.log"), done: make(chan error, 1)}
	env := []string{
		"MYELIN_DATA_DIR=" + filepath.Join(dir, "data"),
		"MYELIN_HTTP_LISTEN=" + httpAddr,
		"MYELIN_DEBUG_PPROF_LISTEN=" + pprofAddr,
		"MYELIN_CLIENT_API_RATE_LIMIT_ENABLED=false",
		"MYELIN_MEDIA_RATE_LIMIT_ENABLED=false",
		"MYELIN_CLIENT_API_PUBLIC_BASE_URL=" + s.url,
		"MYELIN_LOGGING_LEVEL=warn",
	}
	env = append(env, fed...)
	if db != nil {
		env = append(env, "MYELIN_DATABASE_URL="+db.url)
	}
	// With pg_stat_statements loaded, the results name the statements
	// that took the database's time during the profiled throughput step.
	// PostgreSQL's durability settings are the server's defaults (durable)
	// unless pgSettings says otherwise.
	var settings []string
	if pgStatStatementsInstalled() {
		settings = append(settings, "shared_preload_libraries=pg_stat_statements")
	}
	if pgSettings != "" {
		settings = append(settings, pgSettings)
	}
	if len(settings) > 0 {
		env = append(env, "MYELIN_DATABASE_LOCAL_SETTINGS="+strings.Join(settings, ","))
	}
	s.configTxt = strings.Join(env, " ")
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "-config", cfgPath)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { s.done <- s.cmd.Wait(); logf.Close() }()
	if err := s.waitReady(ctx); err != nil {
		s.stop()
		return nil, err
	}
	pgDir := filepath.Join(dir, "data", "postgres")
	if db != nil {
		pgDir = db.dir
	}
	if err := s.readPostmaster(pgDir); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// clusterDB is a database on a PostgreSQL cluster the bench started
// itself (devinfra.StartPostgres in dir).
type clusterDB struct {
	url string
	dir string
}

func (s *server) waitReady(ctx context.Context) error {
	name := filepath.Base(s.cmd.Path)
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("%s exited during start-up (%v); log: %s", name, err, s.logPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		res, err := http.Get(s.url + "/_matrix/client/versions")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 120s; log: %s", name, s.logPath)
}

// readPostmaster finds the cluster's postmaster PID and port in its
// postmaster.pid (line 1 and line 4), to watch it and size its database.
func (s *server) readPostmaster(pgDir string) error {
	raw, err := os.ReadFile(filepath.Join(pgDir, "pgdata", "postmaster.pid"))
	if err != nil {
		return fmt.Errorf("local PostgreSQL: %w", err)
	}
	lines := strings.Split(string(raw), "\n")
	if len(lines) < 4 {
		return fmt.Errorf("short postmaster.pid")
	}
	if s.pgPID, err = strconv.Atoi(strings.TrimSpace(lines[0])); err != nil {
		return err
	}
	s.pgPort, err = strconv.Atoi(strings.TrimSpace(lines[3]))
	return err
}

// databaseURL is the URL myelin itself uses for its local cluster.
func (s *server) databaseURL() string {
	return fmt.Sprintf("postgres://myelin@127.0.0.1:%d/myelin?sslmode=disable", s.pgPort)
}

// stop sends SIGTERM (myelin stops its PostgreSQL cluster itself) and
// kills it after 60s.
func (s *server) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	name := filepath.Base(s.cmd.Path)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not stop within 60s", name)
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// pgStatStatementsInstalled reports whether the PostgreSQL the server will
// start ships the pg_stat_statements module (a contrib module, usually
// installed with the server).
func pgStatStatementsInstalled() bool {
	bin, err := devinfra.FindPostgresBin()
	if err != nil {
		return false
	}
	// bin may be a directory of symbolic links (/usr/local/bin).
	initdb, err := filepath.EvalSymlinks(filepath.Join(bin, "initdb"))
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(filepath.Dir(filepath.Dir(initdb)), "lib", "pg_stat_statements.so"))
	return err == nil
}
