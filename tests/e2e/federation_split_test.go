package e2e

import (
	"testing"

	"github.com/myelin-chat/myelin/pkg/testkit"
)

// shapes returns a shape for federating that builds the i-th deployment
// with the i-th of shapes.
func shapes(shapes ...func(*testing.T) *server) func(*testing.T) *server {
	i := 0
	return func(t *testing.T) *server {
		s := shapes[i%len(shapes)](t)
		i++
		return s
	}
}

// TestFederationSplit federates a.test in the split shape (the
// federation-receiver and the federation-sender as processes of their
// own, behind the edge's federation listener) with b.test all-in-one, and
// runs the federation scenario: joins both ways (by alias, by room ID with
// via), messages both ways each seen once and in order in /sync.
func TestFederationSplit(t *testing.T) {
	ca := testkit.NewCA(t)
	servers := federating(t, ca, shapes(split, allInOne), "a.test", "b.test")
	startFederating(t, servers)
	federationScenario(t, servers[0], servers[1])
}
