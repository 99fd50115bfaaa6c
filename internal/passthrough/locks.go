package passthrough

import (
	"sync"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// POSIX record locks from the guest belong to lock owners (processes in the
// guest), but every request reaches the host from this one daemon process,
// so plain fcntl locks would never conflict with each other. Each (nodeid,
// lock owner) therefore gets its own open file description on the host and
// its locks are taken as OFD locks (F_OFD_SETLK) on it: owners conflict as
// processes do, an owner's own locks merge and split as POSIX says, and a
// FLUSH from the owner (close(2) in the guest) drops them all, as closing
// any fd of a file drops a process's POSIX locks.
//
// flock(2) locks (FUSE_LK_FLOCK) belong to the open file and are taken with
// flock on the file handle's host fd.

type lockKey struct {
	nodeid, owner uint64
}

// ownerLock is one lock owner's open file description on a file, and the
// guest pid that last locked through it (what F_GETLK reports).
type ownerLock struct {
	fd  int
	pid uint32
}

// lockFiles maps lock owners to their host open file descriptions.
type lockFiles struct {
	mu  sync.Mutex
	fds map[lockKey]*ownerLock // +checklocks:mu
}

// ownerFD returns the host fd for key, opening it like f if needed, and
// records pid as the owner's (when not 0).
func (fs *FS) ownerFD(key lockKey, f *file, pid uint32) (int, fuse.Status) {
	fs.locks.mu.Lock()
	defer fs.locks.mu.Unlock()
	if o, ok := fs.locks.fds[key]; ok {
		if pid != 0 {
			o.pid = pid
		}
		return o.fd, fuse.OK
	}
	flags, err := unix.FcntlInt(uintptr(f.fd), unix.F_GETFL, 0)
	if err != nil {
		return -1, errno(err)
	}
	// O_NONBLOCK: opening a fifo must not wait for a peer while
	// fs.locks.mu is held. The open file is reopened through /proc (it
	// is never a symlink; a file CREATE made has no node fd).
	fd, err := inode.Reopen(f.fd, flags&unix.O_ACCMODE|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return -1, errno(err)
	}
	if fs.locks.fds == nil {
		fs.locks.fds = map[lockKey]*ownerLock{}
	}
	fs.locks.fds[key] = &ownerLock{fd: fd, pid: pid}
	return fd, fuse.OK
}

// holderPid finds which other owner of the file holds the conflicting lock
// fl (found through key's fd) and returns its guest pid, or 0 (a host
// process, or not found). An owner whose own F_OFD_GETLK sees no conflict
// on fl's range holds every lock there, so it is the holder.
func (fs *FS) holderPid(key lockKey, fl unix.Flock_t) uint32 {
	fs.locks.mu.Lock()
	defer fs.locks.mu.Unlock()
	for k, o := range fs.locks.fds {
		if k.nodeid != key.nodeid || k.owner == key.owner {
			continue
		}
		probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: fl.Start, Len: fl.Len}
		if unix.FcntlFlock(uintptr(o.fd), unix.F_OFD_GETLK, &probe) == nil && probe.Type == unix.F_UNLCK {
			return o.pid
		}
	}
	return 0
}

// dropOwnerLocks closes the owner's open file description, which releases
// every lock it holds on the file.
func (fs *FS) dropOwnerLocks(key lockKey) {
	fs.locks.mu.Lock()
	o, ok := fs.locks.fds[key]
	delete(fs.locks.fds, key)
	fs.locks.mu.Unlock()
	if ok {
		unix.Close(o.fd)
	}
}

func toFlock(lk *fuse.FileLock) unix.Flock_t {
	fl := unix.Flock_t{Type: int16(lk.Typ), Whence: 0, Start: int64(lk.Start)}
	if lk.End != 1<<63-1 && lk.End != ^uint64(0) {
		fl.Len = int64(lk.End - lk.Start + 1)
	}
	return fl
}

// GetLk reports a lock that would conflict with the one described.
func (fs *FS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	key := lockKey{in.NodeId, in.Owner}
	fd, st := fs.ownerFD(key, f, 0)
	if !st.Ok() {
		return st
	}
	fl := toFlock(&in.Lk)
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		return errno(err)
	}
	out.Lk.Typ = uint32(fl.Type)
	if fl.Type != unix.F_UNLCK {
		out.Lk.Start = uint64(fl.Start)
		if fl.Len == 0 {
			out.Lk.End = 1<<63 - 1
		} else {
			out.Lk.End = uint64(fl.Start + fl.Len - 1)
		}
		// An OFD lock has no owning process (l_pid -1): report the
		// guest pid of the owner that holds it.
		out.Lk.Pid = fs.holderPid(key, fl)
	}
	return fuse.OK
}

// SetLk takes or releases a lock without waiting.
func (fs *FS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return fs.setLk(in, false)
}

// SetLkw takes a lock, waiting for it. The wait occupies one worker.
func (fs *FS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return fs.setLk(in, true)
}

func (fs *FS) setLk(in *fuse.LkIn, wait bool) fuse.Status {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	if in.LkFlags&fuse.LK_FLOCK != 0 {
		op := unix.LOCK_UN
		switch in.Lk.Typ {
		case unix.F_RDLCK:
			op = unix.LOCK_SH
		case unix.F_WRLCK:
			op = unix.LOCK_EX
		}
		if !wait && op != unix.LOCK_UN {
			op |= unix.LOCK_NB
		}
		err := unix.Flock(f.fd, op)
		if err == unix.EWOULDBLOCK {
			return fuse.EAGAIN
		}
		return errno(err)
	}
	fd, st := fs.ownerFD(lockKey{in.NodeId, in.Owner}, f, in.Lk.Pid)
	if !st.Ok() {
		return st
	}
	fl := toFlock(&in.Lk)
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return errno(unix.FcntlFlock(uintptr(fd), cmd, &fl))
}
