package inode

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// fdTableHeadroom is how many fds beyond the node fd bound the process's fd
// table is sized for up front: the files the guest opens, the sockets, the
// state files and the fds requests hold for a moment.
const fdTableHeadroom = 1024

// reserveFDTable grows the process's fd table, once, to hold fds up to
// n (or up to RLIMIT_NOFILE, if that is lower), using fd to make the
// descriptor.
//
// Why: the kernel grows an fd table by doubling it when an fd beyond it is
// allocated, and in a process whose fd table is shared by several threads
// (every Go program) each growth waits for an RCU grace period
// (expand_fdtable's synchronize_rcu) while the thread allocating the fd
// stalls. Filling the fd cache from empty to 10k fds doubles the table six
// times, from 256 to 16384 slots; each stall took 7-20 ms on the CI
// machine kind, ~90 ms in all for the first 12k opens against 6 ms with
// the table grown first — the larger share of a cold LOOKUP run's time
// (10k LOOKUPs at 16 in flight take ~170 ms), with the daemon idle and the
// guest waiting. A table never shrinks, so one fd allocated at n and
// closed again pays one grace period at start-up instead. The cost is the
// table itself: 8 bytes per slot, rounded up to a power of two (256 KiB
// for the default bound of 16384).
func reserveFDTable(fd, n int) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur != unix.RLIM_INFINITY && uint64(n) >= rl.Cur {
		n = int(rl.Cur) - 1
	}
	if n <= 0 {
		return nil
	}
	// F_DUPFD takes the lowest free fd >= n: unlike dup2 it never closes an
	// fd that is in use.
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n)
	if err != nil {
		return fmt.Errorf("reserve fd table for %d fds: %w", n, err)
	}
	return unix.Close(hi)
}
