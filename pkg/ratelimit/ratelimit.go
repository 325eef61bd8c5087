// Package ratelimit is the token-bucket rate limiter the HTTP-serving
// services share (the client-API and the media service): one bucket per
// class of endpoints and client (an IP address or a user ID).
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Bucket configures a token bucket: PerSecond tokens are added each
// second, up to Burst.
type Bucket struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// Valid reports whether the bucket can ever hand out a token.
func (b Bucket) Valid() bool { return b.PerSecond > 0 && b.Burst >= 1 }

// Limiter is a set of token buckets keyed by class and client. Buckets
// that have refilled completely are forgotten, so the map only holds
// recently active clients.
type Limiter struct {
	enabled bool
	classes map[string]Bucket
	now     func() time.Time

	mu      sync.Mutex
	buckets map[bucketKey]*bucket
}

type bucketKey struct {
	class  string
	client string
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter of the given classes; a disabled one allows
// everything. now is the clock (time.Now outside tests).
func New(enabled bool, classes map[string]Bucket, now func() time.Time) *Limiter {
	c := make(map[string]Bucket, len(classes))
	for k, v := range classes {
		c[k] = v
	}
	return &Limiter{enabled: enabled, classes: c, now: now, buckets: map[bucketKey]*bucket{}}
}

// Allow takes one token from the client's bucket of class. When the
// bucket is empty it returns false and how long until a token is
// available. Classes the limiter was not given are not limited.
func (l *Limiter) Allow(class, client string) (bool, time.Duration) {
	cfg, ok := l.classes[class]
	if !l.enabled || !ok {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buckets) > 10000 {
		l.forgetFull(now)
	}
	k := bucketKey{class, client}
	b := l.buckets[k]
	if b == nil {
		b = &bucket{tokens: float64(cfg.Burst), last: now}
		l.buckets[k] = b
	}
	b.refill(cfg, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) / cfg.PerSecond * float64(time.Second)))
	return false, wait
}

func (b *bucket) refill(cfg Bucket, now time.Time) {
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = math.Min(float64(cfg.Burst), b.tokens+elapsed*cfg.PerSecond)
	}
	b.last = now
}

// forgetFull drops buckets that are full again; they behave the same as
// a fresh bucket.
func (l *Limiter) forgetFull(now time.Time) {
	for k, b := range l.buckets {
		cfg := l.classes[k.class]
		b.refill(cfg, now)
		if b.tokens >= float64(cfg.Burst) {
			delete(l.buckets, k)
		}
	}
}
