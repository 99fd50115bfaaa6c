package inode

import (
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The *at syscalls of the request path, without the heap allocation
// x/sys/unix makes for every path argument (BytePtrFromString): a name is a
// single validated component of at most 255 bytes, so it is copied, NUL
// terminated, into a buffer on the caller's stack. The stack cannot move
// during the syscall (the goroutine is in the syscall state), as with the
// Statx_t that x/sys/unix passes the same way.

// nameBuf holds one NUL-terminated path component (or a /proc/self/fd path).
type nameBuf [256]byte

// set copies s into b and returns a pointer to it; EINVAL for a name that
// cannot be a component (too long or with a NUL byte).
func (b *nameBuf) set(s string) (*byte, error) {
	if len(s) >= len(b) {
		return nil, unix.ENAMETOOLONG
	}
	if strings.IndexByte(s, 0) >= 0 {
		return nil, unix.EINVAL
	}
	copy(b[:], s)
	b[len(s)] = 0
	return &b[0], nil
}

// setProc makes b "/proc/self/fd/<fd>".
func (b *nameBuf) setProc(fd int) *byte {
	const prefix = "/proc/self/fd/"
	n := copy(b[:], prefix)
	var digits [20]byte
	i := len(digits)
	u := uint(fd)
	for {
		i--
		digits[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	n += copy(b[n:], digits[i:])
	b[n] = 0
	return &b[0]
}

// errnoErr is e as an error, nil for 0. (Errnos are below 256, so the
// conversion to an interface does not allocate.)
func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// Openat is unix.Openat for a single component name.
func Openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	var b nameBuf
	p, err := b.set(name)
	if err != nil {
		return -1, err
	}
	fd, _, e := syscall.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags|unix.O_LARGEFILE), uintptr(mode), 0, 0)
	if e != 0 {
		return -1, errnoErr(e)
	}
	return int(fd), nil
}

// Reopen opens the file fd names through /proc/self/fd/<fd> with flags
// (unix.Open(procPath(fd), flags, 0)).
func Reopen(fd int, flags int) (int, error) {
	var b nameBuf
	p := b.setProc(fd)
	nfd, _, e := syscall.Syscall6(unix.SYS_OPENAT, atFDCWD, uintptr(unsafe.Pointer(p)), uintptr(flags|unix.O_LARGEFILE), 0, 0, 0)
	if e != 0 {
		return -1, errnoErr(e)
	}
	return int(nfd), nil
}

// StatxAt is unix.Statx for a single component name.
func StatxAt(dirfd int, name string, flags int, mask int, st *unix.Statx_t) error {
	var b nameBuf
	p, err := b.set(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags), uintptr(mask), uintptr(unsafe.Pointer(st)), 0)
	return errnoErr(e)
}

// Mkdirat is unix.Mkdirat for a single component name.
func Mkdirat(dirfd int, name string, mode uint32) error {
	var b nameBuf
	p, err := b.set(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall(unix.SYS_MKDIRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(mode))
	return errnoErr(e)
}

// Unlinkat is unix.Unlinkat for a single component name.
func Unlinkat(dirfd int, name string, flags int) error {
	var b nameBuf
	p, err := b.set(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall(unix.SYS_UNLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags))
	return errnoErr(e)
}

// emptyPath is the "" of AT_EMPTY_PATH calls.
var emptyPath [1]byte

// statxFD stats fd itself (flags include AT_EMPTY_PATH).
func statxFD(fd int, flags int, mask int, st *unix.Statx_t) error {
	_, _, e := syscall.Syscall6(unix.SYS_STATX, uintptr(fd), uintptr(unsafe.Pointer(&emptyPath[0])), uintptr(flags), uintptr(mask), uintptr(unsafe.Pointer(st)), 0)
	return errnoErr(e)
}

// atFDCWD is AT_FDCWD as a syscall argument.
var atFDCWD = func() uintptr { fd := unix.AT_FDCWD; return uintptr(fd) }()
