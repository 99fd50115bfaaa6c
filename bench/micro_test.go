package bench

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Go benchmarks of single operations against any directory, typically a
// FUSE mount made by hand:
//
//	govirtiofsd --shared-dir /srv/x --mount /mnt/x &
//	go test ./bench -run '^$' -bench . -benchmem -args -benchdir /mnt/x
//
// Without -benchdir they run against a temporary directory (native).
var benchDir = flag.String("benchdir", "", "directory (e.g. a FUSE mount) for the Benchmark* functions")

func benchRoot(b *testing.B) string {
	b.Helper()
	if *benchDir == "" {
		return b.TempDir()
	}
	d, err := os.MkdirTemp(*benchDir, "gobench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// BenchmarkStatSync: one GETATTR round trip per op on a FUSE mount.
func BenchmarkStatSync(b *testing.B) {
	p := filepath.Join(benchRoot(b), "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	var st unix.Statx_t
	b.ResetTimer()
	for b.Loop() {
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &st); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateUnlink: CREATE, RELEASE (FLUSH) and UNLINK per op.
func BenchmarkCreateUnlink(b *testing.B) {
	dir := benchRoot(b)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(dfd)
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("c%d", i)
		i++
		fd, err := unix.Openat(dfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
		if err := unix.Unlinkat(dfd, name, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReaddir1k: OPENDIR, READDIR(PLUS) and RELEASEDIR of a
// 1000-entry directory per op.
func BenchmarkReaddir1k(b *testing.B) {
	dir := benchRoot(b)
	if err := makeFlat(dir, 1000); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		n, err := countDir(dfd, nil)
		unix.Close(dfd)
		if err != nil || n != 1000 {
			b.Fatalf("readdir: %d entries, %v", n, err)
		}
	}
}
