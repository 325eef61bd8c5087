package clientapi

import (
	"math"
	"sync"
	"time"
)

// limitClass names a rate-limited group of endpoints.
type limitClass int

const (
	limitNone limitClass = iota
	limitRegister
	limitLogin
	limitSend
	limitCreateRoom
	limitMedia
)

// rateLimiter is a set of token buckets keyed by class and client (IP or
// user ID). Buckets that have refilled completely are forgotten, so the map
// only holds recently active clients.
type rateLimiter struct {
	enabled bool
	classes map[limitClass]RateBucket
	now     func() time.Time

	mu      sync.Mutex
	buckets map[bucketKey]*bucket
}

type bucketKey struct {
	class  limitClass
	client string
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(cfg RateLimitConfig, now func() time.Time) *rateLimiter {
	return &rateLimiter{
		enabled: cfg.Enabled,
		classes: map[limitClass]RateBucket{
			limitRegister:   cfg.Register,
			limitLogin:      cfg.Login,
			limitSend:       cfg.Send,
			limitCreateRoom: cfg.CreateRoom,
			limitMedia:      cfg.Media,
		},
		now:     now,
		buckets: map[bucketKey]*bucket{},
	}
}

// allow takes one token from the client's bucket. When the bucket is
// empty it returns false and how long until a token is available.
func (l *rateLimiter) allow(class limitClass, client string) (bool, time.Duration) {
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

func (b *bucket) refill(cfg RateBucket, now time.Time) {
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = math.Min(float64(cfg.Burst), b.tokens+elapsed*cfg.PerSecond)
	}
	b.last = now
}

// forgetFull drops buckets that are full again; they behave the same as
// a fresh bucket.
func (l *rateLimiter) forgetFull(now time.Time) {
	for k, b := range l.buckets {
		cfg := l.classes[k.class]
		b.refill(cfg, now)
		if b.tokens >= float64(cfg.Burst) {
			delete(l.buckets, k)
		}
	}
}
