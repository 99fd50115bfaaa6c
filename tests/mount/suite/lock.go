package suite

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register("posix_lock", posixLock)
	register("posix_lock_pid", posixLockPid)
	register("posix_lock_host", posixLockHost)
	register("flock", flockCase)
	register("flock_host", flockHost)
}

// rootCaller runs a helper as root, as a second process for lock tests.
var rootCaller = Caller{}

// holdLock starts a root helper that opens path, takes the lock and waits.
func holdLock(t *testing.T, path string, lock Step) *Proc {
	t.Helper()
	steps := []Step{{Op: "open", Path: path, Flags: unix.O_RDWR}, lock, {Op: "wait"}}
	p := startHelper(t, rootCaller, steps...)
	p.Ready(t)
	return p
}

// checkPosixLockedBy asserts that path (through the mount) is write-locked
// on 0..99 by another process, and that F_SETLKW waits for its release.
func checkPosixLockedBy(t *testing.T, path string, holder *Proc, wantPid int) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 10, Len: 10}
	must(t, "F_GETLK", unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk))
	if lk.Type != unix.F_WRLCK || lk.Start != 0 || lk.Len != 100 {
		t.Errorf("F_GETLK: type %d start %d len %d, want a write lock on 0..99", lk.Type, lk.Start, lk.Len)
	}
	if wantPid > 0 && int(lk.Pid) != wantPid {
		t.Errorf("F_GETLK: l_pid %d, want the holder %d", lk.Pid, wantPid)
	}
	lk = unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 50, Len: 1}
	wantErrno(t, "F_SETLK on a locked range", unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk), unix.EAGAIN, unix.EACCES)
	lk = unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 200, Len: 100}
	must(t, "F_SETLK on a free range", unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk))
	lk = unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: 200, Len: 100}
	must(t, "F_UNLCK", unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk))

	done := make(chan error, 1)
	go func() {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 100}
		done <- unix.FcntlFlock(uintptr(fd), unix.F_SETLKW, &lk)
	}()
	select {
	case err := <-done:
		t.Fatalf("F_SETLKW returned %v while the range was locked", errString(err))
	case <-time.After(300 * time.Millisecond):
	}
	holder.Continue()
	select {
	case err := <-done:
		must(t, "F_SETLKW after release", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("F_SETLKW still blocked 10s after the holder released the lock")
	}
	holder.Results(t)
	// Now this process holds it: a helper's F_SETLK fails.
	res := runAs(t, rootCaller,
		Step{Op: "open", Path: path, Flags: unix.O_RDWR},
		Step{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 1})
	if res[1].Err != "EAGAIN" && res[1].Err != "EACCES" {
		t.Errorf("second process F_SETLK on our lock: %q, want EAGAIN", res[1].Err)
	}
}

func posixLock(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "lock me", 0o666)
	h := holdLock(t, e.M("f"), Step{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 100})
	checkPosixLockedBy(t, e.M("f"), h, 0)
}

// posixLockPid: F_GETLK names the process holding the conflicting lock in
// l_pid (the FUSE server gets the holder's pid with SETLK and must answer
// GETLK with it).
func posixLockPid(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "lock me", 0o666)
	h := holdLock(t, e.M("f"), Step{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 100})
	defer func() { h.Continue(); h.Results(t) }()
	fd, err := unix.Open(e.M("f"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 10, Len: 10}
	must(t, "F_GETLK", unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &lk))
	if lk.Type != unix.F_WRLCK || int(lk.Pid) != h.Pid() {
		t.Errorf("F_GETLK: type %d l_pid %d, want a write lock held by pid %d", lk.Type, lk.Pid, h.Pid())
	}
}

// posixLockHost: a lock held on the host file conflicts with one taken
// through the mount — locks reach the shared file, not a per-mount table.
func posixLockHost(t *testing.T, e *Env) {
	if !e.HostVisible() {
		t.Log("host side not visible: nothing to check")
		return
	}
	writeFile(t, e.M("f"), "lock me", 0o666)
	h := holdLock(t, e.H("f"), Step{Op: "setlk", Flags: unix.F_WRLCK, Off: 0, Len: 100})
	// l_pid of a lock held outside the mount is not meaningful here.
	checkPosixLockedBy(t, e.M("f"), h, 0)
}

func checkFlocked(t *testing.T, path string, holder *Proc) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	wantErrno(t, "LOCK_EX|LOCK_NB on a locked file", unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK)
	wantErrno(t, "LOCK_SH|LOCK_NB on an exclusively locked file", unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB), unix.EWOULDBLOCK)
	done := make(chan error, 1)
	go func() { done <- unix.Flock(fd, unix.LOCK_EX) }()
	select {
	case err := <-done:
		t.Fatalf("LOCK_EX returned %v while another process held the lock", errString(err))
	case <-time.After(300 * time.Millisecond):
	}
	holder.Continue()
	select {
	case err := <-done:
		must(t, "LOCK_EX after release", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("LOCK_EX still blocked 10s after release")
	}
	holder.Results(t)
	res := runAs(t, rootCaller,
		Step{Op: "open", Path: path, Flags: unix.O_RDONLY},
		Step{Op: "flock", Flags: unix.LOCK_SH | unix.LOCK_NB})
	if res[1].Err != "EAGAIN" {
		t.Errorf("second process LOCK_SH|LOCK_NB while we hold LOCK_EX: %q, want EAGAIN", res[1].Err)
	}
	must(t, "LOCK_UN", unix.Flock(fd, unix.LOCK_UN))
	// Shared locks coexist.
	h2 := holdLock(t, path, Step{Op: "flock", Flags: unix.LOCK_SH})
	must(t, "LOCK_SH next to another LOCK_SH", unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB))
	h2.Continue()
	h2.Results(t)
}

func flockCase(t *testing.T, e *Env) {
	writeFile(t, e.M("f"), "", 0o644)
	h := holdLock(t, e.M("f"), Step{Op: "flock", Flags: unix.LOCK_EX})
	checkFlocked(t, e.M("f"), h)
}

func flockHost(t *testing.T, e *Env) {
	if !e.HostVisible() {
		t.Log("host side not visible: nothing to check")
		return
	}
	writeFile(t, e.M("f"), "", 0o644)
	h := holdLock(t, e.H("f"), Step{Op: "flock", Flags: unix.LOCK_EX})
	checkFlocked(t, e.M("f"), h)
}
