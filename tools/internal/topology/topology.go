// Package topology checks that the Myelin processes of a deployment (a
// compose file, rendered Kubernetes manifests) are wired to each other: each
// runs known targets, listens on reachable addresses, knows its database and
// NATS, and every services.<name>.grpc/http address it needs resolves to a
// process that runs that service and listens on that port.
//
// It knows the root configuration keys of pkg/myelin/config.go (listed
// below; keep them in step). Keys under a service's own section
// (key_server.*, room_server.*, client_api.*, presence.*, media.*,
// federation_receiver.*, federation_sender.*, appservice.*) are accepted
// as they are.
package topology

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Targets of cmd/myelin (pkg/myelin/modules.go).
const (
	TargetAll              = "all"
	TargetKeyServer        = "key-server"
	TargetRoomServer       = "room-server"
	TargetClientAPI        = "client-api"
	TargetPresence         = "presence"
	TargetMedia            = "media"
	TargetFederationSender = "federation-sender"
	TargetEdge             = "edge"

	TargetFederationReceiver = "federation-receiver"
	TargetAppservice         = "appservice"
)

var services = []string{TargetKeyServer, TargetRoomServer, TargetPresence, TargetClientAPI, TargetMedia, TargetFederationReceiver, TargetFederationSender, TargetAppservice}

// rootKeys are the settings of pkg/myelin.Config outside the per-service
// sections, as YAML paths.
var rootKeys = []string{
	"server_name", "data_dir",
	"logging.level", "logging.format",
	"http.listen", "grpc.listen", "metrics.listen",
	"grpc.tls.cert_file", "grpc.tls.key_file", "grpc.tls.ca_file",
	"database.url",
	"nats.url", "nats.replicas",
	"services.key_server.grpc", "services.key_server.http",
	"services.room_server.grpc", "services.room_server.http",
	"services.client_api.grpc", "services.client_api.http",
	"services.presence.grpc", "services.presence.http",
	"services.media.grpc", "services.media.http",
	"services.federation_receiver.grpc", "services.federation_receiver.http",
	"services.federation_sender.grpc", "services.federation_sender.http",
	"services.appservice.grpc", "services.appservice.http",
	"federation.enabled", "federation.listen", "federation.tls_cert_file", "federation.tls_key_file",
	"federation.trusted_ca_files", "federation.insecure_skip_tls_verify", "federation.server_name_map",
	"federation.allowed_private_networks",
}

// serviceSections hold each service's own Config.
var serviceSections = []string{"key_server", "room_server", "client_api", "presence", "media", "federation_receiver", "federation_sender", "appservice"}

// Secret stands for a value the deployment takes from a secret store: set,
// but not known statically.
const Secret = "<secret>"

// Settings is a process's effective configuration as YAML path -> value.
type Settings map[string]string

// EnvName is the MYELIN_* variable of a YAML path.
func EnvName(key string) string {
	return "MYELIN_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))
}

// KeyOfEnv maps a MYELIN_* variable back to its YAML path.
func KeyOfEnv(name string) (string, error) {
	for _, k := range rootKeys {
		if EnvName(k) == name {
			return k, nil
		}
	}
	for _, s := range serviceSections {
		p := EnvName(s) + "_"
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return s + "." + strings.ToLower(strings.TrimPrefix(name, p)), nil
		}
	}
	return "", fmt.Errorf("%s is not a Myelin setting", name)
}

// CheckKey reports whether a YAML path is a Myelin setting.
func CheckKey(key string) error {
	if slices.Contains(rootKeys, key) {
		return nil
	}
	for _, s := range serviceSections {
		if strings.HasPrefix(key, s+".") {
			return nil
		}
	}
	return fmt.Errorf("%q is not a Myelin setting (the loader rejects unknown keys)", key)
}

// Flatten turns a decoded YAML document into YAML paths.
func Flatten(prefix string, v any, out Settings) {
	switch t := v.(type) {
	case map[string]any:
		for k, sub := range t {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			Flatten(p, sub, out)
		}
	case nil:
		out[prefix] = ""
	default:
		out[prefix] = fmt.Sprint(t)
	}
}

