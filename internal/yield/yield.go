// Package yield keeps a goroutine that serves requests without ever
// parking in the Go scheduler's good books.
//
// A goroutine that waits in plain blocking system calls (poll(2) on a
// ring's kick eventfd, read(2) on /dev/fuse) and serves what it gets in
// place never switches as far as the scheduler can tell: its P's
// scheduling tick never moves. The runtime's sysmon takes that for a
// goroutine hogging its P: once the tick is 10 ms old it preempts the
// goroutine with a signal (SIGURG: a signal delivery, the goroutine
// requeued, often resumed on another thread) or, if it is in a system
// call at that moment, takes its P and hands it to another thread — and
// each such retake sets sysmon back to its shortest sleep (20 µs), so
// sysmon itself wakes tens of thousands of times a second. A Served call
// per request makes the goroutine yield (runtime.Gosched) once every
// After of serving: the tick moves, sysmon leaves it alone and backs off.
//
// Measured on a vhost-user ring (bench, 10 interleaved runs): SIGURGs to
// the daemon 49 -> 5 and sysmon's sleeps 3436 -> 669 over a GETATTR and a
// READ row; daemon CPU per request -5..-18 % on most rows, GETATTR at 16
// in flight +14 % requests/s. Yielding every 64 requests instead cost
// GETATTR at 16 in flight a fifth of its throughput: each yield wakes an
// idle P's thread to look for work, which took the CPU the driver needed.
//
// The /dev/fuse workers (internal/devfuse) do not use it: there it also
// cut daemon CPU per request (8-34 %) and sysmon's sleeps (16k -> 5k over
// three rows), but requests that come one at a time took longer (a
// GETATTR 14.8 -> 18.7 µs, create+unlink 130 -> 148 µs, 11 interleaved
// runs each): in the 2-vCPU VM measured, whose idle vCPUs halt at once,
// sysmon's wake-ups had kept the other vCPU awake for the next request.
package yield

import (
	"runtime"
	"time"
)

const (
	// After is how long a goroutine serves between yields: half of
	// sysmon's 10 ms preemption threshold.
	After = 5 * time.Millisecond
	// check is how many requests pass between looks at the clock.
	check = 64
)

// Yielder counts one goroutine's requests; the zero value is ready. Not
// safe for concurrent use: one per serving goroutine.
type Yielder struct {
	n    uint32
	last time.Time
}

// Served records a request served, and yields the processor if the
// goroutine has not yielded for After.
func (y *Yielder) Served() {
	if y.n++; y.n%check != 0 {
		return
	}
	if now := clock(); now.Sub(y.last) >= After {
		y.last = now
		gosched()
	}
}

// gosched and clock are runtime.Gosched and time.Now; tests replace them.
var (
	gosched = runtime.Gosched
	clock   = time.Now
)
