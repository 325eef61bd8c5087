package loadgen

import (
	"os"
	"testing"
	"time"
)

// A tree is sampled at every tick and once more at the end; a single
// process only at the end, by its high-water mark. The test sends the
// ticks itself, so the count does not depend on the machine's speed.
func TestPeakSampler(t *testing.T) {
	ps := []Process{{Name: "tree", PID: os.Getpid(), Tree: true}, {Name: "single", PID: os.Getpid()}}
	ticks := make(chan time.Time) // unbuffered: each send is taken before the next
	stop := peakSamplerOn(ps, ticks)
	const n = 3
	for range n {
		ticks <- time.Now()
	}
	peaks := stop()
	tree, single := peaks[0], peaks[1]
	if tree.Samples != n+1 || tree.MaxSampledRSSBytes <= 0 || tree.MaxSampledPSSBytes <= 0 {
		t.Errorf("tree: %+v, want %d samples with sizes", tree, n+1)
	}
	if single.Samples != 1 || single.PeakRSSBytes < single.MaxSampledRSSBytes || single.MaxSampledRSSBytes <= 0 {
		t.Errorf("single process: %+v, want one sample, its VmHWM at least its RSS", single)
	}
}

// The ticker-driven sampler stops cleanly and samples every process at
// the end even when no tick came.
func TestPeakSamplerStopsWithoutTicks(t *testing.T) {
	ps := []Process{{Name: "tree", PID: os.Getpid(), Tree: true}}
	peaks := peakSampler(ps, time.Hour)()
	if peaks[0].Samples != 1 || peaks[0].MaxSampledRSSBytes <= 0 {
		t.Errorf("tree: %+v, want the final sample", peaks[0])
	}
}