// Process is one Myelin process of the deployment.
type Process struct {
	Name     string
	Args     []string
	Settings Settings
}

// Endpoint is how other processes reach a port of a process: Host:Port
// arrives at Process's port TargetPort. OneAddress says that Host resolves
// to a single virtual address in front of every replica (a Kubernetes
// ClusterIP Service) rather than to each replica's own (a headless
// Service, a Compose service name).
type Endpoint struct {
	Host       string
	Port       int
	Process    string
	TargetPort int
	OneAddress bool
}

// Targets parses -target from the process arguments (default all).
func Targets(args []string) ([]string, error) {
	raw := TargetAll
	for i, a := range args {
		switch {
		case a == "-target" || a == "--target":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s has no value", a)
			}
			raw = args[i+1]
		case strings.HasPrefix(a, "-target="), strings.HasPrefix(a, "--target="):
			raw = a[strings.Index(a, "=")+1:]
		}
	}
	set := map[string]bool{}
	for _, t := range strings.Split(raw, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
		case t == TargetAll:
			for _, s := range services {
				set[s] = true
			}
		case t == TargetEdge || slices.Contains(services, t):
			set[t] = true
		default:
			return nil, fmt.Errorf("unknown target %q", t)
		}
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("no target in %q", raw)
	}
	var out []string
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

