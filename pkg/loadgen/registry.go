package loadgen

import (
	"context"
	"fmt"
)

// Scenario is one named, bounded workload. Run drives the target through
// env and records its phases with env.AddPhase; it must stop by itself
// (bounded counts, fixed durations).
//
// The registry is the hook for scenarios to come. Federation scenarios
// (issue #5, scenario 6: ingest of signed 50-PDU transactions from a test
// peer; joining a large remote room of ~30,000 state events) will register
// here once Myelin speaks federation: they need a signing test peer (a
// server-server API client with its own key, served on loopback) added to
// Env next to the client-server helpers. None is registered now, on
// purpose: there is nothing to measure yet.
type Scenario struct {
	Name  string
	Title string
	Run   func(ctx context.Context, env *Env) error
}

var registry []Scenario

// The built-in scenarios, in run order: serial latency first on an empty
// server, then the throughput sweep, then the big account (whose set-up is
// the longest). Memory is sampled before the first and after each one
// (scenario 5).
func init() {
	Register(serialScenario)
	Register(throughputScenario)
	Register(bigSyncScenario)
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
