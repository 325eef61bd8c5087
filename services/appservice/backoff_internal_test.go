package appservice

import (
	"testing"
	"time"
)

// The wait doubles per consecutive failure from backoff_min and stops at
// backoff_max, with at most 10 % jitter on top.
func TestBackoff(t *testing.T) {
	cases := []struct {
		failures int
		base     time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {9, 256 * time.Second}, {10, 5 * time.Minute}, {1000, 5 * time.Minute}}
	for _, c := range cases {
		for range 20 {
			got := backoff(time.Second, 5*time.Minute, c.failures)
			if got < c.base || got > c.base+c.base/10 {
				t.Fatalf("backoff after %d failures: %v, want %v to %v", c.failures, got, c.base, c.base+c.base/10)
			}
		}
	}
}
