package inode

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// Birth times tell a file from a later one that got its inode number.
//
// A node the table holds no fd for (a LOOKUP or READDIRPLUS entry never
// opened, an evicted node) does not keep its host inode alive: if the file
// is deleted behind the daemon's back, the host may give its inode number
// to a new file, often under the same name (an editor's save, a checkout).
// Mount and inode number then match the old record, and without more the
// new file would inherit the old nodeid — a guest file handle or a cached
// dentry of the old file would reach the new one. With
// --inode-file-handles=prefer the recorded host handle (which carries the
// inode's generation) catches that; with never, and on filesystems without
// handles, the record carries the file's birth time instead: statx reports
// it with every stat the table makes anyway (STATX_BTIME, on ext4, xfs,
// btrfs, tmpfs …), so checking it costs no syscall. A filesystem that
// reports none records none, and the check passes as before.
//
// The birth time is stored in the record's handle fields under a type no
// kernel handle has (negative), so it is never passed to
// open_by_handle_at.
const birthHandleType int32 = -2

// birthLen is the size of a birth-time handle: seconds (8 bytes) and
// nanoseconds (4), little endian.
const birthLen = 12

// birthHandle returns st's birth time as a record handle, or none if the
// filesystem does not report one.
func birthHandle(st *unix.Statx_t) (int32, []byte) {
	if st.Mask&unix.STATX_BTIME == 0 {
		return 0, nil
	}
	b := make([]byte, birthLen)
	putBirth(b, st)
	return birthHandleType, b
}

func putBirth(b []byte, st *unix.Statx_t) {
	binary.LittleEndian.PutUint64(b, uint64(st.Btime.Sec))
	binary.LittleEndian.PutUint32(b[8:], st.Btime.Nsec)
}

// sameBirth reports whether st can be rec's file as far as birth times
// tell: false only when both have one and they differ.
func sameBirth(rec Record, st *unix.Statx_t) bool {
	if rec.HandleType != birthHandleType || len(rec.Handle) != birthLen || st.Mask&unix.STATX_BTIME == 0 {
		return true
	}
	var b [birthLen]byte
	putBirth(b[:], st)
	return string(b[:]) == string(rec.Handle)
}

// isHostHandle reports whether rec's handle is a host file handle (for
// open_by_handle_at and for comparing with name_to_handle_at).
func isHostHandle(rec Record) bool {
	return len(rec.Handle) > 0 && rec.HandleType != birthHandleType
}
