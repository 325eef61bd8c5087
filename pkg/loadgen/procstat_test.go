package loadgen

import (
	"os"
	"testing"
	"time"
)

// A tree is sampled through the run; a single process once, at the end,
// by its high-water mark.
func TestPeakSampler(t *testing.T) {
	ps := []Process{{Name: "tree", PID: os.Getpid(), Tree: true}, {Name: "single", PID: os.Getpid()}}
	stop := peakSampler(ps, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	peaks := stop()
	tree, single := peaks[0], peaks[1]
	if tree.Samples < 3 || tree.MaxSampledRSSBytes <= 0 || tree.MaxSampledPSSBytes <= 0 {
		t.Errorf("tree: %+v, want several samples with sizes", tree)
	}
	if single.Samples != 1 || single.PeakRSSBytes < single.MaxSampledRSSBytes || single.MaxSampledRSSBytes <= 0 {
		t.Errorf("single process: %+v, want one sample, its VmHWM at least its RSS", single)
	}
}
