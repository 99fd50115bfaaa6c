package passthrough

import (
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"golang.org/x/sys/unix"
)

// A symlink's own xattrs cannot be reached through /proc/self/fd (that names
// its target) nor through its O_PATH fd (the xattr syscalls refuse O_PATH
// fds). The *xattrat syscalls (Linux 6.13) reach it as a name in its parent
// directory with AT_SYMLINK_NOFOLLOW; older kernels (ENOSYS) report xattrs
// on symlinks as unsupported.

type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

const xattratFlags = unix.AT_SYMLINK_NOFOLLOW

func cstr(s string) []byte { return append([]byte(s), 0) }

func bufPtr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// xattrat runs one *xattrat call; ok is false when the kernel lacks it
// (the inode package remembers that for every *xattrat caller).
func xattrat(call func() (uintptr, unix.Errno)) (n int, ok bool, err error) {
	if inode.XattratMissing() {
		return 0, false, nil
	}
	return inode.XattratDone(call())
}

func getxattrat(dirfd int, path, name string, dest []byte) (int, bool, error) {
	p, n := cstr(path), cstr(name)
	args := xattrArgs{value: bufPtr(dest), size: uint32(len(dest))}
	return xattrat(func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(&p[0])), xattratFlags,
			uintptr(unsafe.Pointer(&n[0])), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		return r, e
	})
}

func listxattrat(dirfd int, path string, dest []byte) (int, bool, error) {
	p := cstr(path)
	return xattrat(func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(&p[0])), xattratFlags,
			uintptr(bufPtr(dest)), uintptr(len(dest)), 0)
		return r, e
	})
}

func setxattrat(dirfd int, path, name string, data []byte, flags int) (bool, error) {
	p, n := cstr(path), cstr(name)
	args := xattrArgs{value: bufPtr(data), size: uint32(len(data)), flags: uint32(flags)}
	_, ok, err := xattrat(func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_SETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(&p[0])), xattratFlags,
			uintptr(unsafe.Pointer(&n[0])), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		return r, e
	})
	return ok, err
}

func removexattrat(dirfd int, path, name string) (bool, error) {
	p, n := cstr(path), cstr(name)
	_, ok, err := xattrat(func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(&p[0])), xattratFlags,
			uintptr(unsafe.Pointer(&n[0])), 0, 0)
		return r, e
	})
	return ok, err
}
