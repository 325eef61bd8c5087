package ratelimit_test

import (
	"testing"
	"time"

	"github.com/myelin-chat/myelin/pkg/ratelimit"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	classes := map[string]ratelimit.Bucket{"login": {PerSecond: 2, Burst: 3}}
	l := ratelimit.New(true, classes, clock)

	for i := range 3 {
		if ok, _ := l.Allow("login", "1.2.3.4"); !ok {
			t.Fatalf("request %d within burst refused", i)
		}
	}
	ok, wait := l.Allow("login", "1.2.3.4")
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("4th request: ok=%v wait=%v, want refused with 500ms", ok, wait)
	}
	// Another client has its own bucket.
	if ok, _ := l.Allow("login", "5.6.7.8"); !ok {
		t.Fatal("other client refused")
	}
	// Unconfigured classes are not limited.
	for range 10 {
		if ok, _ := l.Allow("", "1.2.3.4"); !ok {
			t.Fatal("unconfigured class refused")
		}
	}
	// Half a second refills one token.
	now = now.Add(500 * time.Millisecond)
	if ok, _ := l.Allow("login", "1.2.3.4"); !ok {
		t.Fatal("refilled token refused")
	}
	if ok, _ := l.Allow("login", "1.2.3.4"); ok {
		t.Fatal("second request after one refill allowed")
	}
	// A long pause refills only up to the burst.
	now = now.Add(time.Hour)
	for i := range 3 {
		if ok, _ := l.Allow("login", "1.2.3.4"); !ok {
			t.Fatalf("request %d after refill refused", i)
		}
	}
	if ok, _ := l.Allow("login", "1.2.3.4"); ok {
		t.Fatal("burst exceeded after refill")
	}

	off := ratelimit.New(false, classes, clock)
	for range 100 {
		if ok, _ := off.Allow("login", "1.2.3.4"); !ok {
			t.Fatal("disabled limiter refused")
		}
	}
}

func TestBucketValid(t *testing.T) {
	for _, c := range []struct {
		b    ratelimit.Bucket
		want bool
	}{
		{ratelimit.Bucket{PerSecond: 1, Burst: 1}, true},
		{ratelimit.Bucket{PerSecond: 0, Burst: 1}, false},
		{ratelimit.Bucket{PerSecond: 1, Burst: 0}, false},
	} {
		if got := c.b.Valid(); got != c.want {
			t.Errorf("%+v: Valid %v, want %v", c.b, got, c.want)
		}
	}
}
