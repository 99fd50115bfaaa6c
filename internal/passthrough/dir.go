package passthrough

import (
	"errors"
	"sync"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/internal/inode"
	"github.com/govirtiofsd/govirtiofsd/internal/openfiles"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// dirStream is an open directory: the host fd and the getdents64 records
// read but not yet returned to the guest.
//
// Offsets are the host's d_off cookies, so telldir/seekdir in the guest map
// to lseek on the host fd.
type dirStream struct {
	node *inode.Node

	mu  sync.Mutex
	fd  int    // +checklocks:mu
	pos uint64 // +checklocks:mu offset of the first record in buf[off:end]
	buf []byte // +checklocks:mu
	off int    // +checklocks:mu
	end int    // +checklocks:mu

	// spill is the READDIRPLUS entry looked up last that did not fit in
	// its reply: the next READDIRPLUS, which starts with it, uses it
	// instead of stating the name again.
	spill plusSpill // +checklocks:mu
}

type plusSpill struct {
	name  string
	entry inode.Entry
	sx    unix.Statx_t
}

const direntBufSize = 32 << 10

// OpenDir opens the directory for reading.
func (fs *FS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n, st := fs.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	if !n.IsDir() {
		n.Release()
		return fuse.ENOTDIR
	}
	ds, err := openDirStream(n)
	if err != nil {
		n.Release()
		return errno(err)
	}
	fh, err := fs.openFiles.Add(uint64(n.ID), dirOpenFlags, openfiles.Dir)
	if errors.Is(err, openfiles.ErrNotRecorded) {
		fs.warnState.log(fs.log, "state directory: an open directory is not recorded; it will not survive a daemon restart", err)
		err = nil
	}
	if err != nil {
		ds.close()
		return errno(err)
	}
	fs.handlesMu.Lock()
	fs.dirs[fh] = ds
	fs.handlesMu.Unlock()
	out.Fh = fh
	if fs.opts.Cache == CacheAlways {
		out.OpenFlags |= fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	}
	return fuse.OK
}

const dirOpenFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC

// openDirStream opens node n's directory for reading; it takes over the
// caller's reference on n.
func openDirStream(n *inode.Node) (*dirStream, error) {
	fd, err := inode.ReopenDir(n.FD(), dirOpenFlags)
	if err != nil {
		return nil, err
	}
	return &dirStream{node: n, fd: fd, buf: make([]byte, direntBufSize)}, nil
}

func (ds *dirStream) close() {
	ds.mu.Lock()
	unix.Close(ds.fd)
	ds.fd = -1
	ds.mu.Unlock()
	ds.node.Release()
}

// dir returns the directory stream for fh (on nodeid), reopening one a
// predecessor process issued.
func (fs *FS) dir(nodeid, fh uint64) *dirStream {
	fs.handlesMu.Lock()
	ds, ok := fs.dirs[fh]
	fs.handlesMu.Unlock()
	if ok {
		return ds
	}
	e, ok := fs.openFiles.Resume(fh, nodeid)
	if !ok || e.Kind != openfiles.Dir {
		return nil
	}
	n, st := fs.node(nodeid)
	if !st.Ok() || !n.IsDir() {
		n.Release()
		return nil
	}
	ds, err := openDirStream(n)
	if err != nil {
		n.Release()
		return nil
	}
	ds.pos = ^uint64(0) // force a seek to the offset the kernel asks for
	fs.handlesMu.Lock()
	defer fs.handlesMu.Unlock()
	if old, ok := fs.dirs[fh]; ok {
		ds.close()
		return old
	}
	fs.dirs[fh] = ds
	return ds
}

// ReleaseDir closes the directory stream.
func (fs *FS) ReleaseDir(in *fuse.ReleaseIn) {
	fs.handlesMu.Lock()
	ds, ok := fs.dirs[in.Fh]
	delete(fs.dirs, in.Fh)
	fs.handlesMu.Unlock()
	fs.openFiles.Remove(in.Fh) // after the map: see Release
	if ok {
		ds.close()
	}
}

// FsyncDir syncs the directory.
func (fs *FS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	ds := fs.dir(in.NodeId, in.Fh)
	if ds == nil {
		return fuse.EBADF
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.fd < 0 {
		return fuse.EBADF
	}
	return errno(unix.Fsync(ds.fd))
}

// ReadDir lists entries; d_ino follows the --inode-numbers policy so it
// equals the st_ino the same file gets from GETATTR.
func (fs *FS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(in, out, false)
}

// ReadDirPlus lists entries and looks each one up.
func (fs *FS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(in, out, true)
}

// linuxDirent64 is the head of a getdents64 record.
type linuxDirent64 struct {
	Ino    uint64
	Off    int64
	Reclen uint16
	Type   uint8
}

const direntNameOff = int(unsafe.Offsetof(unix.Dirent{}.Name))

func (fs *FS) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	ds := fs.dir(in.NodeId, in.Fh)
	if ds == nil {
		return fuse.EBADF
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.fd < 0 {
		return fuse.EBADF
	}
	if in.Offset != ds.pos {
		if _, err := unix.Seek(ds.fd, int64(in.Offset), 0); err != nil {
			return errno(err)
		}
		ds.pos, ds.off, ds.end = in.Offset, 0, 0
		ds.spill.name = ""
	}
	added := 0
	for {
		if ds.off >= ds.end {
			n, err := unix.Getdents(ds.fd, ds.buf)
			if err != nil {
				if added > 0 {
					return fuse.OK
				}
				return errno(err)
			}
			if n == 0 {
				return fuse.OK
			}
			ds.off, ds.end = 0, n
		}
		rec := ds.buf[ds.off:ds.end]
		if len(rec) < direntNameOff {
			return fuse.EIO
		}
		d := (*linuxDirent64)(unsafe.Pointer(&rec[0]))
		if int(d.Reclen) > len(rec) || int(d.Reclen) < direntNameOff {
			return fuse.EIO
		}
		name := cString(rec[direntNameOff:d.Reclen])
		e := fuse.DirEntry{Name: name, Off: uint64(d.Off), Mode: uint32(d.Type) << 12}
		if plus {
			if !fs.addPlusEntry(ds, e, d.Ino, out) {
				return fuse.OK
			}
		} else {
			e.Ino = fs.direntIno(ds.node, name, d.Type, d.Ino)
			if !out.AddDirEntry(e) {
				return fuse.OK
			}
		}
		added++
		ds.off += int(d.Reclen)
		ds.pos = uint64(d.Off)
	}
}

// addPlusEntry adds one READDIRPLUS entry, looking the name up. A name
// that vanished meanwhile is listed without attributes (nodeid 0), which
// the kernel accepts.
//
// +checklocks:ds.mu
func (fs *FS) addPlusEntry(ds *dirStream, e fuse.DirEntry, hostIno uint64, out *fuse.DirEntryList) bool {
	dir := ds.node
	if e.Name == "." || e.Name == ".." {
		e.Ino = fs.direntIno(dir, e.Name, unix.DT_DIR, hostIno)
		return out.AddDirLookupEntry(e) != nil
	}
	sp := &ds.spill
	if sp.name != e.Name {
		n, err := fs.nodes.LookupStat(dir, e.Name, &sp.sx)
		if err != nil {
			sp.name = ""
			e.Ino = fs.inodeNumber(dir.Mount.Index, hostIno)
			return out.AddDirLookupEntry(e) != nil
		}
		sp.name, sp.entry = e.Name, n
	}
	n := sp.entry
	e.Ino = fs.inodeNumber(n.Mount.Index, sp.sx.Ino)
	e.Mode = uint32(sp.sx.Mode)
	entry := out.AddDirLookupEntry(e)
	if entry == nil {
		return false // keep the spill for the next READDIRPLUS
	}
	sp.name = ""
	fs.fillEntry(n.ID, n.Mount.Index, &sp.sx, entry)
	return true
}

// direntIno is the d_ino for an entry of dir. Under remapping, a
// subdirectory may be the root of another host mount (getdents reports the
// covered directory's inode then), so directories are stated.
func (fs *FS) direntIno(dir *inode.Node, name string, typ uint8, hostIno uint64) uint64 {
	if !fs.remapInodes() {
		return hostIno
	}
	switch {
	case name == "..":
		return fs.inodeNumber(dir.Mount.Index, hostIno)
	case name == ".":
		var sx unix.Statx_t
		if inode.Statx(dir.FD(), &sx) == nil {
			return fs.inodeNumber(dir.Mount.Index, sx.Ino)
		}
		return fs.inodeNumber(dir.Mount.Index, hostIno)
	case typ != unix.DT_DIR && typ != unix.DT_UNKNOWN:
		return fs.inodeNumber(dir.Mount.Index, hostIno)
	}
	var sx unix.Statx_t
	if err := inode.StatxAt(dir.FD(), name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_MNT_ID_UNIQUE, &sx); err != nil {
		return fs.inodeNumber(dir.Mount.Index, hostIno)
	}
	if idx, ok := fs.nodes.MountIndex(&sx); ok {
		return fs.inodeNumber(idx, sx.Ino)
	}
	// A mount the table has not met yet: look the directory up, which
	// registers it.
	var full unix.Statx_t
	n, err := fs.nodes.Lookup(dir, name, &full)
	if err != nil {
		return fs.inodeNumber(dir.Mount.Index, hostIno)
	}
	defer n.Release()
	return fs.inodeNumber(n.Mount.Index, full.Ino)
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
