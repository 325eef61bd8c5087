package loadgen

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// FlagSet binds the run's knobs to command-line flags (shared by
// cmd/myelin-load and cmd/myelin-bench). Call Options after fs.Parse.
type FlagSet struct {
	o            Options
	quick        bool
	scenarios    string
	sweep        string
	pids         string
	registration string
	changed      map[string]bool
	fs           *flag.FlagSet
}

// BindFlags registers the flags on fs; defaults are the full sizes.
func BindFlags(fs *flag.FlagSet) *FlagSet {
	f := &FlagSet{o: Defaults(), fs: fs}
	o := &f.o
	fs.BoolVar(&f.quick, "quick", false, "small sizes for checking the tool (explicit size flags still win)")
	fs.StringVar(&f.scenarios, "scenarios", "", "comma-separated scenarios to run (default all: "+strings.Join(scenarioNames(), ",")+")")
	fs.StringVar(&f.registration, "registration", "auto", "how to create users: auto, dummy (open registration, m.login.dummy) or shared-secret (/_synapse/admin/v1/register, secret in $LOADGEN_SHARED_SECRET)")
	fs.IntVar(&o.Serial.Messages, "serial-messages", o.Serial.Messages, "scenario serial: messages sent one after another")
	fs.IntVar(&o.Throughput.Senders, "senders", o.Throughput.Senders, "scenario throughput: N, the sender count that is profiled")
	fs.IntVar(&o.Throughput.Rooms, "rooms", o.Throughput.Rooms, "scenario throughput: M rooms")
	fs.StringVar(&f.sweep, "sweep", joinInts(o.Throughput.Sweep), "scenario throughput: sender counts measured")
	fs.DurationVar(&o.Throughput.StepDuration, "step", o.Throughput.StepDuration, "scenario throughput: duration of each sweep step")
	fs.DurationVar(&o.Throughput.Grace, "grace", o.Throughput.Grace, "scenario throughput: time the /sync observer gets to see the last sends")
	fs.IntVar(&o.BigSync.Rooms, "big-rooms", o.BigSync.Rooms, "scenario bigsync: rooms of the big account")
	fs.IntVar(&o.BigSync.Members, "big-members", o.BigSync.Members, "scenario bigsync: members per room (the big account included)")
	fs.IntVar(&o.BigSync.Messages, "big-messages", o.BigSync.Messages, "scenario bigsync: messages sent into each room after the joins")
	fs.IntVar(&o.BigSync.Repeats, "big-repeats", o.BigSync.Repeats, "scenario bigsync: repeats of each initial /sync")
	fs.IntVar(&o.BigSync.Incremental, "big-incremental", o.BigSync.Incremental, "scenario bigsync: incremental /syncs of each kind")
	fs.IntVar(&o.Federation.IngestPeers, "fed-ingest-peers", o.Federation.IngestPeers, "scenario fedingest: peer servers sending at once, each into a room of its own")
	fs.IntVar(&o.Federation.IngestPDUs, "fed-ingest-pdus", o.Federation.IngestPDUs, "scenario fedingest: PDUs sent in all")
	fs.IntVar(&o.Federation.IngestBatch, "fed-ingest-batch", o.Federation.IngestBatch, "scenario fedingest: PDUs per transaction (the spec's most is 50)")
	fs.IntVar(&o.Federation.JoinStateEvents, "fed-join-state", o.Federation.JoinStateEvents, "scenario fedjoin: state events of the remote room joined")
	bindAppserviceFlags(fs, &o.Appservice)
	fs.IntVar(&o.RoomSize.Members, "roomsize-members", o.RoomSize.Members, "scenario roomsize: local members of the large room (the sender included)")
	fs.IntVar(&o.RoomSize.Messages, "roomsize-messages", o.RoomSize.Messages, "scenario roomsize: messages sent into each room")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "parallel requests during set-up (registration, joins)")
	fs.StringVar(&f.pids, "pids", "", "server processes to sample: name=pid[+] comma-separated; + includes descendants (e.g. myelin=123,postgres=456+)")
	fs.StringVar(&o.DatabaseURL, "db-url", "", "PostgreSQL URL of the server's database, for pg_database_size")
	fs.StringVar(&o.PprofURL, "pprof-url", "", "Go pprof base URL of the server (http://127.0.0.1:6060); profiles are fetched during throughput")
	fs.StringVar(&o.ProfileDir, "profile-dir", ".", "where fetched profiles are written")
	fs.IntVar(&o.ProfileSeconds, "profile-seconds", o.ProfileSeconds, "CPU profile length (capped by -step)")
	return f
}

