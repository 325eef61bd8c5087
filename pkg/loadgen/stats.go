package loadgen

import (
	"slices"
	"sync"
	"time"
)

// Recorder collects one phase's latencies and errors; safe for concurrent
// use. Every latency is kept (phases are bounded), so percentiles are exact.
type Recorder struct {
	mu        sync.Mutex
	latencies []time.Duration
	errors    map[string]int
	start     time.Time
	end       time.Time
}

func newRecorder() *Recorder {
	return &Recorder{errors: map[string]int{}, start: time.Now()}
}

// Observe records one operation: its latency if it succeeded, else its
// errcode.
func (r *Recorder) Observe(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors[Errcode(err)]++
		return
	}
	r.latencies = append(r.latencies, d)
}

// Count is the number of successful operations so far.
func (r *Recorder) Count() (ok, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.errors {
		failed += n
	}
	return len(r.latencies), failed
}

// Stop fixes the phase's end time (for the throughput).
func (r *Recorder) Stop() { r.mu.Lock(); r.end = time.Now(); r.mu.Unlock() }

// Latency is a latency summary in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P95  float64 `json:"p95_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// Phase is one measured phase of a scenario, as written to the JSON.
type Phase struct {
	Scenario string `json:"scenario"`
	Name     string `json:"name"`
	// Params are the phase's knobs (senders, rooms, timeline limit...).
	Params map[string]any `json:"params,omitempty"`
	// Count is the number of successful operations.
	Count int `json:"count"`
	// Errors counts failed operations by errcode.
	Errors      map[string]int `json:"errors"`
	DurationSec float64        `json:"duration_s"`
	// Throughput is successful operations per second of the phase.
	Throughput float64 `json:"throughput_per_s"`
	Latency    Latency `json:"latency"`
	// Extra holds scenario-specific observations (answer sizes, missed
	// deliveries, lazy-loading outcome...).
	Extra map[string]any `json:"extra,omitempty"`
}

// Summary turns the recorded operations into a Phase.
func (r *Recorder) Summary(scenario, name string, params map[string]any) Phase {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.end
	if end.IsZero() {
		end = time.Now()
	}
	p := Phase{Scenario: scenario, Name: name, Params: params, Count: len(r.latencies),
		Errors: map[string]int{}, DurationSec: end.Sub(r.start).Seconds()}
	for k, v := range r.errors {
		p.Errors[k] = v
	}
	if p.DurationSec > 0 {
		p.Throughput = float64(p.Count) / p.DurationSec
	}
	p.Latency = summarize(r.latencies)
	return p
}

func summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// Nearest-rank percentile.
	pct := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		i = max(0, min(i, len(s)-1))
		return ms(s[i])
	}
	return Latency{P50: pct(0.50), P95: pct(0.95), P99: pct(0.99), Max: ms(s[len(s)-1]),
		Mean: ms(sum / time.Duration(len(s)))}
}
