package devinfra

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres is returned when no PostgreSQL server binaries are found.
var ErrNoPostgres = errors.New("no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or under /usr/lib/postgresql/*/bin; install PostgreSQL or set database.url (MYELIN_DATABASE_URL) to an existing server")

// Postgres is a PostgreSQL cluster in a local directory, run with pg_ctl.
type Postgres struct {
	dir      string
	bin      string
	port     int
	cred     *syscall.Credential
	watchers []*watcher
}

// FindPostgresBin returns the directory holding initdb and pg_ctl.
func FindPostgresBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first.
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if fileExists(filepath.Join(d, "initdb")) && fileExists(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// FastSettings turn off what makes a cluster durable: fsync (WAL and data
// files reach the disk), synchronous_commit (a commit waits for its WAL to
// be flushed) and full_page_writes (the first change of a page after a
// checkpoint logs the whole page, so a torn page can be repaired). Without
// them an operating system crash or power loss can lose committed data or
// corrupt the cluster. For throwaway clusters only: the test kit's and CI's.
var FastSettings = []string{"fsync=off", "synchronous_commit=off", "full_page_writes=off"}

// StartPostgres initialises a cluster in dir if it has none, and starts it
// on 127.0.0.1 at port (0 picks a free port). PostgreSQL refuses to run as
// root, so when this process is root the cluster runs as the "postgres"
// user (or "nobody") and dir is handed to that user. settings are extra
// name=value server settings, passed as -c flags after the defaults, which
// are durable (PostgreSQL's own: fsync, synchronous_commit and
// full_page_writes on); FastSettings trade that for speed.
func StartPostgres(ctx context.Context, dir string, port int, settings ...string) (*Postgres, error) {
	bin, err := FindPostgresBin()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	pg := &Postgres{dir: dir, bin: bin, port: port}
	if os.Geteuid() == 0 {
		if pg.cred, err = unprivilegedUser(); err != nil {
			return nil, err
		}
	}
	// Parents are created traversable so that the unprivileged cluster
	// user can reach dir; dir itself stays private to that user.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	if err := pg.checkReachable(); err != nil {
		return nil, err
	}
	if err := pg.chown(); err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "pgdata")
	if !fileExists(filepath.Join(dataDir, "PG_VERSION")) {
		args := []string{"-D", dataDir, "-U", "myelin", "-A", "trust", "-E", "UTF8", "--locale=C"}
		if slices.Contains(settings, "fsync=off") {
			args = append(args, "--no-sync") // not worth syncing either
		}
		out, err := pg.run(ctx, "initdb", args...)
		if err != nil {
			return nil, fmt.Errorf("initdb: %w: %s", err, out)
		}
	}
	// A cluster left running by a killed process holds postmaster.pid; stop it.
	if postmasterRunning(dataDir) {
		_, _ = pg.run(ctx, "pg_ctl", "-D", dataDir, "-m", "immediate", "-w", "stop")
	}
	// Durable unless settings say otherwise (FastSettings): this cluster
	// is what `make run` keeps a user's data in.
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=300 -c shared_buffers=128MB", port, dir)
	for _, set := range settings {
		if strings.ContainsAny(set, " '\"\\") || !strings.Contains(set, "=") {
			return nil, fmt.Errorf("local PostgreSQL setting %q: want name=value without spaces or quotes", set)
		}
		opts += " -c " + set
	}
	out, err := pg.run(ctx, "pg_ctl", "-D", dataDir, "-l", filepath.Join(dir, "postgres.log"), "-o", opts, "-w", "-t", "60", "start")
	if err != nil {
		return nil, fmt.Errorf("pg_ctl start: %w: %s", err, out)
	}
	if err := pg.waitReady(ctx); err != nil {
		pg.Stop()
		return nil, err
	}
	return pg, nil
}

