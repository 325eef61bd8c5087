package loadgen

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Rate limits. Most homeservers limit registration, room creation, joins
// and sends by default (Synapse and Dendrite do), so a target that was not
// configured for benchmarking answers some requests with 429
// M_LIMIT_EXCEEDED and the time to wait.
//
//   - Set-up work (registrations, room creation, joins, history messages)
//     is not measured: a limited request there waits as told and is tried
//     again (retryLimited), a bounded number of times.
//   - A measured request that is limited counts under its errcode, and its
//     client then waits as told before its next request (waitLimited), so
//     the phase shows the limit as errors instead of hammering the server.
//
// Run adds a note to the result when either happened.

// maxLimitWait caps one wait, whatever the server asks, so every scenario
// still ends by itself; setupAttempts bounds the tries of one set-up call.
const (
	maxLimitWait  = 10 * time.Second
	setupAttempts = 30
)

// rateLimited reports whether err is a 429 answer and how long to wait.
func rateLimited(err error) (time.Duration, bool) {
	var me *MatrixError
	if !errors.As(err, &me) || me.Status != http.StatusTooManyRequests {
		return 0, false
	}
	d := me.RetryAfter
	if d <= 0 {
		d = time.Second // limited without saying for how long
	}
	return min(d, maxLimitWait), true
}

// waitLimited sleeps as long as a rate-limited err asks (or until ctx ends)
// and reports whether err was rate-limited.
func (e *Env) waitLimited(ctx context.Context, err error) bool {
	d, ok := rateLimited(err)
	if !ok {
		return false
	}
	e.limitedMeasured.Add(1)
	sleep(ctx, d)
	return true
}

// retryLimited runs a set-up call until it is not rate-limited, waiting as
// the server asks between tries.
func (e *Env) retryLimited(ctx context.Context, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		d, ok := rateLimited(err)
		if !ok || attempt == setupAttempts || ctx.Err() != nil {
			return err
		}
		e.limitedSetup.Add(1)
		sleep(ctx, d)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
