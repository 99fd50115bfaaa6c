package devfuse

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctls of include/uapi/linux/fuse.h for FUSE passthrough (Linux 6.9).
const (
	iocBackingOpen  = 0x4010e501 // _IOW(229, 1, struct fuse_backing_map)
	iocBackingClose = 0x4004e502 // _IOW(229, 2, uint32_t)
)

type backingMap struct {
	fd      int32
	flags   uint32
	padding uint64
}

// Backing registers host files as FUSE passthrough backing files on a
// /dev/fuse connection (passthrough.BackingFiles). It needs CAP_SYS_ADMIN
// and a connection that negotiated FUSE_PASSTHROUGH.
type Backing struct {
	FD int // the /dev/fuse connection
}

// Open registers fd and returns its backing id.
func (b Backing) Open(fd int) (int32, error) {
	m := backingMap{fd: int32(fd)}
	id, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.FD), iocBackingOpen, uintptr(unsafe.Pointer(&m)))
	if errno != 0 {
		return 0, fmt.Errorf("FUSE_DEV_IOC_BACKING_OPEN: %w", errno)
	}
	return int32(id), nil
}

// Close unregisters a backing id.
func (b Backing) Close(id int32) error {
	v := uint32(id)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(b.FD), iocBackingClose, uintptr(unsafe.Pointer(&v)))
	if errno != 0 {
		return fmt.Errorf("FUSE_DEV_IOC_BACKING_CLOSE: %w", errno)
	}
	return nil
}
