package myelin

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

func heapReleased() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// A quiet process with garbage hands the pages back; one that collected
// since the last look does nothing.
func TestReleaseIfQuiet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection while the garbage is made
	runtime.GC()
	last, _ := reclaimable()
	var keep [][]byte
	for range 32 {
		keep = append(keep, make([]byte, 1<<20))
	}
	keep = nil
	runtime.KeepAlive(keep)
	if got := releaseIfQuiet(last + 1); got != last {
		t.Fatalf("after a collection (count %d, was %d): returned %d, want the count unchanged (no release)", last, last+1, got)
	}
	before := heapReleased()
	if _, bytes := reclaimable(); bytes < 32<<20 {
		t.Fatalf("reclaimable %d bytes after dropping 32 MiB", bytes)
	}
	if got := releaseIfQuiet(last); got == last {
		t.Fatal("quiet with 32 MiB of garbage: no collection ran")
	}
	if after := heapReleased(); after < before+16<<20 {
		t.Fatalf("released %d -> %d bytes: want at least 16 MiB more", before, after)
	}
}
