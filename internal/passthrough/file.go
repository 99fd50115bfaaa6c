package passthrough

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// file is a host file the guest opened (OPEN, CREATE, TMPFILE).
//
// Reference model: the handle table holds one reference from OPEN until
// RELEASE; each request using the handle holds one more (FS.file). The host
// fd is closed, and the node reference dropped, with the last reference, so
// a RELEASE racing a READ never closes the fd under it.
type file struct {
	fd int
	// node keeps the node's O_PATH fd cached while the file is open; nil
	// for a file CREATE made (its node is recorded without one, see
	// Create).
	node      *inode.Node
	nodeID    uint64
	typ       uint32       // S_IFMT bits
	ino       uint64       // host inode number, set for a file CREATE made
	mount     *inode.Mount // its mount
	backingID int32        // FUSE passthrough backing id, 0 if none
	appends   bool         // opened O_APPEND on the host: WRITEs are journaled
	// journal is the last append a predecessor process recorded (see
	// openfiles.Entry.JournalUnique); zero if none.
	journalUnique, journalSize uint64
	refs                       atomic.Int32
}

func (f *file) release() {
	if f.refs.Add(-1) == 0 {
		unix.Close(f.fd)
		f.node.Release() // nil-safe
	}
}

// addFile registers an open fd (opened with host flags) of node id, a file
// of type typ, and fills the reply's file handle, recorded in the open-file
// table so a successor process can reopen it, and its passthrough backing.
// It takes over fd and one reference on n (which may be nil); on error it
// releases both.
func (fs *FS) addFile(fd int, id inode.NodeID, typ uint32, n *inode.Node, flags int, out *fuse.OpenOut) error {
	var backing int32
	if typ == unix.S_IFREG {
		backing = fs.acquireBacking(uint64(id), fd)
	}
	fh, err := fs.openFiles.AddBacked(uint64(id), uint32(flags&^(unix.O_TRUNC|unix.O_CREAT|unix.O_EXCL|unix.O_TMPFILE|unix.O_NOFOLLOW)), openfiles.File, backing)
	if errors.Is(err, openfiles.ErrNotRecorded) {
		fs.warnState.log(fs.log, "state directory: an open file is not recorded; it will not survive a daemon restart", err)
		err = nil
	}
	if err != nil {
		fs.releaseBacking(uint64(id), backing)
		unix.Close(fd)
		n.Release() // nil-safe
		return err
	}
	out.Fh = fh
	fs.openOutFlags(out)
	setPassthrough(out, backing)
	f := &file{fd: fd, node: n, nodeID: uint64(id), typ: typ, backingID: backing, appends: flags&unix.O_APPEND != 0}
	f.refs.Store(1)
	fs.handlesMu.Lock()
	fs.files[fh] = f
	fs.handlesMu.Unlock()
	return nil
}

// addCreated is addFile for a file CREATE made and recorded without a node
// fd: it is also remembered by nodeid, for createdNode.
func (fs *FS) addCreated(fd int, e inode.Entry, sx *unix.Statx_t, flags int, out *fuse.OpenOut) error {
	if err := fs.addFile(fd, e.ID, uint32(sx.Mode)&unix.S_IFMT, nil, flags, out); err != nil {
		return err
	}
	fs.handlesMu.Lock()
	if f, ok := fs.files[out.Fh]; ok {
		f.ino, f.mount = sx.Ino, e.Mount
		fs.created[uint64(e.ID)] = f
	}
	fs.handlesMu.Unlock()
	return nil
}

// createdNode gives node id an O_PATH fd from an open file CREATE made, and
// returns it referenced; nil if there is no such file.
func (fs *FS) createdNode(id uint64) *inode.Node {
	fs.handlesMu.Lock()
	f, ok := fs.created[id]
	if ok {
		f.refs.Add(1)
	}
	fs.handlesMu.Unlock()
	if !ok {
		return nil
	}
	defer f.release()
	pfd, err := inode.Reopen(f.fd, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return nil
	}
	return fs.nodes.Adopt(inode.NodeID(id), f.typ, f.mount, f.ino, pfd)
}

