package loadgen

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Process names a server process to watch. With Tree set, its descendants
// count too (a PostgreSQL postmaster and its backends).
type Process struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Tree bool   `json:"tree,omitempty"`
}

// ProcessSample is one watched process (or process tree) at one moment,
// read from /proc/<pid>/stat and /proc/<pid>/status.
type ProcessSample struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Processes is how many processes were summed (1 without Tree).
	Processes int `json:"processes"`
	// CPUSeconds is user+system time since the process started, including
	// children it has waited for (cutime+cstime): a tree's exited backends
	// still count.
	CPUSeconds float64 `json:"cpu_seconds"`
	// RSSBytes is the resident set now (VmRSS), summed over a tree. Shared
	// memory of a tree (PostgreSQL's shared buffers) counts once per
	// process that touched it, so a tree's sum overstates its footprint.
	RSSBytes int64 `json:"rss_bytes"`
	// PSSBytes is the proportional set size (smaps_rollup Pss), summed over
	// a tree: shared pages are split between the processes sharing them,
	// so for a tree this is the honest footprint. 0 if unreadable.
	PSSBytes int64 `json:"pss_bytes"`
	// PeakRSSBytes is the root process's high-water mark (VmHWM).
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// RSSAnonBytes and RSSFileBytes split RSS (summed over a tree): anon
	// is the process's own memory (heap, stacks), file the mapped files'
	// pages it touched (its executable's code and data, shared with the
	// page cache).
	RSSAnonBytes int64 `json:"rss_anon_bytes,omitempty"`
	RSSFileBytes int64 `json:"rss_file_bytes,omitempty"`
}

// MemorySample is every watched process at one point of the run.
type MemorySample struct {
	Label     string          `json:"label"`
	At        time.Time       `json:"at"`
	Processes []ProcessSample `json:"processes"`
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// SampleProcesses reads every process in ps.
func SampleProcesses(label string, ps []Process) (MemorySample, error) {
	m := MemorySample{Label: label, At: time.Now().UTC()}
	for _, p := range ps {
		s, err := sampleProcess(p)
		if err != nil {
			return m, err
		}
		m.Processes = append(m.Processes, s)
	}
	return m, nil
}

func sampleProcess(p Process) (ProcessSample, error) {
	s := ProcessSample{Name: p.Name, PID: p.PID}
	pids := []int{p.PID}
	if p.Tree {
		pids = append(pids, descendants(p.PID)...)
	}
	for i, pid := range pids {
		st, err := readStat(pid)
		if err != nil {
			if i == 0 {
				return s, fmt.Errorf("process %s (%d): %w", p.Name, pid, err)
			}
			continue // a backend that exited meanwhile
		}
		vm, err := readStatus(pid)
		if err != nil {
			if i == 0 {
				return s, fmt.Errorf("process %s (%d): %w", p.Name, pid, err)
			}
			continue
		}
		rss, hwm := vm["VmRSS"], vm["VmHWM"]
		s.Processes++
		s.CPUSeconds += float64(st.utime+st.stime+st.cutime+st.cstime) / clockTicks
		s.RSSBytes += rss
		s.RSSAnonBytes += vm["RssAnon"]
		s.RSSFileBytes += vm["RssFile"]
		s.PSSBytes += readPss(pid)
		if i == 0 {
			s.PeakRSSBytes = hwm
		}
	}
	return s, nil
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64
}

// readStat parses /proc/<pid>/stat; the command name (field 2) may hold
// spaces and parentheses, so fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, so f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var st procStat
	st.ppid, _ = strconv.Atoi(f[1])
	st.utime, _ = strconv.ParseInt(f[11], 10, 64)
	st.stime, _ = strconv.ParseInt(f[12], 10, 64)
	st.cutime, _ = strconv.ParseInt(f[13], 10, 64)
	st.cstime, _ = strconv.ParseInt(f[14], 10, 64)
	return st, nil
}

// readStatus returns the memory sizes of /proc/<pid>/status (VmRSS,
// VmHWM, RssAnon, RssFile...) in bytes.
func readStatus(pid int) (map[string]int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		f := strings.Fields(v) // "123 kB"
		n, _ := strconv.ParseInt(f[0], 10, 64)
		out[k] = n * 1024
	}
	return out, nil
}

// descendants lists every process below root, by walking /proc's ppids.
func descendants(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// readPss returns Pss from /proc/<pid>/smaps_rollup in bytes, 0 when the
// file cannot be read (older kernels, other users' processes).
func readPss(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// Peak is the largest footprint a watched process (or tree) reached in the
// run. A single process has its kernel high-water mark (VmHWM), read at the
// end; a tree has none for its sum, so a tree is sampled every
// PeakInterval through the run and its largest sums are kept. (Sampling
// costs the load generator CPU, mostly reading PSS, which the server then
// lacks: hence trees only, and not more often.)
type Peak struct {
	Name string `json:"name"`
	// PeakRSSBytes is the root's VmHWM at the end: exact for one process.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// MaxSampledRSSBytes and MaxSampledPSSBytes are the largest RSS and PSS
	// sums seen over the samples (a tree's PSS is its honest footprint).
	MaxSampledRSSBytes int64 `json:"max_sampled_rss_bytes"`
	MaxSampledPSSBytes int64 `json:"max_sampled_pss_bytes"`
	Samples            int   `json:"samples"`
}

// PeakInterval is how often Run samples the watched processes for Peak.
const PeakInterval = 2 * time.Second

// peakSampler samples ps's trees every interval until stop is called,
// which samples every process once more and returns the peaks.
func peakSampler(ps []Process, interval time.Duration) (stop func() []Peak) {
	t := time.NewTicker(interval)
	stopPeaks := peakSamplerOn(ps, t.C)
	return func() []Peak { t.Stop(); return stopPeaks() }
}

// peakSamplerOn is peakSampler driven by ticks: each value received
// samples the trees once (tests send them themselves).
func peakSamplerOn(ps []Process, ticks <-chan time.Time) (stop func() []Peak) {
	peaks := make([]Peak, len(ps))
	for i, p := range ps {
		peaks[i].Name = p.Name
	}
	observe := func(final bool) {
		for i, p := range ps {
			if !p.Tree && !final {
				continue
			}
			s, err := sampleProcess(p)
			if err != nil {
				continue // gone; the run's own samples report that
			}
			pk := &peaks[i]
			pk.Samples++
			pk.PeakRSSBytes = max(pk.PeakRSSBytes, s.PeakRSSBytes)
			pk.MaxSampledRSSBytes = max(pk.MaxSampledRSSBytes, s.RSSBytes)
			pk.MaxSampledPSSBytes = max(pk.MaxSampledPSSBytes, s.PSSBytes)
		}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				observe(true)
				return
			case <-ticks:
				observe(false)
			}
		}
	}()
	return func() []Peak { close(quit); <-done; return peaks }
}
