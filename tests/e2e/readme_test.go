package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// readmeProcess is one `VAR=value ... myelin -target X &` line of the
// README's split-shape commands.
type readmeProcess struct {
	line   string
	env    map[string]string
	args   []string
	target string
}

// readmeSplitShape returns the shared variables (the export line) and the
// processes of the README's "Running the split shape" section.
func readmeSplitShape(t *testing.T) (shared map[string]string, procs []readmeProcess) {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "## Running the split shape")
	if start < 0 {
		t.Fatal(`README.md has no "## Running the split shape" section`)
	}
	section := text[start+3:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	shared = map[string]string{}
	for _, line := range strings.Split(section, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "export "); ok {
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				shared[k] = v
			}
			continue
		}
		if !strings.HasPrefix(line, "MYELIN_") || !strings.Contains(line, " myelin ") {
			continue
		}
		p := readmeProcess{line: line, env: map[string]string{}}
		fields := strings.Fields(strings.TrimSuffix(line, "&"))
		i := 0
		for ; i < len(fields) && fields[i] != "myelin"; i++ {
			k, v, ok := strings.Cut(fields[i], "=")
			if !ok {
				t.Fatalf("README line %q: %q is neither VAR=value nor myelin", line, fields[i])
			}
			p.env[k] = v
		}
		if i == len(fields) {
			t.Fatalf("README line %q runs no myelin", line)
		}
		p.args = fields[i+1:]
		if j := slices.Index(p.args, "-target"); j >= 0 && j+1 < len(p.args) {
			p.target = p.args[j+1]
		}
		procs = append(procs, p)
	}
	if len(procs) == 0 {
		t.Fatal("README's split-shape section has no `VAR=... myelin -target ...` lines")
	}
	return shared, procs
}

// The README's split-shape commands work as written: the export line
// names the database and NATS, no two processes share a listen address
// (room-server and presence used to both take the default 8008), every
// peer address names the process that listens there, and the processes
// started from these lines (every 127.0.0.1 address moved to a free port,
// the same port for the same address, absolute paths moved under a
// temporary directory; the test kit's PostgreSQL and NATS) serve a client
// through the edge.
func TestReadmeSplitShape(t *testing.T) {
	shared, procs := readmeSplitShape(t)
	for _, k := range []string{"MYELIN_DATABASE_URL", "MYELIN_NATS_URL"} {
		if shared[k] == "" {
			t.Errorf("the README's export line does not set %s", k)
		}
	}
	defaults := map[string]string{"MYELIN_HTTP_LISTEN": "127.0.0.1:8008", "MYELIN_GRPC_LISTEN": "127.0.0.1:0"}
	listen := func(p readmeProcess, k string) string {
		if v, ok := p.env[k]; ok {
			return v
		}
		return defaults[k]
	}
	owner := map[string]string{} // address -> "target http|grpc"
	byTarget := map[string]readmeProcess{}
	for _, p := range procs {
		byTarget[p.target] = p
		for _, k := range []string{"MYELIN_HTTP_LISTEN", "MYELIN_GRPC_LISTEN"} {
			addr := listen(p, k)
			if strings.HasSuffix(addr, ":0") {
				continue
			}
			if prev, ok := owner[addr]; ok {
				t.Errorf("%s and %s (%s) both listen on %s", prev, p.target, k, addr)
			}
			owner[addr] = p.target + " (" + k + ")"
		}
	}
	peer := regexp.MustCompile(`^MYELIN_SERVICES_([A-Z_]+)_(GRPC|HTTP)$`)
	for _, p := range procs {
		for k, v := range p.env {
			m := peer.FindStringSubmatch(k)
			if m == nil {
				continue
			}
			target := strings.ReplaceAll(strings.ToLower(m[1]), "_", "-")
			srv, ok := byTarget[target]
			if !ok {
				t.Errorf("%s: %s names %s, which no README line runs", p.target, k, target)
				continue
			}
			if got := listen(srv, "MYELIN_"+m[2]+"_LISTEN"); got != v {
				t.Errorf("%s: %s=%s, but %s listens on %s", p.target, k, v, target, got)
			}
		}
	}
	edge, ok := byTarget["edge"]
	if !ok {
		t.Fatal("the README runs no edge")
	}
	if t.Failed() {
		return
	}

	// Run them. The test kit's NATS takes a free port first, so that it
	// cannot take one of the ports picked below.
	db, nats := testkit.Postgres(t), testkit.NATS(t)
	dir := t.TempDir()
	moved := map[string]string{}
	move := func(v string) string {
		if filepath.IsAbs(v) { // a storage path: under the test's directory
			return filepath.Join(dir, v)
		}
		if !regexp.MustCompile(`^127\.0\.0\.1:[1-9][0-9]*$`).MatchString(v) {
			return v
		}
		if _, ok := moved[v]; !ok {
			moved[v] = freeAddr(t)
		}
		return moved[v]
	}
	s := &server{url: "http://" + move(listen(edge, "MYELIN_HTTP_LISTEN"))}
	for _, p := range procs {
		env := []string{"MYELIN_DATABASE_URL=" + db, "MYELIN_NATS_URL=" + nats, "MYELIN_DATA_DIR=" + dir}
		for k, v := range p.env {
			env = append(env, k+"="+move(v))
		}
		for k, v := range defaults {
			if _, ok := p.env[k]; !ok {
				env = append(env, k+"="+move(v))
			}
		}
		s.procs = append(s.procs, &proc{name: p.target, args: p.args, env: env, log: filepath.Join(dir, p.target+".log")})
	}
	// Registered first: a process that did start is stopped even when
	// another fails to.
	t.Cleanup(func() { s.shutdown(t); s.dumpLogs(t) })
	s.start(t)
	u := register(t, s.url, "readme")
	room, err := u.cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.cli.SendText(context.Background(), room.RoomID, "hello from the README's split shape"); err != nil {
		t.Fatal(err)
	}
}
