package parallel

import (
	"sync/atomic"
	"testing"
)

// TestEach: every index is handed to fn exactly once, for any n (none,
// fewer than the cores, many more).
func TestEach(t *testing.T) {
	for _, n := range []int{0, 1, 3, 1000} {
		counts := make([]atomic.Int32, n)
		Each(n, func(i int) { counts[i].Add(1) })
		for i := range counts {
			if c := counts[i].Load(); c != 1 {
				t.Fatalf("n=%d: index %d called %d times", n, i, c)
			}
		}
	}
}
