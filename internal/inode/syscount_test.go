package inode

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// syscallCounter counts the entries into some system calls made by the
// calling goroutine's thread (locked to it), from the kernel's syscall
// tracepoints through perf_event_open: the real calls, not our wrappers.
type syscallCounter struct {
	names []string
	fds   []int
}

// countSyscalls locks the goroutine to its thread and opens a counter of
// each of names on it (count runs them); the test's cleanup closes them
// and unlocks the thread. It needs root (or perf_event_paranoid ≤ 1) and
// tracefs, which it mounts if it is not.
func countSyscalls(t *testing.T, names ...string) *syscallCounter {
	t.Helper()
	const tracefs = "/sys/kernel/tracing"
	if _, err := os.Stat(tracefs + "/events"); err != nil {
		if err := unix.Mount("tracefs", tracefs, "tracefs", 0, ""); err != nil {
			t.Fatalf("mount tracefs to count syscalls: %v", err)
		}
	}
	runtime.LockOSThread()
	c := &syscallCounter{names: names}
	t.Cleanup(c.close)
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(tracefs, "events/syscalls/sys_enter_"+name, "id"))
		if err != nil {
			t.Fatalf("tracepoint of %s: %v", name, err)
		}
		id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatalf("tracepoint id of %s: %v", name, err)
		}
		attr := unix.PerfEventAttr{
			Type:   unix.PERF_TYPE_TRACEPOINT,
			Config: id,
			Bits:   unix.PerfBitDisabled,
		}
		attr.Size = uint32(binary.Size(attr))
		fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			t.Fatalf("perf_event_open for %s: %v", name, err)
		}
		c.fds = append(c.fds, fd)
	}
	return c
}

// count runs fn with the counters on and returns the calls of each name
// it made.
func (c *syscallCounter) count(t *testing.T, fn func()) map[string]int {
	t.Helper()
	for _, fd := range c.fds {
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_RESET, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
			t.Fatal(err)
		}
	}
	fn()
	got := map[string]int{}
	for i, fd := range c.fds {
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_DISABLE, 0); err != nil {
			t.Fatal(err)
		}
		var b [8]byte
		if _, err := unix.Read(fd, b[:]); err != nil {
			t.Fatalf("read counter of %s: %v", c.names[i], err)
		}
		got[c.names[i]] = int(binary.LittleEndian.Uint64(b[:]))
	}
	return got
}

func (c *syscallCounter) close() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	runtime.UnlockOSThread()
}

// The counter sees the calls it is meant to see, so that the tests below
// that assert a count of zero can fail.
func TestSyscallCounterCounts(t *testing.T) {
	c := countSyscalls(t, "statx", "openat")
	dir := t.TempDir()
	got := c.count(t, func() {
		var st unix.Statx_t
		for range 3 {
			unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_BASIC_STATS, &st)
		}
		fd, err := unix.Openat(unix.AT_FDCWD, dir, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
	})
	if got["statx"] != 3 || got["openat"] != 1 {
		t.Fatalf("counted %v, want 3 statx and 1 openat", got)
	}
}

// A LOOKUP costs the fewest syscalls for the run it is part of: a node the
// fd cache holds is found from one statx of its name (no open); in a run
// of LOOKUPs of files the cache does not hold (a fresh daemon, a guest
// walking a new tree) each costs one openat and one statx of the fd
// (opening first, instead of stating the name, opening and stating the
// fd); once the cache is full, one statx and no fd. Behind each count is
// a nodeid that stays the file's.
func TestLookupEntrySyscallsPerRun(t *testing.T) {
	const files = 40
	tab, dir := newTestTable(t, 2*files, HandlesNever)
	root := tab.Root()
	defer root.Release()
	for i := range 2 * files {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("f", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]NodeID{}
	c := countSyscalls(t, "statx", "openat")
	run := func(names []string) map[string]int {
		t.Helper()
		return c.count(t, func() {
			for _, name := range names {
				var st unix.Statx_t
				e, err := tab.LookupEntry(root, name, &st)
				if err != nil {
					t.Fatalf("lookup %s: %v", name, err)
				}
				if id, ok := ids[name]; ok && id != e.ID {
					t.Errorf("lookup %s: nodeid %d, want %d as before", name, e.ID, id)
				}
				ids[name] = e.ID
			}
		})
	}
	names := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprint("f", i))
		}
		return out
	}
	// The first misses of a run are stated first.
	run(names(0, openFirstAfter))
	// Then the run opens first.
	n := files - openFirstAfter
	if got := run(names(openFirstAfter, files)); got["statx"] != n || got["openat"] != n {
		t.Errorf("%d LOOKUPs of new files in a run of misses: %v, want %d openat and %d statx", n, got, n, n)
	}
	// A hit ends the run (the LOOKUP that finds it opened first, in vain:
	// one openat and statx)...
	if got := run(names(0, 1)); got["statx"] != 1 || got["openat"] != 1 {
		t.Errorf("LOOKUP of a cached file ending a run of misses: %v, want 1 openat and 1 statx", got)
	}
	// ...and cached files are found from a statx of the name.
	if got := run(names(1, files)); got["statx"] != files-1 || got["openat"] != 0 {
		t.Errorf("%d LOOKUPs of cached files: %v, want %d statx and no openat", files-1, got, files-1)
	}
	// New files again: stated first until the run is long enough.
	if got := run(names(files, files+openFirstAfter)); got["statx"] != 2*openFirstAfter || got["openat"] != openFirstAfter {
		t.Errorf("%d LOOKUPs of new files after hits: %v, want %d statx and %d openat", openFirstAfter, got, 2*openFirstAfter, openFirstAfter)
	}
	// Fill the cache to its bound; beyond it a miss costs one statx
	// whatever the run.
	run(names(files+openFirstAfter, 2*files))
	if tab.hasRoom() {
		t.Fatalf("fd cache has room after %d lookups with bound %d", 2*files, 2*files)
	}
	extra := []string{"g0", "g1", "g2"}
	for _, name := range extra {
		os.WriteFile(filepath.Join(dir, name), nil, 0o644)
	}
	if got := run(extra); got["statx"] != len(extra) || got["openat"] != 0 {
		t.Errorf("%d LOOKUPs of new files with the fd cache full: %v, want %d statx and no openat", len(extra), got, len(extra))
	}
}