// file returns the open file for fh (on nodeid) with a reference, or nil.
// A handle a predecessor process issued is reopened on first use.
func (fs *FS) file(nodeid, fh uint64) *file {
	fs.handlesMu.Lock()
	f, ok := fs.files[fh]
	if ok {
		f.refs.Add(1)
		fs.handlesMu.Unlock()
		return f
	}
	fs.handlesMu.Unlock()
	e, ok := fs.openFiles.Resume(fh, nodeid)
	if !ok || e.Kind != openfiles.File {
		return nil
	}
	n, st := fs.node(nodeid)
	if !st.Ok() {
		return nil
	}
	fd, st := fs.reopen(n, int(e.Flags))
	if !st.Ok() {
		fs.log.Warn("cannot reopen a file the guest had open before the restart", "nodeid", nodeid, "fh", fh, "status", st)
		n.Release()
		return nil
	}
	f = &file{fd: fd, node: n, backingID: e.BackingID, appends: e.Flags&unix.O_APPEND != 0,
		journalUnique: e.JournalUnique, journalSize: e.JournalSize}
	f.refs.Store(2) // the table's and the caller's
	fs.handlesMu.Lock()
	if old, ok := fs.files[fh]; ok {
		old.refs.Add(1)
		fs.handlesMu.Unlock()
		f.refs.Store(1)
		f.release()
		return old
	}
	fs.files[fh] = f
	fs.handlesMu.Unlock()
	return f
}

// openFlags turns the guest's open flags into the flags the host open uses.
func (fs *FS) openFlags(flags uint32) int {
	f := int(flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_TMPFILE)
	f |= unix.O_CLOEXEC
	if !fs.opts.AllowDirectIO {
		f &^= unix.O_DIRECT
	}
	if fs.opts.Writeback {
		// The kernel writes back whole pages and may need to read
		// them; it also keeps the file size itself, so O_APPEND would
		// put data at the wrong place.
		if f&unix.O_ACCMODE == unix.O_WRONLY {
			f = f&^unix.O_ACCMODE | unix.O_RDWR
		}
		f &^= unix.O_APPEND
	}
	return f
}

// openOutFlags sets the cache flags of an OPEN/CREATE reply.
func (fs *FS) openOutFlags(out *fuse.OpenOut) {
	switch fs.opts.Cache {
	case CacheNever, CacheMetadata:
		out.OpenFlags |= fuse.FOPEN_DIRECT_IO
	case CacheAlways:
		out.OpenFlags |= fuse.FOPEN_KEEP_CACHE
	}
}

// Open opens the node's host file. The node's O_PATH fd is reopened through
// /proc/self/fd, which never follows a symlink the node does not already
// name; symlinks themselves are refused.
func (fs *FS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	flags := fs.openFlags(in.Flags)
	if fs.opts.ReadOnly && (flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0) {
		n.Release()
		return fuse.EROFS
	}
	fd, st := fs.reopen(n, flags)
	if !st.Ok() {
		n.Release()
		return st
	}
	return errno(fs.addFile(fd, n.ID, n.Type, n, flags, out))
}

// reopen opens the file node n names with flags.
func (fs *FS) reopen(n *inode.Node, flags int) (int, fuse.Status) {
	switch {
	case n.IsSymlink():
		return -1, fuse.Status(unix.ELOOP)
	case n.IsDir() && flags&unix.O_ACCMODE != unix.O_RDONLY:
		return -1, fuse.Status(unix.EISDIR)
	}
	// O_NOFOLLOW has done its work in the guest's kernel, which resolved
	// the path and refuses a symlink as the last component before any
	// OPEN is sent (and symlink nodes are refused above). Passed on, it
	// would make the reopen through /proc/self/fd/N, itself a symlink,
	// fail with ELOOP: `grep -r` and fts-based tools open files with it.
	fd, err := inode.Reopen(n.FD(), flags&^unix.O_NOFOLLOW)
	if err != nil {
		return -1, errno(err)
	}
	return fd, fuse.OK
}

