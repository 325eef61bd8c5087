// Command compose-check validates a docker-compose file without Docker: it
// loads it with compose-go (the library `docker compose` uses), which checks
// it against the Compose Specification JSON schema and for consistency
// (unknown services in depends_on, networks, volumes), with every profile
// enabled. It then checks the Myelin processes in it (services whose image
// is named myelin) with package topology: targets, listen addresses,
// database/NATS settings and the services.* addresses between them.
//
// Usage: compose-check docker-compose.yml
package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/myelin-chat/myelin/tools/internal/topology"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check docker-compose.yml")
		os.Exit(2)
	}
	n, err := check(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
	fmt.Printf("compose-check: %s is valid (%d services, %d Myelin processes wired)\n", os.Args[1], n[0], n[1])
}

func check(file string) ([2]int, error) {
	ctx := context.Background()
	opts, err := cli.NewProjectOptions([]string{file},
		// Only the variables the file sets itself, so the result does not
		// depend on the caller's environment.
		cli.WithEnv(nil),
		cli.WithProfiles([]string{"*"}),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return [2]int{}, err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return [2]int{}, err
	}

	var procs []topology.Process
	var endpoints []topology.Endpoint
	var errs []error
	names := slices.Sorted(maps.Keys(project.Services))
	for _, name := range names {
		svc := project.Services[name]
		if !isMyelin(svc) {
			continue
		}
		settings := topology.Settings{}
		for k, v := range svc.Environment {
			if !strings.HasPrefix(k, "MYELIN_") {
				continue
			}
			key, err := topology.KeyOfEnv(k)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			if v != nil {
				settings[key] = *v
			}
		}
		if slices.ContainsFunc(svc.Command, func(a string) bool { return strings.HasPrefix(strings.TrimLeft(a, "-"), "config") }) {
			errs = append(errs, fmt.Errorf("%s: -config files are not checked here; configure compose services with MYELIN_* variables", name))
		}
		procs = append(procs, topology.Process{Name: name, Args: svc.Command, Settings: settings})
		for _, k := range []string{"http.listen", "grpc.listen"} {
			if p, ok := port(settings[k]); ok {
				endpoints = append(endpoints, topology.Endpoint{Host: name, Port: p, Process: name, TargetPort: p})
			}
		}
		// The database and NATS must be services this one waits for.
		for _, k := range []string{"database.url", "nats.url"} {
			u, err := url.Parse(settings[k])
			if settings[k] == "" || err != nil {
				continue
			}
			host := u.Hostname()
			dep, ok := project.Services[host]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: %s host %q is not a service of this file", name, k, host))
				continue
			}
			if _, ok := svc.DependsOn[host]; !ok {
				errs = append(errs, fmt.Errorf("%s: uses %s (%s) but does not depend_on it", name, host, k))
			} else if dep.HealthCheck != nil && !dep.HealthCheck.Disable && svc.DependsOn[host].Condition != types.ServiceConditionHealthy {
				errs = append(errs, fmt.Errorf("%s: %s has a healthcheck; wait for service_healthy", name, host))
			}
		}
	}
	if len(procs) == 0 {
		errs = append(errs, errors.New("no service uses the myelin image"))
	}
	errs = append(errs, topology.Check(procs, endpoints)...)
	// Someone must publish the edge's HTTP port.
	published := false
	for _, p := range procs {
		ts, _ := topology.Targets(p.Args)
		if !slices.Contains(ts, topology.TargetEdge) && !slices.Contains(ts, topology.TargetClientAPI) {
			continue
		}
		lp, _ := port(p.Settings["http.listen"])
		for _, pc := range project.Services[p.Name].Ports {
			if int(pc.Target) == lp && pc.Published != "" {
				published = true
			}
		}
	}
	if !published {
		errs = append(errs, errors.New("no process serving the client API publishes its HTTP port"))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return [2]int{len(project.Services), len(procs)}, errors.Join(errs...)
}

func isMyelin(s types.ServiceConfig) bool {
	image := s.Image
	if i := strings.LastIndex(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return path.Base(image) == "myelin"
}

func port(addr string) (int, bool) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(p)
	return n, err == nil
}