// URL returns a connection URL for database db. It names the cluster's
// Unix socket (in dir) when the socket path fits the kernel's limit:
// loopback TCP costs both ends a TCP stack traversal per message, which
// was about a fifth of the all-in-one server's syscall time (#5). The
// cluster still listens on 127.0.0.1 for other clients.
func (p *Postgres) URL(db string) string {
	if len(filepath.Join(p.dir, fmt.Sprintf(".s.PGSQL.%d", p.port))) < maxUnixSocketPath {
		return fmt.Sprintf("postgres://myelin@/%s?host=%s&port=%d&sslmode=disable", db, url.QueryEscape(p.dir), p.port)
	}
	return fmt.Sprintf("postgres://myelin@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

// maxUnixSocketPath is the longest socket path Linux takes (sun_path is
// 108 bytes, with the terminating NUL).
const maxUnixSocketPath = 107

// CreateDatabase creates db if it does not exist.
func (p *Postgres) CreateDatabase(ctx context.Context, db string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM pg_database WHERE datname=$1)`, db).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize())
	return err
}

// Stop shuts the cluster down (fast mode), then lets its watchers exit.
func (p *Postgres) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if postmasterRunning(filepath.Join(p.dir, "pgdata")) {
		_, _ = p.run(ctx, "pg_ctl", "-D", filepath.Join(p.dir, "pgdata"), "-m", "fast", "-w", "stop")
	}
	p.endWatchers()
}

// postmasterRunning reports whether dataDir's postmaster.pid names a
// running postgres process of this data directory. pg_ctl stop signals
// whatever process has the PID in that file; a postmaster killed outright
// (SIGKILL) leaves the file behind, and on a busy machine (pid_max 32,768,
// a process per connection) its PID soon belongs to something else, which
// pg_ctl would then send SIGINT or SIGQUIT: a myelin process, or a
// backend of another cluster (also named postgres; its query would be
// cancelled). So the process must be named postgres and work in dataDir
// (a postmaster's working directory is its data directory; when that
// cannot be read, the name alone decides). A stale file is removed
// instead: PostgreSQL itself ignores one whose PID is not a postmaster.
func postmasterRunning(dataDir string) bool {
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(raw), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err == nil && pid > 0 {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == "postgres" && worksIn(pid, dataDir) {
			return true
		}
	}
	_ = os.Remove(pidFile)
	return false
}

// worksIn reports whether process pid's working directory is dir (true
// when either cannot be resolved: not a reason to call it stale).
func worksIn(pid int, dir string) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return true
	}
	want, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return true
	}
	return cwd == want
}

// pgCtlStopIfRunning is the watchers' shell form of postmasterRunning:
// pg_ctl stop runs only when the PID in postmaster.pid is a postgres
// process working in the data directory ($1).
const pgCtlStopIfRunning = `pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null); ` +
	`[ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = postgres ] && ` +
	`{ cwd=$(readlink /proc/$pid/cwd 2>/dev/null); dir=$(cd "$1" 2>/dev/null && pwd -P); ` +
	`[ -z "$cwd" ] || [ -z "$dir" ] || [ "$cwd" = "$dir" ]; } && `

func (p *Postgres) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, p.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *Postgres) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, tool), args...)
	cmd.Dir = p.dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
		cmd.Env = append(os.Environ(), "HOME="+p.dir)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (p *Postgres) chown() error {
	if p.cred == nil {
		return nil
	}
	return filepath.Walk(p.dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(p.cred.Uid), int(p.cred.Gid))
	})
}

// checkReachable fails with a clear message when the cluster user cannot
// enter one of dir's parents: exec would otherwise fail with a bare EACCES.
func (p *Postgres) checkReachable() error {
	if p.cred == nil {
		return nil
	}
	for d := filepath.Dir(p.dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		mode := st.Mode().Perm()
		reachable := mode&0o001 != 0 ||
			(ok && sys.Uid == p.cred.Uid && mode&0o100 != 0) ||
			(ok && sys.Gid == p.cred.Gid && mode&0o010 != 0)
		if !reachable {
			return fmt.Errorf("PostgreSQL runs as uid %d (the process is root) and cannot enter %s; make it traversable (chmod o+x) or set database.url", p.cred.Uid, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func unprivilegedUser() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// reapers holds the write ends of the pipes the watchers read (StopWhenGone,
// StopOnExit): they must stay open (a collected os.File is closed) until
// the process exits or Stop ends them.
var (
	reapersMu sync.Mutex
	reapers   = map[*os.File]struct{}{}
)

// watcher is a running watcher process: closing w (or this process
// exiting) makes it act; done closes when it has exited.
type watcher struct {
	w    *os.File
	done chan struct{}
}

// StopWhenGone starts a watcher process that stops the cluster (immediate
// mode) and deletes its directory as soon as this process has exited, for
// whatever reason: a panic or a kill skips every deferred Stop. For
// throwaway clusters (the test kit's). A Stop before exiting is fine: the
// watcher then finds nothing to stop.
func (p *Postgres) StopWhenGone() error {
	// $0 pg_ctl, $1 data directory, $2 the cluster's directory.
	const script = `read _ignored; ` + pgCtlStopIfRunning + `"$0" -D "$1" -m immediate -w stop >/dev/null 2>&1; rm -rf "$2"`
	return p.watch(script, nil)
}

// StopOnExit starts a watcher process that stops the cluster (fast mode: a
// clean shutdown, nothing to recover at the next start) and keeps its data
// once this process has exited without stopping it: a SIGKILL, a panic, an
// out-of-memory kill. hold are files the watcher keeps open until the
// cluster is down: a lock on the data directory (flock) that this process
// holds thus stays held until then, so that a new process on the same
// directory cannot start a cluster that the watcher would then stop.
func (p *Postgres) StopOnExit(hold ...*os.File) error {
	// $0 pg_ctl, $1 data directory. The held files are the shell's
	// descriptors 3 and up, closed when it exits.
	const script = `read _ignored; ` + pgCtlStopIfRunning + `"$0" -D "$1" -m fast -w -t 120 stop >/dev/null 2>&1`
	return p.watch(script, hold)
}

// watch starts /bin/sh running script once this process has exited. The
// watcher waits on a pipe whose only write end this process holds, and
// the kernel closes it when the process goes. It runs in a process group
// of its own, so the terminal's Ctrl-C does not end it first, and with no
// output, so nothing waits for it.
func (p *Postgres) watch(script string, hold []*os.File) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c", script, filepath.Join(p.bin, "pg_ctl"), filepath.Join(p.dir, "pgdata"), p.dir)
	cmd.Stdin = r
	cmd.Dir = "/"
	cmd.ExtraFiles = hold
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.cred}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start the cluster's watcher: %w", err)
	}
	wt := &watcher{w: w, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(wt.done) }()
	reapersMu.Lock()
	reapers[w] = struct{}{}
	reapersMu.Unlock()
	p.watchers = append(p.watchers, wt)
	return nil
}

// endWatchers releases the watchers after a Stop: each finds the cluster
// stopped, does the rest of its work and exits (releasing what it held).
func (p *Postgres) endWatchers() {
	for _, wt := range p.watchers {
		reapersMu.Lock()
		delete(reapers, wt.w)
		reapersMu.Unlock()
		_ = wt.w.Close()
		select {
		case <-wt.done:
		case <-time.After(30 * time.Second):
		}
	}
	p.watchers = nil
}
