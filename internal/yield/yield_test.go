package yield

import (
	"runtime"
	"testing"
	"time"
)

// Served yields once After has passed since the last yield, not before:
// another goroutine on the only P runs only when the serving one yields.
func TestServedYieldsAfterInterval(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ran := make(chan struct{}, 1)
	go func() { ran <- struct{}{} }()
	var y Yielder
	y.last = time.Now().Add(time.Minute) // not due for a minute, whatever the machine's hiccups
	for range 10 * check {
		y.Served()
	}
	select {
	case <-ran:
		t.Fatal("Served yielded before After had passed")
	default:
	}
	y.last = time.Now().Add(-After)
	for range check {
		y.Served()
	}
	select {
	case <-ran:
	default:
		t.Fatal("Served did not yield After after the last yield")
	}
}
