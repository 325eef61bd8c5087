package loadgen

import (
	"context"
	"fmt"
)

// Scenario is one named, bounded workload. Run drives the target through
// env and records its phases with env.AddPhase; it must stop by itself
// (bounded counts, fixed durations).
//
// The federation scenarios (fedingest, fedjoin) drive the target as other
// homeservers would, through the load generator's own peers (fedpeer.go);
// they measure only when the caller sets Options.Federation.Target.
type Scenario struct {
	Name  string
	Title string
	Run   func(ctx context.Context, env *Env) error
	// Portable scenarios drive only the client-server API with open
	// registration, so they measure any homeserver alike: make
	// bench-compare runs these against Myelin and Dendrite.
	Portable bool
}

var registry []Scenario

// The built-in scenarios, in run order: serial latency first on an empty
// server, then the throughput sweep, then the big account (whose set-up is
// the longest). Memory is sampled before the first and after each one
// (scenario 5). The federation scenarios come last.
func init() {
	Register(serialScenario)
	Register(throughputScenario)
	Register(bigSyncScenario)
	Register(roomSizeScenario)
	Register(fedIngestScenario)
	Register(fedJoinScenario)
	Register(appserviceScenario)
}

// Register adds a scenario; names are unique. Scenarios run in
// registration order.
func Register(s Scenario) {
	for _, r := range registry {
		if r.Name == s.Name {
			panic("loadgen: scenario registered twice: " + s.Name)
		}
	}
	registry = append(registry, s)
}

// PortableScenarios names the Portable scenarios in run order.
func PortableScenarios() []string {
	var out []string
	for _, s := range registry {
		if s.Portable {
			out = append(out, s.Name)
		}
	}
	return out
}

// Scenarios lists the registered scenarios in run order.
func Scenarios() []Scenario { return append([]Scenario(nil), registry...) }

func lookup(names []string) ([]Scenario, error) {
	if len(names) == 0 {
		return Scenarios(), nil
	}
	var out []Scenario
	for _, r := range registry { // registry order, whatever order names came in
		for _, n := range names {
			if n == r.Name {
				out = append(out, r)
			}
		}
	}
	for _, n := range names {
		found := false
		for _, r := range registry {
			found = found || r.Name == n
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q", n)
		}
	}
	return out, nil
}
