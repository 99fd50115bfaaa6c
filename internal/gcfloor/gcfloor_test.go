package gcfloor

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, roots uint64
		want        int
	}{
		{1 * mib, 0, 400},       // the 4 MiB minimum heap * 4 = 16 MiB
		{1 * mib, 1 * mib, 400}, // likewise
		{4 * mib, 0, 300},       // goal 4 + 4*3 = 16 MiB
		{3 * mib, 1 * mib, 325}, // goal 3 + 4*3.25 = 16 MiB
		{8 * mib, 0, 100},       // the default already reaches the floor
		{400 * mib, 0, 100},     // large live heap: the default
		{0, 0, 400},             // before the first cycle
	} {
		got := Percent(c.live, c.roots, 16*mib)
		if got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.roots, got, c.want)
		}
		p := uint64(got)
		if goal := max(c.live+(c.live+c.roots)*p/100, minHeap*p/100); goal < 16*mib {
			t.Errorf("live %d: goal %d below the floor", c.live, goal)
		}
	}
}

// TestGoalRaised checks the runtime's own heap goal: 4 MiB for a small
// heap by default, at least the floor once Start ran.
func TestGoalRaised(t *testing.T) {
	t.Setenv("GOGC", "")
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	goal := func() uint64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	debug.SetGCPercent(100)
	base := goal()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !Start(ctx, DefaultFloor, time.Hour) {
		t.Fatal("Start refused with GOGC unset")
	}
	floored := goal()
	t.Logf("heap goal %d KiB by default, %d KiB with the floor", base>>10, floored>>10)
	if base >= DefaultFloor {
		t.Fatalf("default goal %d already at the floor: the test proves nothing", base)
	}
	if floored < DefaultFloor {
		t.Errorf("goal %d below the floor %d", floored, DefaultFloor)
	}
	if floored > 2*DefaultFloor {
		t.Errorf("goal %d far above the floor %d: memory wasted", floored, DefaultFloor)
	}
}

func TestGOGCWins(t *testing.T) {
	t.Setenv("GOGC", "100")
	if Start(context.Background(), DefaultFloor, time.Hour) {
		t.Error("Start ran although GOGC is set")
	}
}