// Check returns every wiring problem found.
func Check(procs []Process, endpoints []Endpoint) []error {
	var errs []error
	targets := map[string][]string{}
	byName := map[string]Process{}
	for _, p := range procs {
		byName[p.Name] = p
		ts, err := Targets(p.Args)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.Name, err))
			continue
		}
		targets[p.Name] = ts
	}
	for _, p := range procs {
		ts, ok := targets[p.Name]
		if !ok {
			continue
		}
		fail := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", p.Name, fmt.Sprintf(format, a...)))
		}
		for k := range p.Settings {
			if err := CheckKey(k); err != nil {
				fail("%v", err)
			}
		}
		if p.Settings["server_name"] == "" {
			fail("server_name is not set")
		}
		for _, k := range []string{"http.listen", "grpc.listen"} {
			if _, err := listenPort(p.Settings[k]); err != nil {
				fail("%s: %v", k, err)
			}
		}
		if v := p.Settings["metrics.listen"]; v != "" {
			if _, err := listenPort(v); err != nil {
				fail("metrics.listen: %v", err)
			}
		}
		runsService := slices.ContainsFunc(ts, func(t string) bool { return t != TargetEdge })
		if runsService && p.Settings["database.url"] == "" {
			fail("database.url is not set: the process would start its own local PostgreSQL")
		}
		if (slices.Contains(ts, TargetRoomServer) || slices.Contains(ts, TargetClientAPI) || slices.Contains(ts, TargetPresence) ||
			slices.Contains(ts, TargetKeyServer) || slices.Contains(ts, TargetFederationReceiver) || slices.Contains(ts, TargetFederationSender) ||
			slices.Contains(ts, TargetAppservice)) && p.Settings["nats.url"] == "" {
			fail("nats.url is not set: the process would start its own embedded NATS")
		}
		if f := p.Settings["logging.format"]; f != "" && f != "json" && f != "console" {
			fail("logging.format %q is not json or console", f)
		}
		// What each target calls (pkg/myelin/modules.go, run.go edgeRoutes,
		// federation.go federationEdgeRoutes).
		type need struct{ service, proto string }
		var needs []need
		federation := p.Settings["federation.enabled"] == "true"
		if federation && (p.Settings["federation.tls_cert_file"] == "" || p.Settings["federation.tls_key_file"] == "") {
			fail("federation.enabled without federation.tls_cert_file and tls_key_file")
		}
		for _, t := range ts {
			switch t {
			case TargetFederationReceiver:
				needs = append(needs, need{TargetKeyServer, "grpc"}, need{TargetRoomServer, "grpc"}, need{TargetPresence, "grpc"}, need{TargetClientAPI, "grpc"})
			}
			if federation {
				switch t {
				case TargetMedia:
					needs = append(needs, need{TargetKeyServer, "grpc"})
				case TargetEdge:
					needs = append(needs, need{TargetFederationReceiver, "http"})
				}
			}
			switch t {
			case TargetRoomServer:
				needs = append(needs, need{TargetKeyServer, "grpc"})
			case TargetPresence:
				needs = append(needs, need{TargetRoomServer, "grpc"})
			case TargetClientAPI:
				needs = append(needs, need{TargetKeyServer, "grpc"}, need{TargetRoomServer, "grpc"}, need{TargetPresence, "grpc"}, need{TargetMedia, "grpc"})
			case TargetMedia:
				needs = append(needs, need{TargetClientAPI, "grpc"})
			case TargetFederationSender:
				needs = append(needs, need{TargetKeyServer, "grpc"}, need{TargetRoomServer, "grpc"})
			case TargetAppservice:
				needs = append(needs, need{TargetRoomServer, "grpc"})
			case TargetEdge:
				needs = append(needs, need{TargetClientAPI, "http"}, need{TargetKeyServer, "http"}, need{TargetMedia, "http"})
			}
		}
		for _, n := range needs {
			key := "services." + strings.ReplaceAll(n.service, "-", "_") + "." + n.proto
			addr := p.Settings[key]
			if addr == "" {
				if !slices.Contains(ts, n.service) {
					fail("%s is not set, but the process calls %s", key, n.service)
				}
				continue
			}
			host, port, err := splitAddress(addr)
			if err != nil {
				fail("%s: %v", key, err)
				continue
			}
			found := false
			for _, e := range endpoints {
				if e.Host != host || e.Port != port {
					continue
				}
				found = true
				// pkg/rpc balances per call over the addresses a name
				// resolves to; behind one virtual address it keeps one
				// connection, so all of this process's calls would go to
				// one replica.
				if n.proto == "grpc" && e.OneAddress {
					fail("%s=%s reaches %s through one virtual address: gRPC keeps one connection to it, so every call goes to one replica; use a name that resolves to each replica (a headless Service)", key, addr, e.Process)
				}
				target, ok := byName[e.Process]
				if !ok {
					fail("%s=%s reaches %s, which is not a Myelin process", key, addr, e.Process)
					continue
				}
				if !slices.Contains(targets[target.Name], n.service) {
					fail("%s=%s reaches %s, which does not run %s", key, addr, target.Name, n.service)
				}
				// A bad listen address is reported for the target itself.
				if lp, err := listenPort(target.Settings[n.proto+".listen"]); err == nil && lp != e.TargetPort {
					fail("%s=%s arrives at port %d of %s, which listens for %s on %d", key, addr, e.TargetPort, target.Name, n.proto, lp)
				}
			}
			if !found {
				fail("%s=%s reaches no process of this deployment", key, addr)
			}
		}
	}
	return errs
}

// CheckListen checks that a listen address is set, has a fixed port and is
// reachable from other hosts.
func CheckListen(addr string) error {
	_, err := listenPort(addr)
	return err
}

// listenPort checks that a listen address is reachable from other hosts
// and returns its port.
func listenPort(addr string) (int, error) {
	if addr == "" {
		return 0, fmt.Errorf("not set")
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	if host == "localhost" || (net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback()) {
		return 0, fmt.Errorf("%s is a loopback address, unreachable from other containers", addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return 0, fmt.Errorf("%s needs a fixed port", addr)
	}
	return port, nil
}

// splitAddress accepts host:port, http(s)://host:port and dns:///host:port.
func splitAddress(addr string) (string, int, error) {
	a := addr
	for _, p := range []string{"http://", "https://", "dns:///", "dns:"} {
		a = strings.TrimPrefix(a, p)
	}
	a = strings.TrimSuffix(a, "/")
	host, portStr, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %v", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return host, port, nil
}
