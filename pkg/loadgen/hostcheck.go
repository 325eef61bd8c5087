package loadgen

import (
	"context"
	"crypto/sha256"
	"runtime"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

// Host checks. This kind of machine is shared: runs of the same build have
// differed by up to 30 %, and whole runs were slow for reasons outside the
// server. A host check measures a fixed workload at the start of the run,
// before any load, and again at the end, so two results can be compared
// knowing whether their machines were equally fast.
//
//   - The CPU probe hashes a fixed 32 MiB buffer with SHA-256 on one locked
//     OS thread; it reports the thread's CPU time, which grows when the
//     host is slower, not when other processes only compete for the core.
//   - The PostgreSQL probe times sequential `SELECT 1` round trips on one
//     connection (the server's database, when the run was given its URL).

// HostCheck is one host check.
type HostCheck struct {
	Label string    `json:"label"`
	At    time.Time `json:"at"`
	// CPUProbeMS is the median, over probeRepeats, of the probe's thread
	// CPU time in milliseconds; CPUProbeWallMS is the median wall time.
	CPUProbeMS     float64 `json:"cpu_probe_ms"`
	CPUProbeWallMS float64 `json:"cpu_probe_wall_ms"`
	// PostgresRoundTripUS is the median `SELECT 1` round trip in µs (0
	// when the run has no database URL or the probe failed).
	PostgresRoundTripUS float64 `json:"postgres_round_trip_us,omitempty"`
}

const (
	probeBytes      = 32 << 20
	probeRepeats    = 5
	probeRoundTrips = 300
)

// checkHost runs the host check; dbURL may be empty.
func checkHost(ctx context.Context, label, dbURL string) HostCheck {
	h := HostCheck{Label: label, At: time.Now().UTC()}
	h.CPUProbeMS, h.CPUProbeWallMS = cpuProbe()
	if dbURL != "" {
		h.PostgresRoundTripUS = postgresProbe(ctx, dbURL)
	}
	return h
}

func cpuProbe() (cpuMS, wallMS float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, probeBytes)
	for i := range buf {
		buf[i] = byte(i)
	}
	var cpus, walls []float64
	for range probeRepeats {
		c0, t0 := threadCPU(), time.Now()
		sum := sha256.Sum256(buf)
		buf[0] = sum[0] // keep the work observable
		walls = append(walls, float64(time.Since(t0).Microseconds())/1000)
		cpus = append(cpus, (threadCPU()-c0).Seconds()*1000)
	}
	return median(cpus), median(walls)
}

// threadCPU is the calling OS thread's CPU time, from the nanosecond
// thread clock (getrusage's thread times have tick resolution here, as
// coarse as the probe itself).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func postgresProbe(ctx context.Context, dbURL string) float64 {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0
	}
	defer conn.Close(ctx)
	var rtts []float64
	for range probeRoundTrips {
		t := time.Now()
		var one int
		if err := conn.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
			return 0
		}
		rtts = append(rtts, float64(time.Since(t).Nanoseconds())/1000)
	}
	return median(rtts)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
