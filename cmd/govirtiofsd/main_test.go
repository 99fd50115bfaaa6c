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
