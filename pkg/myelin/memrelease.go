package myelin

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning memory to the operating system when the process goes quiet
// (issue #20). The Go runtime keeps the heap it grew under load: its
// scavenger returns free pages only down to about the last collection's
// heap goal (three times the live data at Myelin's GOGC of 200), or to the
// soft memory limit, and after the load no collection runs for up to two
// minutes (the runtime's forced one) because nothing allocates. So the
// process would keep the size of its busiest moment, mostly garbage and
// free pages. A process that has been quiet for a while (no collection in
// releaseInterval) with more than releaseMin bytes of the heap free or
// dead collects and hands the free pages back at once
// (debug.FreeOSMemory): one collection, whose cost is that of marking the
// live heap (milliseconds), at most once per quiet spell, never under
// load. Start-up's garbage goes the same way once every service is ready.

const (
	releaseInterval = 20 * time.Second
	releaseMin      = 8 << 20
)

var releaseSamples = []metrics.Sample{
	{Name: "/gc/cycles/total:gc-cycles"},
	{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
	{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
	{Name: "/gc/heap/live:bytes"},                // live at the last collection
}

// reclaimable reads the collections so far and the heap bytes a
// collection and scavenge would hand back: the free pages and the objects
// beyond the last collection's live heap.
func reclaimable() (cycles uint64, bytes uint64) {
	s := make([]metrics.Sample, len(releaseSamples))
	copy(s, releaseSamples)
	metrics.Read(s)
	value := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	cycles, free, objects, live := value(0), value(1), value(2), value(3)
	bytes = free
	if objects > live {
		bytes += objects - live
	}
	return cycles, bytes
}

// runMemoryRelease releases memory after start-up once ready reports
// true, then whenever the process is quiet, until ctx ends.
func runMemoryRelease(ctx context.Context, ready func(context.Context) bool) {
	poll := time.NewTicker(200 * time.Millisecond)
	for started := false; !started; {
		select {
		case <-ctx.Done():
			poll.Stop()
			return
		case <-poll.C:
			started = ready(ctx)
		}
	}
	poll.Stop()
	// Start-up's garbage (migrations, descriptors, first queries): two
	// collections, as buffers parked in sync.Pools (NATS's file store
	// blocks, pgx's) survive the first.
	runtime.GC()
	debug.FreeOSMemory()
	ticker := time.NewTicker(releaseInterval)
	defer ticker.Stop()
	last, _ := reclaimable()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		last = releaseIfQuiet(last)
	}
}

// releaseIfQuiet collects and returns the free pages when no collection
// ran since the count last and more than releaseMin bytes are
// reclaimable. It returns the collection count to compare with next time.
func releaseIfQuiet(last uint64) uint64 {
	cycles, bytes := reclaimable()
	if cycles == last && bytes > releaseMin {
		debug.FreeOSMemory()
		cycles, _ = reclaimable()
	}
	return cycles
}
