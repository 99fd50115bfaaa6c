// Package gcfloor keeps the Go garbage collector's heap goal at or above a
// floor, by raising the GC percentage while the live heap is small.
//
// Why: a file server's live heap is small (a few MiB: the node table lives
// on disk) while every request allocates a little (go-fuse's request
// structs), so with the default GOGC=100 the 4 MiB minimum heap goal makes
// the collector run 60+ times a second at 250k requests/s. Each cycle stops
// the request loop for a moment, and with one P per ring thread those
// moments land in the tail latency. A floor of 16 MiB cuts the cycles
// about fourfold, and costs at most that much memory, once. With a large
// live heap (--state-dir=none holding a million nodes) the percentage goes
// back to the default and the floor has no effect.
//
// An explicit GOGC in the environment wins: Start then does nothing.
package gcfloor

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// DefaultFloor is the heap goal the daemon keeps at least.
const DefaultFloor = 16 << 20

// Percent returns the smallest GC percentage that puts the heap goal at
// floor or above, and never below the default 100. The runtime's goal is
// the larger of live + (live+roots)*p/100, where roots are the scannable
// globals and goroutine stacks, and a minimum heap of 4 MiB*p/100.
func Percent(live, roots, floor uint64) int {
	base := max(live+roots, 1)
	if live+base >= floor {
		return 100
	}
	byLive := 100 * (floor - live) / base
	byMinimum := 100 * floor / minHeap
	return int(max(100, min(byLive, byMinimum)))
}

// minHeap is the runtime's minimum heap goal at GOGC=100.
const minHeap = 4 << 20

// Start adjusts the GC percentage once now and then every interval until
// ctx ends. It returns false (and does nothing) if GOGC is set.
func Start(ctx context.Context, floor uint64, interval time.Duration) bool {
	if os.Getenv("GOGC") != "" || floor == 0 {
		return false
	}
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/globals:bytes"},
		{Name: "/gc/scan/stack:bytes"},
	}
	adjust := func() {
		metrics.Read(samples)
		var v [3]uint64
		for i, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = s.Value.Uint64()
			}
		}
		debug.SetGCPercent(Percent(v[0], v[1]+v[2], floor))
	}
	adjust()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				adjust()
			}
		}
	}()
	return true
}
