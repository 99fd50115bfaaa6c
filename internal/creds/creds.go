// Package creds switches the filesystem credentials (fsuid/fsgid) of the
// calling OS thread, so that the host kernel enforces permissions and gives
// new files the FUSE caller's ownership.
//
// Linux keeps fsuid/fsgid per thread, and the raw setfsuid(2)/setfsgid(2)
// syscalls change only the calling thread (glibc's wrappers do too; Go's
// syscall.Setuid would change every thread). Switch therefore locks the
// goroutine to its OS thread for as long as the switch lasts; the restore
// function undoes both and unlocks.
//
// Switching fsuid away from 0 drops CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID
// and the other filesystem capabilities from the thread's effective set, so
// a switched thread is as powerful as the caller and no more.
package creds

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Switch makes the current OS thread act with filesystem uid and gid. It
// returns a function that restores the previous credentials; call it on the
// same goroutine before returning. Callers skip it when the caller's ids
// are the daemon's own (root serving root).
func Switch(uid, gid uint32) (restore func(), err error) {
	return SwitchGroups(uid, gid, nil)
}

// SwitchGroups is Switch with supplementary groups as well (FUSE's
// CREATE_SUPP_GROUP extension: the caller's group that owns a setgid
// directory, so a file created in it keeps that group and its setgid bit).
// setgroups(2) is per thread when called raw, like setfsuid.
func SwitchGroups(uid, gid uint32, groups []uint32) (restore func(), err error) {
	runtime.LockOSThread()
	var oldGroups []uint32
	if len(groups) > 0 {
		if oldGroups, err = getgroups(); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		if err := setgroups(groups); err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("setgroups %v: %w", groups, err)
		}
	}
	undoGroups := func() {
		if len(groups) > 0 {
			setgroups(oldGroups)
		}
	}
	// setfsgid first: once fsuid is not 0 we could no longer change it.
	oldGID := setfsgid(gid)
	if newGID := setfsgid(gid); newGID != int(gid) {
		setfsgid(uint32(oldGID))
		undoGroups()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setfsgid %d: %w", gid, unix.EPERM)
	}
	oldUID := setfsuid(uid)
	if newUID := setfsuid(uid); newUID != int(uid) {
		setfsuid(uint32(oldUID))
		setfsgid(uint32(oldGID))
		undoGroups()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setfsuid %d: %w", uid, unix.EPERM)
	}
	return func() {
		setfsuid(uint32(oldUID))
		setfsgid(uint32(oldGID))
		undoGroups()
		runtime.UnlockOSThread()
	}, nil
}

// getgroups returns the calling thread's supplementary groups.
func getgroups() ([]uint32, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_GETGROUPS, 0, 0, 0)
	if errno != 0 {
		return nil, errno
	}
	g := make([]uint32, n+1)
	n, _, errno = unix.RawSyscall(unix.SYS_GETGROUPS, uintptr(len(g)), uintptr(unsafe.Pointer(&g[0])), 0)
	if errno != 0 {
		return nil, errno
	}
	return g[:n], nil
}

// setgroups sets the calling thread's supplementary groups (raw: glibc and
// Go's syscall.Setgroups change every thread).
func setgroups(g []uint32) error {
	var p unsafe.Pointer
	if len(g) > 0 {
		p = unsafe.Pointer(&g[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(g)), uintptr(p), 0); errno != 0 {
		return errno
	}
	return nil
}

// setfsuid calls the raw syscall; it returns the previous fsuid (setfsuid
// reports no errors: a refused change is seen by calling it again).
func setfsuid(uid uint32) int {
	r, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(uid), 0, 0)
	return int(r)
}

func setfsgid(gid uint32) int {
	r, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(gid), 0, 0)
	return int(r)
}
