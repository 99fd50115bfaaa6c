package main

import "testing"

func TestOpenFDBound(t *testing.T) {
	for _, c := range []struct {
		n      int
		nofile uint64
		want   int
	}{
		{16384, 1 << 20, 16384}, // systemd's usual hard limit: as asked
		{16384, 20000, 10000},   // half for the node fds, half for the rest
		{4096, 1024, 512},
		{100, 10, 16},
		{16384, 32768, 16384},
	} {
		if got := openFDBound(c.n, c.nofile); got != c.want {
			t.Errorf("openFDBound(%d, %d) = %d, want %d", c.n, c.nofile, got, c.want)
		}
	}
}

// TestProcsForRingsAndSpare: one P per ring thread, at most one per CPU,
// and always one more, so that no ring's P is taken from its thread while
// the thread waits in poll(2) (see limitProcs).
func TestProcsForRingsAndSpare(t *testing.T) {
	for _, c := range []struct{ queues, pool, cpus, want int }{
		{1, 0, 2, 2},  // one request queue, no pool: its ring thread + spare
		{0, 0, 8, 2},  // queues defaults to 1
		{2, 0, 2, 3},  // two ring threads on two CPUs + spare
		{4, 0, 2, 3},  // ring threads beyond the CPUs do not get a P each
		{1, 4, 8, 5},  // a pool of 4 serving one queue + spare
		{2, 4, 64, 9}, // two queues with a pool of 4 each + spare
		{1, 1, 1, 2},  // a 1-CPU machine still gets the spare
	} {
		if got := procsFor(c.queues, c.pool, c.cpus); got != c.want {
			t.Errorf("procsFor(queues %d, pool %d, cpus %d) = %d, want %d", c.queues, c.pool, c.cpus, got, c.want)
		}
	}
}
