package vhostuser

import (
	"os"
	ossignal "os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A ring goroutine kept busy is not preempted by the Go runtime's sysmon
// (see yieldAfter): over a second of requests at 16 in flight, the
// process gets no more than a stray preemption signal (SIGURG), where
// without the yields sysmon sent one every 10-30 ms of the ring's run.
// The garbage collector, which preempts goroutines with SIGURG too, is
// off meanwhile.
func TestBusyRingNotPreempted(t *testing.T) {
	path := serveOnce(t, Config{
		NewHandler:       func() Handler { return nopHandler{} },
		NumRequestQueues: 1,
	})
	f := dialFront(t, path)
	defer f.Close()
	// Warm up: the ring's first requests start its goroutine.
	if out, err := f.Do(1, [][]byte{[]byte("req")}, 2); err != nil || string(out) != "ok" {
		t.Fatalf("Do: %q %v", out, err)
	}

	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	urg := make(chan os.Signal, 1024)
	ossignal.Notify(urg, syscall.SIGURG)
	defer ossignal.Stop(urg)
	const run = time.Second
	end := time.Now().Add(run)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var doErr error
	n := 0
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(end) {
				out, err := f.Do(1, [][]byte{[]byte("req")}, 2)
				mu.Lock()
				if err == nil && string(out) != "ok" {
					err = os.ErrInvalid
				}
				if err != nil && doErr == nil {
					doErr = err
				}
				n++
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	ossignal.Stop(urg)
	if doErr != nil {
		t.Fatalf("Do: %v", doErr)
	}
	if got := len(urg); got > 2 {
		t.Errorf("%d SIGURGs (runtime preemptions) over %v of %d requests at 16 in flight, want at most 2", got, run, n)
	} else {
		t.Logf("%d SIGURGs over %v of %d requests", got, run, n)
	}
}