// Create creates and opens a regular file with the caller's credentials.
//
// The node is recorded from the created fd itself (one statx), without an
// O_PATH fd: no second open by name, which a host rename could race, and
// nothing in the fd cache for the UNLINK that often follows. A request
// that needs the node's fd gets one from this open file while the guest
// holds it (FS.node), and after RELEASE re-finds the file by name like any
// node the cache evicted.
func (fs *FS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	parent, st := fs.parentDir(&in.InHeader, name)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	flags := fs.openFlags(in.Flags) | unix.O_CREAT | unix.O_NOFOLLOW | int(in.Flags)&unix.O_EXCL
	var fd int
	err := fs.asCaller(&in.InHeader, func() (err error) {
		fd, err = inode.Openat(parent.FD(), name, flags, in.Mode)
		return err
	})
	if err != nil {
		return errno(err)
	}
	var sx unix.Statx_t
	e, err := fs.nodes.Created(parent, name, fd, &sx)
	if err != nil {
		unix.Close(fd)
		return errno(err)
	}
	fs.fillEntry(e.ID, e.Mount.Index, &sx, &out.EntryOut)
	return errno(fs.addCreated(fd, e, &sx, flags, &out.OpenOut))
}

// Tmpfile creates an unnamed file in the directory (O_TMPFILE); a later
// LINK gives it a name.
func (fs *FS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	parent, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	defer parent.Release()
	flags := fs.openFlags(in.Flags) | unix.O_TMPFILE
	if flags&unix.O_ACCMODE == unix.O_RDONLY {
		flags |= unix.O_RDWR
	}
	var fd int
	err := fs.asCaller(&in.InHeader, func() (err error) {
		fd, err = unix.Openat(parent.FD(), ".", flags, in.Mode)
		return err
	})
	if err != nil {
		return errno(err)
	}
	pfd, err := inode.Reopen(fd, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return errno(err)
	}
	var sx unix.Statx_t
	if err := inode.Statx(pfd, &sx); err != nil {
		unix.Close(pfd)
		unix.Close(fd)
		return errno(err)
	}
	n, err := fs.nodes.Register(parent, "", pfd, &sx)
	if err != nil {
		unix.Close(fd)
		return errno(err)
	}
	fs.fillEntry(n.ID, n.Mount.Index, &sx, &out.EntryOut)
	return errno(fs.addFile(fd, n.ID, n.Type, n, flags, &out.OpenOut))
}

// Read returns a result that reads straight from the host fd into the
// reply buffer (guest memory, for vhost-user).
func (fs *FS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return nil, fuse.EBADF
	}
	// The fd must outlive the read, which go-fuse performs after this
	// returns; readResult drops the reference when done.
	r := readResults.Get().(*readResult)
	r.f, r.off, r.size = f, int64(in.Offset), int(in.Size)
	return r, fuse.OK
}

// Write writes data at the offset.
func (fs *FS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return 0, fuse.EBADF
	}
	defer f.release()
	if f.appends {
		if done, st := fs.appendDone(f, in, len(data)); done || !st.Ok() {
			return uint32(len(data)), st
		}
	}
	n, err := unix.Pwrite(f.fd, data, int64(in.Offset))
	if err != nil {
		return 0, errno(err)
	}
	return uint32(n), fuse.OK
}

// fuseUniqueResend marks a request the kernel sent again after
// FUSE_NOTIFY_RESEND.
const fuseUniqueResend = 1 << 63

// appendDone handles the one WRITE that is not idempotent: an append. A
// resent append that the journal shows was applied already (the file grew
// by its length since) is answered without writing it twice; any other is
// journaled before it is written.
func (fs *FS) appendDone(f *file, in *fuse.WriteIn, size int) (bool, fuse.Status) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return false, errno(err)
	}
	unique := in.Unique &^ fuseUniqueResend
	if in.Unique&fuseUniqueResend != 0 && unique == f.journalUnique && uint64(st.Size) >= f.journalSize+uint64(size) {
		fs.log.Info("resent append was applied before the restart; not writing it again", "nodeid", in.NodeId, "fh", in.Fh)
		return true, fuse.OK
	}
	if err := fs.openFiles.Journal(in.Fh, unique, uint64(st.Size)); err != nil {
		return false, errno(err)
	}
	return false, fuse.OK
}

// Writev writes a payload that arrived in several pieces (guest memory
// regions) without copying it together first.
func (fs *FS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return 0, fuse.EBADF
	}
	defer f.release()
	if f.appends {
		total := 0
		for _, d := range data {
			total += len(d)
		}
		if done, st := fs.appendDone(f, in, total); done || !st.Ok() {
			return uint32(total), st
		}
	}
	n, err := unix.Pwritev(f.fd, data, int64(in.Offset))
	if err != nil {
		return 0, errno(err)
	}
	return uint32(n), fuse.OK
}

