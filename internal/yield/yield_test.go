package yield

import (
	"testing"
	"time"
)

// Served yields once After has passed since the last yield, not before,
// looking at the clock every check requests.
func TestServedYieldsAfterInterval(t *testing.T) {
	yields := 0
	defer func(g func(), c func() time.Time) { gosched, clock = g, c }(gosched, clock)
	gosched = func() { yields++ }
	now := time.Unix(1e9, 0)
	clock = func() time.Time { return now }

	y := Yielder{last: now}
	for range 10 * check {
		y.Served()
	}
	now = now.Add(After - 1)
	for range check {
		y.Served()
	}
	if yields != 0 {
		t.Fatalf("%d yields before After had passed", yields)
	}
	now = now.Add(1)
	for range check - 1 {
		y.Served()
	}
	if yields != 0 {
		t.Fatalf("%d yields before the clock was due to be read", yields)
	}
	y.Served()
	if yields != 1 {
		t.Fatalf("%d yields once After had passed, want 1", yields)
	}
	for range check {
		y.Served()
	}
	if yields != 1 {
		t.Fatalf("%d yields right after a yield, want still 1", yields)
	}
}

// The zero Yielder yields at its first look at the clock.
func TestZeroYielderYieldsAtFirstCheck(t *testing.T) {
	yields := 0
	defer func(g func()) { gosched = g }(gosched)
	gosched = func() { yields++ }
	var y Yielder
	for range check {
		y.Served()
	}
	if yields != 1 {
		t.Fatalf("%d yields after %d requests of a zero Yielder, want 1", yields, check)
	}
}