// Options returns the parsed options for base URL base.
func (f *FlagSet) Options(base string) (Options, error) {
	o := f.o
	if f.quick {
		set := map[string]bool{}
		f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		q := Quick()
		pick := func(name string, dst *int, v int) {
			if !set[name] {
				*dst = v
			}
		}
		pick("serial-messages", &o.Serial.Messages, q.Serial.Messages)
		pick("senders", &o.Throughput.Senders, q.Throughput.Senders)
		pick("rooms", &o.Throughput.Rooms, q.Throughput.Rooms)
		pick("big-rooms", &o.BigSync.Rooms, q.BigSync.Rooms)
		pick("big-members", &o.BigSync.Members, q.BigSync.Members)
		pick("big-messages", &o.BigSync.Messages, q.BigSync.Messages)
		pick("big-repeats", &o.BigSync.Repeats, q.BigSync.Repeats)
		pick("big-incremental", &o.BigSync.Incremental, q.BigSync.Incremental)
		pick("roomsize-members", &o.RoomSize.Members, q.RoomSize.Members)
		pick("roomsize-messages", &o.RoomSize.Messages, q.RoomSize.Messages)
		pick("fed-ingest-peers", &o.Federation.IngestPeers, q.Federation.IngestPeers)
		pick("fed-ingest-pdus", &o.Federation.IngestPDUs, q.Federation.IngestPDUs)
		pick("fed-ingest-batch", &o.Federation.IngestBatch, q.Federation.IngestBatch)
		pick("fed-join-state", &o.Federation.JoinStateEvents, q.Federation.JoinStateEvents)
		pick("profile-seconds", &o.ProfileSeconds, q.ProfileSeconds)
		quickAppservice(set, &o.Appservice)
		if !set["sweep"] {
			f.sweep = joinInts(q.Throughput.Sweep)
		}
		if !set["step"] {
			o.Throughput.StepDuration = q.Throughput.StepDuration
		}
		if !set["grace"] {
			o.Throughput.Grace = q.Throughput.Grace
		}
	}
	o.BaseURL = strings.TrimRight(base, "/")
	var err error
	if o.Throughput.Sweep, err = parseInts(f.sweep); err != nil {
		return o, fmt.Errorf("-sweep: %w", err)
	}
	if f.scenarios != "" {
		o.Scenarios = strings.Split(f.scenarios, ",")
		if _, err := lookup(o.Scenarios); err != nil {
			return o, err
		}
	}
	if o.Processes, err = ParseProcesses(f.pids); err != nil {
		return o, err
	}
	if err := o.Validate(); err != nil {
		return o, err
	}
	switch f.registration {
	case "dummy":
	case "shared-secret", "auto":
		secret := os.Getenv("LOADGEN_SHARED_SECRET")
		if f.registration == "shared-secret" && secret == "" {
			return o, fmt.Errorf("-registration shared-secret needs $LOADGEN_SHARED_SECRET")
		}
		// auto: shared-secret only when a secret is given and the target
		// answers the nonce endpoint; open registration otherwise.
		if secret != "" && (f.registration == "shared-secret" || SupportsSharedSecret(context.Background(), o.BaseURL)) {
			o.Registration.SharedSecret = secret
		}
	default:
		return o, fmt.Errorf("-registration: want auto, dummy or shared-secret")
	}
	return o, nil
}

// ParseProcesses parses "name=pid[+],...".
func ParseProcesses(s string) ([]Process, error) {
	var out []Process
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		name, pid, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("-pids: %q is not name=pid", part)
		}
		p := Process{Name: name, Tree: strings.HasSuffix(pid, "+")}
		n, err := strconv.Atoi(strings.TrimSuffix(pid, "+"))
		if err != nil {
			return nil, fmt.Errorf("-pids: %q: %w", part, err)
		}
		p.PID = n
		out = append(out, p)
	}
	return out, nil
}

// checkLoopback refuses a URL whose host is not on this machine: the load
// generator is a benchmark, not a tool for loading other people's servers.
// (Every HTTP connection is also checked when it is dialled: loopbackOnly.)
func checkLoopback(what, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%s %q: want http://host:port", what, rawURL)
	}
	return checkLoopbackHost(what, u.Hostname())
}

func checkLoopbackHost(what, host string) error {
	ips, err := net.LookupIP(host)
	if err != nil {
		return fmt.Errorf("%s host %q: %w", what, host, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("%s host %q is not a loopback address: the load generator only drives servers on this machine", what, host)
		}
	}
	return nil
}

// checkDatabaseURL refuses a PostgreSQL URL that names a host off this
// machine (a Unix socket directory is on it).
func checkDatabaseURL(raw string) error {
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	hosts := []string{cfg.Host}
	for _, fb := range cfg.Fallbacks {
		hosts = append(hosts, fb.Host)
	}
	for _, h := range hosts {
		if strings.HasPrefix(h, "/") {
			continue
		}
		if err := checkLoopbackHost("database URL", h); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks options built in code as Options does those from flags:
// loopback targets and positive sizes.
func (o Options) Validate() error {
	if err := checkLoopback("base URL", o.BaseURL); err != nil {
		return err
	}
	if o.PprofURL != "" {
		if err := checkLoopback("pprof URL", o.PprofURL); err != nil {
			return err
		}
	}
	if o.DatabaseURL != "" {
		if err := checkDatabaseURL(o.DatabaseURL); err != nil {
			return err
		}
	}
	if o.Serial.Messages < 1 || o.Throughput.Rooms < 1 || o.Throughput.Senders < 1 || len(o.Throughput.Sweep) == 0 ||
		o.BigSync.Rooms < 1 || o.BigSync.Members < 1 || o.BigSync.Messages < 0 || o.BigSync.Repeats < 1 || o.BigSync.Incremental < 1 ||
		o.Throughput.StepDuration < time.Second ||
		o.Federation.IngestPeers < 1 || o.Federation.IngestPDUs < o.Federation.IngestPeers || o.Federation.IngestBatch < 1 ||
		o.Federation.JoinStateEvents < 0 || o.RoomSize.Members < 2 || o.RoomSize.Messages < 1 {
		return fmt.Errorf("sizes must be positive and the throughput step at least 1s")
	}
	return o.Appservice.validate()
}

func scenarioNames() []string {
	var out []string
	for _, s := range registry {
		out = append(out, s.Name)
	}
	return out
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", p)
		}
		out = append(out, n)
	}
	return out, nil
}