// Flush is close(2) in the guest: closing a duplicate of the host fd gives
// the host the same flush semantics (and drops POSIX locks held through it).
func (fs *FS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	fs.dropOwnerLocks(lockKey{in.NodeId, in.LockOwner})
	dup, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return errno(err)
	}
	return errno(unix.Close(dup))
}

// Release drops the handle; the fd closes when no request uses it.
func (fs *FS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	// Out of the map first, then out of the open-file table: the table
	// hands the fh to the next OPEN as soon as it is removed there.
	fs.handlesMu.Lock()
	f, ok := fs.files[in.Fh]
	delete(fs.files, in.Fh)
	if ok && f.mount != nil && fs.created[f.nodeID] == f {
		delete(fs.created, f.nodeID)
	}
	fs.handlesMu.Unlock()
	e, recorded := fs.openFiles.Remove(in.Fh)
	if recorded {
		fs.releaseBacking(e.NodeID, e.BackingID)
	}
	if !ok {
		return
	}
	if in.ReleaseFlags&fuse.FUSE_RELEASE_FLOCK_UNLOCK != 0 {
		_ = unix.Flock(f.fd, unix.LOCK_UN)
	}
	f.release()
}

// Fsync flushes the file to stable storage (fdatasync when asked).
func (fs *FS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	if in.FsyncFlags&1 != 0 {
		return errno(unix.Fdatasync(f.fd))
	}
	return errno(unix.Fsync(f.fd))
}

// Fallocate allocates or punches space.
func (fs *FS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if fs.opts.ReadOnly {
		return fuse.EROFS
	}
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	return errno(unix.Fallocate(f.fd, in.Mode, int64(in.Offset), int64(in.Length)))
}

// Lseek answers SEEK_DATA and SEEK_HOLE (the kernel handles the others).
func (fs *FS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	f := fs.file(in.NodeId, in.Fh)
	if f == nil {
		return fuse.EBADF
	}
	defer f.release()
	off, err := unix.Seek(f.fd, int64(in.Offset), int(in.Whence))
	if err != nil {
		return errno(err)
	}
	out.Offset = uint64(off)
	return fuse.OK
}

// CopyFileRange copies between two open files on the host.
func (fs *FS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	if fs.opts.ReadOnly {
		return 0, fuse.EROFS
	}
	src := fs.file(in.NodeId, in.FhIn)
	if src == nil {
		return 0, fuse.EBADF
	}
	defer src.release()
	dst := fs.file(in.NodeIdOut, in.FhOut)
	if dst == nil {
		return 0, fuse.EBADF
	}
	defer dst.release()
	offIn, offOut := int64(in.OffIn), int64(in.OffOut)
	length := in.Len
	if length > 1<<30 {
		length = 1 << 30 // the reply's size field is 32 bits
	}
	n, err := unix.CopyFileRange(src.fd, &offIn, dst.fd, &offOut, int(length), int(in.Flags))
	if err != nil {
		return 0, errno(err)
	}
	return uint32(n), fuse.OK
}

// readResult reads from an open file when go-fuse asks, straight into the
// reply iovec (preadv), and then drops its file reference.
type readResult struct {
	f    *file
	off  int64
	size int
}

func (r *readResult) Size() int { return r.size }

// readResults recycles readResults: go-fuse calls Done exactly once, after
// the read, and drops its reference then.
var readResults = sync.Pool{New: func() any { return new(readResult) }}

func (r *readResult) Done() {
	if r.f != nil {
		r.f.release()
		r.f = nil
		readResults.Put(r)
	}
}

// Bytes reads into buf (go-fuse's fallback path).
func (r *readResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	if len(buf) < r.size {
		buf = make([]byte, r.size)
	}
	n, err := unix.Pread(r.f.fd, buf[:r.size], r.off)
	if err != nil {
		return nil, errno(err)
	}
	return buf[:n], fuse.OK
}

// Readv reads into dst in place.
func (r *readResult) Readv(dst [][]byte) (int, fuse.Status) {
	n, err := unix.Preadv(r.f.fd, dst, r.off)
	if err != nil {
		return 0, errno(err)
	}
	return n, fuse.OK
}
